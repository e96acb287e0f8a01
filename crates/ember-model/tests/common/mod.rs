//! Reading `../shared/fixtures` reference files in the parity tests, and the tiny GPT the
//! model tests build.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::prelude::*;
use ember_model::gpt::GptConfig;
use serde_json::Value;

/// A 2-layer, 32-wide GPT with 4 heads: milliseconds to build and run.
pub fn tiny(vocab_size: usize, context_length: usize) -> GptConfig {
    GptConfig {
        vocab_size,
        context_length,
        emb_dim: 32,
        n_heads: 4,
        n_layers: 2,
        drop_rate: 0.0,
        qkv_bias: true,
        tie_weights: false,
        layer_norm_eps: 1e-5,
        emb_init_std: 1.0,
    }
}

/// `$EMBER_FIXTURES`, else `../shared/fixtures` beside the checkout.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("EMBER_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
        });
    assert!(
        dir.join("tiny-gpt2").is_dir() && dir.join("tiny-bert").is_dir(),
        "parity fixtures not found at {} (set EMBER_FIXTURES)",
        dir.display()
    );
    dir
}

/// A `{"shape", "data"}` tensor of reference.json as f32 (the values are exact f32s).
pub fn ref_tensor(value: &Value) -> (Vec<usize>, Vec<f32>) {
    let shape = value["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data = value["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    (shape, data)
}

pub fn int_rows(value: &Value) -> Vec<Vec<i64>> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        })
        .collect()
}

pub fn ids_tensor(rows: &[Vec<i64>], device: &Device) -> Tensor<2, Int> {
    let flat: Vec<i64> = rows.concat();
    Tensor::from_data(TensorData::new(flat, [rows.len(), rows[0].len()]), device)
}

pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

/// Largest |a - b| - rtol·|b|, which must stay ≤ atol.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f32, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - tol * w.abs();
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    assert!(
        worst.0 <= tol,
        "{what}: element {} is {} but the reference gives {}",
        worst.1,
        got[worst.1],
        want[worst.1]
    );
}
