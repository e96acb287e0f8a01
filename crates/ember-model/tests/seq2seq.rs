//! Parity of the transformer encoder–decoder with PyTorch's `nn.Transformer`
//! (`shared/fixtures/tiny-seq2seq`, reference outputs computed by PyTorch).

mod common;

use burn::prelude::*;
use ember_model::loss::lm_loss;
use ember_model::lstm_seq2seq::{LstmSeq2Seq, LstmSeq2SeqConfig};
use ember_model::seq2seq::{DecodeOptions, beam_search, greedy};
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

/// Past the key/value buffers' first capacity (32) and two doublings: 100 cached steps of a
/// random model with learned positions give, step by step, the logits of one teacher-forced pass
/// over the same 100 tokens, for two source rows of different lengths decoded together.
#[test]
fn cached_decoding_matches_the_full_pass_across_buffer_growth() {
    let device = Device::flex();
    device.seed(5);
    let mut config = tiny_config();
    config.max_len = 128;
    config.positions = Positions::Learned;
    let model = config.init(&device);
    let src = ids_tensor(&[vec![1, 9, 33, 41, 7, 2], vec![1, 5, 2, 0, 0, 0]], &device);
    let memory = model.encode(src.clone());
    let mut cache = model.start_decoding(memory.clone(), src.clone());
    let steps = 100;
    // Fixed inputs (not the model's picks), so both rows run every step.
    let inputs: Vec<Vec<i64>> = (0..2)
        .map(|row| {
            (0..steps)
                .map(|t| 1 + ((7 * t + 13 * row) % 60) as i64)
                .collect()
        })
        .collect();
    let mut cached: [Vec<f32>; 2] = [Vec::new(), Vec::new()];
    for (&first, &second) in inputs[0].iter().zip(&inputs[1]) {
        let tokens =
            Tensor::<1, Int>::from_data(TensorData::new(vec![first, second], [2]), &device);
        let logits = values(model.decode_step(tokens, &mut cache)); // [2, vocab]
        let vocab = logits.len() / 2;
        for (row, out) in cached.iter_mut().enumerate() {
            out.extend_from_slice(&logits[row * vocab..(row + 1) * vocab]);
        }
    }
    let full = values(model.decode(ids_tensor(&inputs, &device), memory, src)); // [2, 100, vocab]
    let cached: Vec<f32> = cached.concat();
    assert_eq!(cached.len(), full.len());
    assert_close("cached vs full over 100 steps", &cached, &full, 1e-4);
}

fn lstm_config(attention: bool) -> LstmSeq2SeqConfig {
    LstmSeq2SeqConfig {
        src_vocab_size: 64,
        tgt_vocab_size: 64,
        emb_dim: 16,
        hidden: 32,
        n_layers: 2,
        bidirectional: false,
        attention,
        dropout: 0.0,
        pad_id: 0,
    }
}

#[test]
fn lstm_states_logits_and_loss_match_pytorch() {
    let device = Device::flex();
    let reference = &reference()["lstm"];
    let path = fixtures().join("tiny-seq2seq/lstm.safetensors");
    let model = LstmSeq2Seq::load_torch(&lstm_config(false), &path, &device).unwrap();
    let src = ids_tensor(&int_rows(&reference["src"]), &device);
    let tgt_in = ids_tensor(&int_rows(&reference["tgt_in"]), &device);
    let (outputs, finals) = model.encode(src.clone());
    let (_, want) = ref_tensor(&reference["encoder_outputs"]);
    assert_close("encoder outputs", &values(outputs), &want, 1e-4);
    // PyTorch's h/c are [layers, batch, hidden].
    let stack = |states: &[(Tensor<2>, Tensor<2>)],
                 pick: fn(&(Tensor<2>, Tensor<2>)) -> Tensor<2>| {
        values(Tensor::stack::<3>(states.iter().map(pick).collect(), 0))
    };
    let (_, want_h) = ref_tensor(&reference["encoder_final_h"]);
    let (_, want_c) = ref_tensor(&reference["encoder_final_c"]);
    assert_close("encoder h", &stack(&finals, |s| s.0.clone()), &want_h, 1e-4);
    assert_close("encoder c", &stack(&finals, |s| s.1.clone()), &want_c, 1e-4);

    let logits = model.forward(src.clone(), tgt_in.clone());
    let (shape, want) = ref_tensor(&reference["logits"]);
    assert_eq!(logits.dims().to_vec(), shape);
    assert_close("logits", &values(logits.clone()), &want, 1e-4);
    let mut state = model.start(src);
    for t in 0..5 {
        let tokens = tgt_in.clone().narrow(1, t, 1).reshape([2]);
        model.decode_step(tokens, &mut state);
    }
    let (_, want_h) = ref_tensor(&reference["decoder_final_h"]);
    let (_, want_c) = ref_tensor(&reference["decoder_final_c"]);
    assert_close(
        "decoder h",
        &stack(&state.layers, |s| s.0.clone()),
        &want_h,
        1e-4,
    );
    assert_close(
        "decoder c",
        &stack(&state.layers, |s| s.1.clone()),
        &want_c,
        1e-4,
    );
    let targets = ids_tensor(&int_rows(&reference["tgt_out"]), &device);
    let loss: f32 = lm_loss(logits, targets).into_scalar();
    let want = reference["loss"]["value"].as_f64().unwrap() as f32;
    assert!((loss - want).abs() < 1e-5, "loss {loss} vs {want}");
}

#[test]
fn lstm_padding_and_attention_ignore_padded_source_positions() {
    let device = Device::flex();
    device.seed(4);
    let mut config = lstm_config(true);
    config.bidirectional = true;
    let model = config.init(&device);
    let src = ids_tensor(&[vec![1, 10, 11, 12, 2, 0, 0]], &device);
    let alone = ids_tensor(&[vec![1, 10, 11, 12, 2]], &device);
    let tgt = ids_tensor(&[vec![1, 20, 21]], &device);
    assert_close(
        "padded vs alone",
        &values(model.forward(src.clone(), tgt.clone())),
        &values(model.forward(alone, tgt)),
        1e-5,
    );
    let mut state = model.start(src);
    model.decode_step(
        Tensor::from_data(TensorData::new(vec![1i64], [1]), &device),
        &mut state,
    );
    let weights = values(state.last_attention.unwrap());
    assert!((weights.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    assert!(weights[5] == 0.0 && weights[6] == 0.0, "{weights:?}");
}

#[test]
fn beam_of_one_is_greedy_and_wider_beams_score_at_least_as_well() {
    let device = Device::flex();
    let reference = &reference()["transformer"]["greedy"];
    let transformer = load(&device);
    let src = ids_tensor(&int_rows(&reference["src"]), &device);
    let mut options = DecodeOptions {
        bos_id: 1,
        eos_id: 2,
        max_len: 10,
        beam: 1,
        length_penalty: 0.0,
    };
    let greedy_out = greedy(&transformer, src.clone(), &options);
    let want: Vec<u32> = int_rows(&reference["output_ids"])[0][1..]
        .iter()
        .map(|&t| t as u32)
        .collect();
    assert_eq!(greedy_out[0].tokens, want, "PyTorch's greedy tokens");
    assert_eq!(greedy_out[0].attention.len(), 10);
    let row = &greedy_out[0].attention[0];
    assert_eq!(row.len(), 7);
    assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    assert_eq!(
        beam_search(&transformer, src.clone(), &options),
        greedy_out[0]
    );
    options.beam = 4;
    let wide = beam_search(&transformer, src.clone(), &options);
    assert!(
        wide.log_prob >= greedy_out[0].log_prob - 1e-9,
        "{} < {}",
        wide.log_prob,
        greedy_out[0].log_prob
    );

    // The same for the LSTM with attention, over a padded batch row by row.
    device.seed(9);
    let mut config = lstm_config(true);
    config.bidirectional = true;
    let lstm = config.init(&device);
    let batch = ids_tensor(&[vec![1, 10, 11, 12, 2], vec![1, 40, 2, 0, 0]], &device);
    options.beam = 1;
    let rows = greedy(&lstm, batch.clone(), &options);
    for (r, decoded) in rows.iter().enumerate() {
        let len = if r == 0 { 5 } else { 3 };
        let alone = batch.clone().slice(s![r..r + 1, 0..len]);
        let beam1 = beam_search(&lstm, alone, &options);
        assert_eq!(beam1.tokens, decoded.tokens, "row {r}");
        assert!((beam1.log_prob - decoded.log_prob).abs() < 1e-4, "row {r}");
    }
}
