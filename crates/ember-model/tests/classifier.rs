//! Classification head, trainable-weight selection and LoRA adapters.

use std::path::PathBuf;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;
use ember_model::classifier::{GptClassifier, Pooling, Trainable};
use ember_model::gpt::GptConfig;
use ember_model::lora::{LoraConfig, LoraTarget};

fn gpt2_small() -> GptConfig {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/models/gpt2-small.toml");
    GptConfig::load(&path).unwrap()
}

fn lora(rank: usize, targets: Vec<LoraTarget>) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: rank as f64,
        rslora: false,
        targets,
    }
}

fn tiny() -> GptConfig {
    GptConfig {
        vocab_size: 40,
        context_length: 12,
        emb_dim: 16,
        n_heads: 2,
        n_layers: 3,
        drop_rate: 0.0,
        qkv_bias: true,
        tie_weights: true,
        layer_norm_eps: 1e-5,
        emb_init_std: 0.02,
    }
}

#[test]
fn trainable_counts_match_the_book() {
    // Gradient settings are only observable on an autodiff device.
    let device = Device::flex().autodiff();
    let build = || GptClassifier::new(gpt2_small().init(&device), 2, Pooling::Last);
    // Last block + final LayerNorm + head (the book's choice).
    let (trainable, total) = build()
        .set_trainable(Trainable::LastBlocks(1))
        .param_counts();
    assert_eq!(trainable, 7_087_872 + 1_536 + 1_538);
    assert_eq!(total, 124_439_808 + 1_538);
    let (trainable, _) = build().set_trainable(Trainable::Head).param_counts();
    assert_eq!(trainable, 1_538);
    let (trainable, _) = build().set_trainable(Trainable::All).param_counts();
    assert_eq!(trainable, total);
    // LoRA rank 16 on every Linear layer (q, k, v separately) and on the head.
    let adapted = build()
        .add_lora(&lora(16, LoraTarget::ALL.to_vec()))
        .set_trainable(Trainable::Lora);
    let (trainable, total) = adapted.param_counts();
    assert_eq!(trainable, 2_666_528);
    assert_eq!(total, 124_439_808 + 1_538 + 2_666_528);
}

#[test]
fn merged_adapters_compute_the_same_logits() {
    let device = Device::flex();
    device.seed(4);
    let config = LoraConfig {
        rslora: true,
        ..lora(4, LoraTarget::ALL.to_vec())
    };
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(vec![1i64, 5, 9, 30, 2, 7, 7, 0], [2, 4]),
        &device,
    );
    let gpt = tiny().init(&device);
    let _ = gpt.forward(ids.clone()); // materialise the lazy weights before sharing them
    let mut model = GptClassifier::new(gpt.clone(), 3, Pooling::Last).add_lora(&config);
    let lengths = Tensor::<1, Int>::from_data(TensorData::new(vec![4i64, 4], [2]), &device);
    // B starts at zero, so the adapters add nothing yet: the base model's logits.
    let plain: Vec<f32> = model
        .forward(ids.clone(), lengths.clone())
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    // Give every adapter a random B so the update is not trivially zero.
    for block in &mut model.gpt.h {
        for adapter in [
            &mut block.attn.lora_q,
            &mut block.attn.lora_k,
            &mut block.attn.lora_v,
            &mut block.attn.lora_out,
            &mut block.mlp.lora_fc,
            &mut block.mlp.lora_proj,
        ] {
            let adapter = adapter.as_mut().unwrap();
            adapter.b = Param::from_tensor(Tensor::random(
                adapter.b.dims(),
                Distribution::Normal(0.0, 0.5),
                &device,
            ));
        }
    }
    let head = model.lora_head.as_mut().unwrap();
    head.b = Param::from_tensor(Tensor::random(
        head.b.dims(),
        Distribution::Normal(0.0, 0.5),
        &device,
    ));
    let adapted: Vec<f32> = model
        .forward(ids.clone(), lengths.clone())
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    // The adapters (with the head) saved alone and loaded onto the same base reproduce it.
    let reloaded = GptClassifier::new(gpt, 3, Pooling::Last)
        .add_lora(&config)
        .load_adapter_tensors(&model.adapter_tensors())
        .unwrap();
    let again: Vec<f32> = reloaded
        .forward(ids.clone(), lengths.clone())
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    // Equal up to summation order (the reloaded A and B are transposed views): seen up to 7.5e-8
    // relative over ten runs, while the adapters move the logits by more than 1e-2 (below).
    for (x, y) in again.iter().zip(&adapted) {
        assert!(
            (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
            "{again:?} vs {adapted:?}"
        );
    }
    let err = GptClassifier::new(tiny().init(&device), 3, Pooling::Last)
        .add_lora(&lora(8, LoraTarget::ALL.to_vec()))
        .load_adapter_tensors(&model.adapter_tensors())
        .unwrap_err();
    assert!(
        err.contains("expected shape [8, 16], found [4, 16]"),
        "{err}"
    );
    let merged_model = model.merge_lora();
    assert!(merged_model.lora_head.is_none() && merged_model.gpt.h[0].attn.lora_q.is_none());
    let merged: Vec<f32> = merged_model
        .forward(ids.clone(), lengths.clone())
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    // Within 1e-4 relative to the logit's size (at least 1): x·(W + A·B) and x·W + x·A·B
    // round differently in f32, three blocks of layer norms and softmaxes amplify that, and the
    // parallel matmul's summation order varies by run (seen: up to 1.1e-5 on CI's 2 cores,
    // 7e-6 here). A wrong merge moves the logits by the adapters' own effect: leaving one
    // adapter (k) unmerged gave 0.46 to 4.0.
    let max_diff = adapted
        .iter()
        .zip(&merged)
        .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
        .fold(0.0, f32::max);
    assert!(max_diff < 1e-4, "merged differs by {max_diff} (relative)");
    let moved = adapted
        .iter()
        .zip(&plain)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(moved > 1e-2, "the adapters changed nothing ({moved})");
}

#[test]
fn last_non_pad_pooling_ignores_the_padding() {
    let device = Device::flex();
    device.seed(8);
    let gpt = tiny().init(&device);
    let model = GptClassifier::new(gpt, 2, Pooling::LastNonPad);
    let padded = Tensor::<2, Int>::from_data(
        TensorData::new(vec![3i64, 8, 1, 39, 39, 39], [1, 6]),
        &device,
    );
    let alone = Tensor::<2, Int>::from_data(TensorData::new(vec![3i64, 8, 1], [1, 3]), &device);
    let a: Vec<f32> = model
        .forward(
            padded,
            Tensor::from_data(TensorData::new(vec![3i64], [1]), &device),
        )
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let b: Vec<f32> = model
        .forward(
            alone,
            Tensor::from_data(TensorData::new(vec![3i64], [1]), &device),
        )
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
    }
}

#[test]
fn trainable_and_lora_options_parse() {
    assert_eq!(
        Trainable::parse("last-blocks:3"),
        Ok(Trainable::LastBlocks(3))
    );
    assert!(
        Trainable::parse("last-blocks:0")
            .unwrap_err()
            .contains("last-blocks:N")
    );
    assert_eq!(
        LoraTarget::parse_list("q, v").unwrap(),
        [LoraTarget::Q, LoraTarget::V]
    );
    assert!(LoraTarget::parse_list("q,x").unwrap_err().contains("`x`"));
}

/// A model whose adapters were merged on an autodiff device (loading a LoRA run to train it
/// further: `pretrain --weights RUN`, `finetune classify --checkpoint RUN`) trains: every merged
/// weight is a parameter of its own that takes a gradient, not a sum that Burn refuses to track.
#[test]
fn merged_adapters_on_an_autodiff_device_take_gradients() {
    let device = Device::flex().autodiff();
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(vec![1i64, 5, 9, 30, 2, 7, 7, 0], [2, 4]),
        &device,
    );
    let lengths = Tensor::<1, Int>::from_data(TensorData::new(vec![4i64, 4], [2]), &device);
    let model = GptClassifier::new(tiny().init(&device), 3, Pooling::Last)
        .add_lora(&lora(2, LoraTarget::ALL.to_vec()))
        .merge_lora()
        .set_trainable(Trainable::All);
    let grads = model.forward(ids, lengths).sum().backward();
    let block = &model.gpt.h[0];
    for (name, weight) in [
        ("c_attn", &block.attn.c_attn.weight),
        ("c_proj", &block.attn.c_proj.weight),
        ("c_fc", &block.mlp.c_fc.weight),
        ("mlp.c_proj", &block.mlp.c_proj.weight),
        ("head", &model.head.weight),
    ] {
        let grad = weight
            .grad(&grads)
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm: f32 = grad.abs().sum().into_scalar();
        assert!(norm > 0.0, "{name}: zero gradient");
    }
}
