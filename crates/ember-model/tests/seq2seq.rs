//! Parity of the transformer encoder–decoder with PyTorch's `nn.Transformer`
//! (`shared/fixtures/tiny-seq2seq`, reference outputs computed by PyTorch).

mod common;

use burn::prelude::*;
use ember_model::loss::lm_loss;
use ember_model::transformer_seq2seq::{Positions, TransformerSeq2Seq, TransformerSeq2SeqConfig};
use serde_json::Value;

use common::*;

fn reference() -> Value {
    let path = fixtures().join("tiny-seq2seq/reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The fixture's architecture: d 32, 4 heads, 2 + 2 layers, ff 64, vocab 64, max_len 32.
fn tiny_config() -> TransformerSeq2SeqConfig {
    TransformerSeq2SeqConfig {
        src_vocab_size: 64,
        tgt_vocab_size: 64,
        d_model: 32,
        n_heads: 4,
        n_encoder_layers: 2,
        n_decoder_layers: 2,
        ff_dim: 64,
        max_len: 32,
        positions: Positions::Sinusoidal,
        shared_embeddings: false,
        dropout: 0.0,
        layer_norm_eps: 1e-5,
        pad_id: 0,
    }
}

fn load(device: &Device) -> TransformerSeq2Seq {
    let path = fixtures().join("tiny-seq2seq/transformer.safetensors");
    TransformerSeq2Seq::load_torch(&tiny_config(), &path, device).unwrap()
}

#[test]
fn memory_logits_and_loss_match_pytorch() {
    let device = Device::flex();
    let reference = &reference()["transformer"];
    let model = load(&device);
    let src = ids_tensor(&int_rows(&reference["src"]), &device);
    let tgt_in = ids_tensor(&int_rows(&reference["tgt_in"]), &device);
    let memory = model.encode(src.clone());
    let (shape, want) = ref_tensor(&reference["memory"]);
    assert_eq!(memory.dims().to_vec(), shape);
    // Padded source positions included: PyTorch computed them too.
    assert_close("memory", &values(memory.clone()), &want, 1e-4);
    let logits = model.decode(tgt_in, memory, src);
    let (shape, want) = ref_tensor(&reference["logits"]);
    assert_eq!(logits.dims().to_vec(), shape);
    assert_close("logits", &values(logits.clone()), &want, 1e-4);
    // PyTorch ignores PAD (0) targets; ember's loss ignores negative ones.
    let targets: Vec<Vec<i64>> = int_rows(&reference["tgt_out"])
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|t| if t == 0 { -100 } else { t })
                .collect()
        })
        .collect();
    let loss: f32 = lm_loss(logits, ids_tensor(&targets, &device)).into_scalar();
    let want = reference["loss"]["value"].as_f64().unwrap() as f32;
    assert!((loss - want).abs() < 1e-5, "loss {loss} vs {want}");
}

#[test]
fn cached_greedy_decoding_matches_pytorch_and_the_full_pass() {
    let device = Device::flex();
    let reference = &reference()["transformer"]["greedy"];
    let model = load(&device);
    let src = ids_tensor(&int_rows(&reference["src"]), &device);
    let want: Vec<i64> = int_rows(&reference["output_ids"])[0].clone();
    let memory = model.encode(src.clone());
    let mut cache = model.start_decoding(memory.clone(), src.clone());
    let mut ids = vec![1i64];
    let mut step_logits = Vec::new();
    while ids.len() < want.len() {
        let token =
            Tensor::<1, Int>::from_data(TensorData::new(vec![*ids.last().unwrap()], [1]), &device);
        let logits = model.decode_step(token, &mut cache); // [1, vocab]
        let row = values(logits);
        let next = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        step_logits.extend(row);
        ids.push(next as i64);
    }
    assert_eq!(ids, want);
    // The cached steps give the logits of one teacher-forced pass over the same prefix.
    let prefix = ids_tensor(&[ids[..ids.len() - 1].to_vec()], &device);
    let full = values(model.decode(prefix, memory, src));
    assert_close("cached vs full", &step_logits, &full, 1e-5);
}
