//! What every HuggingFace checkpoint importer shares: finding the model directory (plain or
//! HF-cache layout) and its weights file, shape-checked tensor reads with one-line errors, and
//! host ↔ device tensor conversion.

use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{LayerNorm, Linear};
use burn::prelude::*;

use crate::weights::{HostTensor, TensorSet, WeightsError};

/// Why a HuggingFace checkpoint cannot be imported or exported; one line, naming the
/// file, field or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("{0}")]
    Weights(#[from] WeightsError),
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: missing tensor `{name}` (expected shape {expected:?})")]
    Missing {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
    },
    #[error("{0}")]
    Other(String),
}

/// Finds the model directory in `path`: a directory with `config.json`, or a HuggingFace cache
/// folder `models--NAME` (its `refs/main` snapshot, or its only snapshot).
pub fn resolve_model_dir(path: &Path) -> Result<PathBuf, HfError> {
    if !path.exists() {
        return Err(HfError::Other(format!(
            "{}: no such directory",
            path.display()
        )));
    }
    if !path.is_dir() {
        return Err(HfError::Other(format!(
            "{}: is a file; give the model directory (with config.json)",
            path.display()
        )));
    }
    if path.join("config.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let snapshots = path.join("snapshots");
    if snapshots.is_dir() {
        if let Ok(rev) = std::fs::read_to_string(path.join("refs").join("main")) {
            let dir = snapshots.join(rev.trim());
            if dir.join("config.json").is_file() {
                return Ok(dir);
            }
        }
        let found: Vec<PathBuf> = std::fs::read_dir(&snapshots)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.join("config.json").is_file())
                    .collect()
            })
            .unwrap_or_default();
        if let [only] = found.as_slice() {
            return Ok(only.clone());
        }
        return Err(HfError::Other(format!(
            "{}: HuggingFace cache folder with {} snapshots holding a config.json and no usable refs/main; give the snapshot directory",
            path.display(),
            found.len()
        )));
    }
    Err(HfError::Other(format!(
        "{}: no config.json (expected a HuggingFace model directory with config.json and model.safetensors or pytorch_model.bin)",
        path.display()
    )))
}

/// The weights file of a model directory: `model.safetensors` (or its shard index) or
/// `pytorch_model.bin`.
pub fn find_weights_file(dir: &Path) -> Result<PathBuf, HfError> {
    let candidates = [
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    ];
    let Some(file) = candidates.iter().map(|f| dir.join(f)).find(|p| p.is_file()) else {
        return Err(HfError::Other(format!(
            "{}: no weights (expected model.safetensors or pytorch_model.bin)",
            dir.display()
        )));
    };
    if file
        .to_string_lossy()
        .ends_with("pytorch_model.bin.index.json")
    {
        return Err(HfError::Other(format!(
            "{}: sharded PyTorch checkpoints are not supported; use the safetensors files",
            file.display()
        )));
    }
    Ok(file)
}

/// `value` (a parsed config.json) as `T`; an error names the field at fault (serde_json's own
/// says `invalid type: string "abc", expected usize` without the field).
pub fn config_from_json<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        match field.as_str() {
            "." => e.inner().to_string(),
            _ => format!("`{field}`: {}", e.inner()),
        }
    })
}

/// Reads tensor `name` of `weights`, checking that it exists with shape `expected`.
pub fn read_checked(
    weights: &TensorSet,
    name: &str,
    expected: &[usize],
) -> Result<HostTensor, HfError> {
    let Some(found) = weights.shape(name) else {
        return Err(HfError::Missing {
            path: weights.path().to_path_buf(),
            name: name.to_string(),
            expected: expected.to_vec(),
        });
    };
    if found != expected {
        return Err(HfError::Shape {
            path: weights.path().to_path_buf(),
            name: name.to_string(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        });
    }
    let tensor = weights.read(name)?;
    // A NaN in the weights makes every output NaN (`generate` printed `!!!!`, `score` a NaN
    // loss): refused here, naming the tensor.
    let non_finite = tensor.data.iter().filter(|x| !x.is_finite()).count();
    if non_finite > 0 {
        return Err(HfError::Other(format!(
            "{}: tensor {name} holds {non_finite} NaN or infinite value(s)",
            weights.path().display()
        )));
    }
    Ok(tensor)
}

/// A device parameter holding `host`.
pub fn param<const D: usize>(host: HostTensor, device: &Device) -> Param<Tensor<D>> {
    let data = TensorData::new(host.data, host.shape);
    Param::from_tensor(Tensor::from_data(data, device))
}

/// `[rows, cols]` → `[cols, rows]` (PyTorch `nn.Linear` `[out, in]` ↔ Burn `Linear` `[in, out]`).
pub fn transpose(t: &HostTensor) -> HostTensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let mut data = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            data[c * rows + r] = t.data[r * cols + c];
        }
    }
    HostTensor::new(vec![cols, rows], data)
}

pub fn host<const D: usize>(tensor: Tensor<D>) -> HostTensor {
    let shape = tensor.dims().to_vec();
    let data = tensor
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("converted to f32");
    HostTensor::new(shape, data)
}

/// Puts `weight` (`[in, out]`, Burn's layout) and `bias` into `linear`.
pub fn set_linear(linear: &mut Linear, weight: HostTensor, bias: HostTensor, device: &Device) {
    linear.weight = param(weight, device);
    linear.bias = Some(param(bias, device));
}

/// Puts `gamma` and `beta` into `norm`.
pub fn set_layer_norm(norm: &mut LayerNorm, gamma: HostTensor, beta: HostTensor, device: &Device) {
    norm.gamma = param(gamma, device);
    norm.beta = Some(param(beta, device));
}
