//! HuggingFace BERT import, checked against `../shared/fixtures/tiny-bert` (a random
//! `BertForMaskedLM` whose outputs transformers computed, see that folder's README).

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::prelude::*;
use ember_model::bert::{BertClassifier, BertConfig, BertHeads, PretrainingInputs};
use ember_model::bert_hf::HfBert;
use ember_model::loss::lm_loss;
use ember_model::weights::{HostTensor, TensorSet, write_safetensors};
use serde_json::Value;

mod common;
use common::*;

fn tiny_bert() -> PathBuf {
    fixtures().join("tiny-bert")
}

fn reference() -> Value {
    let text = std::fs::read_to_string(tiny_bert().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The fixture's three `[2, 10]` inputs as tensors.
fn inputs(reference: &Value, device: &Device) -> [Tensor<2, Int>; 3] {
    ["input_ids", "token_type_ids", "attention_mask"]
        .map(|key| ids_tensor(&int_rows(&reference[key]), device))
}

#[test]
fn config_json_maps_onto_the_bert_config() {
    let hf = HfBert::open(&tiny_bert()).unwrap();
    let want = BertConfig {
        vocab_size: 512,
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        max_position_embeddings: 64,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        hidden_act: "gelu".into(),
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        pad_token_id: 0,
    };
    assert_eq!(hf.config, want);
    let mlm_only = BertHeads {
        mlm: true,
        ..Default::default()
    };
    assert_eq!(hf.heads, mlm_only);
    let model = hf.load(&Device::flex()).unwrap();
    assert!(hf.unused_tensors().is_empty(), "{:?}", hf.unused_tensors());
    // 42 tensors in the file; the tied decoder adds nothing.
    let in_file: usize = TensorSet::open(&tiny_bert().join("model.safetensors"))
        .unwrap()
        .names()
        .count();
    assert_eq!(in_file, 42);
    assert_eq!(model.num_params(), want.num_params(mlm_only));
}

#[test]
fn hidden_states_mlm_logits_and_loss_match_transformers() {
    let device = Device::flex();
    let reference = reference();
    let model = HfBert::open(&tiny_bert()).unwrap().load(&device).unwrap();
    let [ids, types, mask] = inputs(&reference, &device);
    let states = model.forward_all(ids, types, mask);
    assert_eq!(states.len(), 3);
    for (i, state) in states.iter().enumerate() {
        let key = format!("hidden_states_{i}");
        let (shape, want) = ref_tensor(&reference["hidden_states"][&key]);
        assert_eq!(state.dims().to_vec(), shape, "{key}");
        assert_close(&key, &values(state.clone()), &want, 1e-4);
    }
    let hidden = states.last().unwrap().clone();
    let (_, want) = ref_tensor(&reference["last_hidden_state"]);
    assert_close("last_hidden_state", &values(hidden.clone()), &want, 1e-4);

    let logits = model.mlm_logits(hidden);
    let (shape, want) = ref_tensor(&reference["mlm_logits"]);
    assert_eq!(logits.dims().to_vec(), shape);
    assert_close("mlm_logits", &values(logits.clone()), &want, 1e-4);

    // MLM: no shift, -100 everywhere but the masked positions.
    let labels = ids_tensor(&int_rows(&reference["mlm_loss"]["labels"]), &device);
    let loss = lm_loss(logits, labels).into_scalar::<f32>();
    let want = reference["mlm_loss"]["value"].as_f64().unwrap() as f32;
    assert!((loss - want).abs() < 1e-5, "mlm loss {loss} vs {want}");
}

#[test]
fn padding_does_not_change_the_real_tokens() {
    let device = Device::flex();
    let reference = reference();
    let model = HfBert::open(&tiny_bert()).unwrap().load(&device).unwrap();
    let [ids, types, mask] = inputs(&reference, &device);
    let padded = model.forward(ids.clone(), types.clone(), mask.clone());
    let alone = model.forward(
        ids.slice(s![1..2, 0..7]),
        types.slice(s![1..2, 0..7]),
        mask.slice(s![1..2, 0..7]),
    );
    assert_close(
        "row 1 alone vs padded",
        &values(alone),
        &values(padded.slice(s![1..2, 0..7, ..])),
        1e-5,
    );
}

/// A bare `BertModel` file, as sentence-transformers saves one: no `bert.` prefix, a pooler,
/// the `position_ids` buffer, old-style `gamma`/`beta` LayerNorm names.
#[test]
fn bare_encoder_files_with_pooler_and_old_names_load() {
    let source = TensorSet::open(&tiny_bert().join("model.safetensors")).unwrap();
    let mut tensors: BTreeMap<String, HostTensor> = BTreeMap::new();
    for name in source.names() {
        let Some(bare) = name.strip_prefix("bert.") else {
            continue; // drop the MLM head
        };
        let renamed = bare
            .replace("LayerNorm.weight", "LayerNorm.gamma")
            .replace("LayerNorm.bias", "LayerNorm.beta");
        tensors.insert(renamed, source.read(name).unwrap());
    }
    let h = 32;
    let pooler_w: Vec<f32> = (0..h * h).map(|i| ((i % 7) as f32 - 3.0) * 0.05).collect();
    tensors.insert(
        "pooler.dense.weight".into(),
        HostTensor::new(vec![h, h], pooler_w.clone()),
    );
    tensors.insert(
        "pooler.dense.bias".into(),
        HostTensor::new(vec![h], vec![0.1; h]),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        tiny_bert().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    write_safetensors(
        &dir.path().join("model.safetensors"),
        &tensors,
        &BTreeMap::new(),
    )
    .unwrap();

    let device = Device::flex();
    let reference = reference();
    let hf = HfBert::open(dir.path()).unwrap();
    assert_eq!(
        hf.heads,
        BertHeads {
            pooler: true,
            ..Default::default()
        }
    );
    let model = hf.load(&device).unwrap();
    assert!(hf.unused_tensors().is_empty(), "{:?}", hf.unused_tensors());
    let [ids, types, mask] = inputs(&reference, &device);
    let hidden = model.forward(ids, types, mask);
    let (_, want) = ref_tensor(&reference["last_hidden_state"]);
    assert_close("last_hidden_state", &values(hidden.clone()), &want, 1e-4);

    // pooled = tanh(W·h[CLS] + b) with W an nn.Linear [out, in], computed here by hand.
    let pooled = values(model.pooled(hidden));
    for row in 0..2 {
        let cls = &want[row * 10 * h..row * 10 * h + h];
        for out in 0..h {
            let dot: f32 = (0..h).map(|i| pooler_w[out * h + i] * cls[i]).sum();
            let expected = (dot + 0.1).tanh();
            let got = pooled[row * h + out];
            assert!(
                (got - expected).abs() < 1e-4,
                "pooled[{row}, {out}] {got} vs {expected}"
            );
        }
    }
}

#[test]
fn broken_checkpoints_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Not a BERT: a GPT-2 config.
    std::fs::copy(
        fixtures().join("tiny-gpt2/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let err = HfBert::open(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("config.json") && err.contains("model_type"),
        "{err}"
    );

    // A tensor with the wrong shape names the tensor.
    std::fs::copy(
        tiny_bert().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let source = TensorSet::open(&tiny_bert().join("model.safetensors")).unwrap();
    let mut tensors: BTreeMap<String, HostTensor> = source
        .names()
        .map(|n| (n.to_string(), source.read(n).unwrap()))
        .collect();
    let key = "bert.encoder.layer.1.intermediate.dense.weight";
    tensors.insert(key.into(), HostTensor::new(vec![32, 64], vec![0.0; 2048]));
    write_safetensors(
        &dir.path().join("model.safetensors"),
        &tensors,
        &BTreeMap::new(),
    )
    .unwrap();
    let err = HfBert::open(dir.path())
        .unwrap()
        .load(&Device::flex())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(key) && err.contains("[64, 32]"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn presets_load_with_the_published_parameter_counts() {
    let configs = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/models");
    let base = BertConfig::load(&configs.join("bert-base.toml")).unwrap();
    // bert-base-uncased's BertModel (encoder + pooler): 109,482,240 parameters.
    let pooler = BertHeads {
        pooler: true,
        ..Default::default()
    };
    assert_eq!(base.num_params(pooler), 109_482_240);
    for name in ["bert-mini", "bert-tiny"] {
        let config = BertConfig::load(&configs.join(format!("{name}.toml"))).unwrap();
        let model = config.init(BertHeads::PRETRAINING, &Device::flex());
        assert_eq!(
            model.num_params(),
            config.num_params(BertHeads::PRETRAINING),
            "{name}"
        );
    }
    let err = BertConfig::from_toml("vocab_size = 10\nhidden_size = 30\nnum_hidden_layers = 1\nnum_attention_heads = 4\nintermediate_size = 8\nmax_position_embeddings = 8\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hidden_size 30 is not divisible by num_attention_heads 4"),
        "{err}"
    );
    let err = BertConfig::from_toml("vocab_size = 10\nhiden_size = 30\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 2") && err.contains("hiden_size"),
        "{err}"
    );
}

#[test]
fn pretraining_loss_on_the_chosen_rows_is_transformers_mlm_loss() {
    let device = Device::flex();
    let reference = reference();
    let model = HfBert::open(&tiny_bert()).unwrap().load(&device).unwrap();
    let [ids, token_types, attention_mask] = inputs(&reference, &device);
    let labels = int_rows(&reference["mlm_loss"]["labels"]);
    let seq = labels[0].len();
    let (chosen, chosen_labels): (Vec<i64>, Vec<i64>) = labels
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, l)| **l >= 0)
        .map(|(i, l)| (i as i64, *l))
        .unzip();
    assert!(chosen.len() >= 2 && chosen.iter().any(|&i| i >= seq as i64));
    let n = chosen.len();
    let loss = model
        .pretraining_loss(PretrainingInputs {
            ids,
            token_types,
            attention_mask,
            chosen: Tensor::from_data(TensorData::new(chosen, [n]), &device),
            chosen_labels: Tensor::from_data(TensorData::new(chosen_labels, [n]), &device),
            next_labels: None,
        })
        .into_scalar::<f32>();
    let want = reference["mlm_loss"]["value"].as_f64().unwrap() as f32;
    assert!((loss - want).abs() < 1e-5, "mlm loss {loss} vs {want}");
}

#[test]
fn classifier_masks_padding_by_length() {
    let device = Device::flex();
    let reference = reference();
    device.seed(3);
    let bert = HfBert::open(&tiny_bert()).unwrap().load(&device).unwrap();
    let classifier = BertClassifier::new(bert, 3, 0.0);
    assert!(classifier.bert.mlm.is_none() && classifier.bert.pooler.is_some());
    let [ids, _, mask] = inputs(&reference, &device);
    let lengths = mask.clone().sum_dim(1).reshape([2]);
    let batch = classifier.forward(ids.clone(), lengths.clone());
    assert_eq!(batch.dims(), [2, 3]);
    // Each row alone, cut to its real length, gives the same logits as in the padded batch.
    let lengths: Vec<i64> = lengths.into_data().try_into_vec_as().unwrap();
    for (row, &len) in lengths.iter().enumerate() {
        let len = len as usize;
        let alone = classifier.forward(
            ids.clone().slice(s![row..row + 1, 0..len]),
            Tensor::from_data(TensorData::new(vec![len as i64], [1]), &device),
        );
        assert_close(
            &format!("row {row}"),
            &values(alone),
            &values(batch.clone().slice(s![row..row + 1, ..])),
            1e-5,
        );
    }
}
