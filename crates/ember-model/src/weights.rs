//! Named tensors in the files pretrained checkpoints come in: safetensors (HuggingFace's
//! default, also sharded with `model.safetensors.index.json`) and PyTorch's `torch.save` zip
//! (`pytorch_model.bin`).
//!
//! Opening a file reads only its header, validated against the file's size, so a truncated
//! or lying file is a one-line error naming the file and tensor before any memory is
//! allocated for it. Tensor data is read one tensor at a time and converted to `f32`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// A tensor's data on the host: row-major `f32` values and the shape, outermost first.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }
}

/// A checkpoint that cannot be read; every message names the file and, where one is at
/// fault, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: tensor `{name}`: {message}")]
    Tensor {
        path: PathBuf,
        name: String,
        message: String,
    },
}

fn file_error(path: &Path, message: impl ToString) -> WeightsError {
    WeightsError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn tensor_error(path: &Path, name: &str, message: impl ToString) -> WeightsError {
    WeightsError::Tensor {
        path: path.to_path_buf(),
        name: name.to_string(),
        message: message.to_string(),
    }
}

/// Element types ember can convert to `f32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    /// Integer or boolean data (masks, position-id buffers): listed, never loaded as weights.
    Other(&'static str, usize),
}

impl DType {
    fn size(self) -> usize {
        match self {
            DType::F64 => 8,
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Other(_, size) => size,
        }
    }

    fn safetensors(name: &str) -> Option<Self> {
        Some(match name {
            "F64" => DType::F64,
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "I64" => DType::Other("I64", 8),
            "U64" => DType::Other("U64", 8),
            "I32" => DType::Other("I32", 4),
            "U32" => DType::Other("U32", 4),
            "I16" => DType::Other("I16", 2),
            "U16" => DType::Other("U16", 2),
            "I8" => DType::Other("I8", 1),
            "U8" => DType::Other("U8", 1),
            "BOOL" => DType::Other("BOOL", 1),
            "F8_E4M3" => DType::Other("F8_E4M3", 1),
            "F8_E5M2" => DType::Other("F8_E5M2", 1),
            _ => return None,
        })
    }

    fn torch(dtype: pytorch_reader::DType) -> Self {
        use pytorch_reader::DType as T;
        match dtype {
            T::F64 => DType::F64,
            T::F32 => DType::F32,
            T::F16 => DType::F16,
            T::BF16 => DType::BF16,
            T::I64 => DType::Other("int64", 8),
            T::I32 => DType::Other("int32", 4),
            T::I16 => DType::Other("int16", 2),
            T::I8 => DType::Other("int8", 1),
            T::U64 => DType::Other("uint64", 8),
            T::U32 => DType::Other("uint32", 4),
            T::U16 => DType::Other("uint16", 2),
            T::U8 => DType::Other("uint8", 1),
            T::Bool => DType::Other("bool", 1),
        }
    }
}

/// Where a tensor's bytes are.
#[derive(Clone)]
enum Location {
    /// Absolute byte range in a safetensors file (little-endian data).
    Range { file: PathBuf, start: u64, len: u64 },
    /// A tensor in a PyTorch checkpoint (native-endian data once read).
    Torch(pytorch_reader::Tensor),
}

#[derive(Clone)]
struct Entry {
    dtype: DType,
    shape: Vec<usize>,
    location: Location,
}

/// The tensors of a checkpoint, by name, with their data still on disk.
#[derive(Clone, Default)]
pub struct TensorSet {
    /// What error messages call the checkpoint (the file, or the index of a sharded one).
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
}

impl TensorSet {
    /// Opens a safetensors file, a safetensors index (`*.index.json`) or a PyTorch checkpoint
    /// (`.bin`, `.pt`, `.pth`, told apart by content, not name).
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        if path.is_dir() {
            return Err(file_error(path, "is a directory, expected a weights file"));
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".index.json") {
            return Self::open_index(path);
        }
        let mut magic = [0u8; 4];
        let mut file = File::open(path).map_err(|e| file_error(path, e))?;
        let got = file.read(&mut magic).map_err(|e| file_error(path, e))?;
        if got >= 2 && &magic[..2] == b"PK" {
            return Self::open_torch(path);
        }
        if name.ends_with(".bin") || name.ends_with(".pt") || name.ends_with(".pth") {
            // Legacy (pre-1.6) torch files are not zips; the reader handles them too.
            return Self::open_torch(path);
        }
        let mut set = Self {
            path: path.to_path_buf(),
            entries: BTreeMap::new(),
        };
        set.add_safetensors(path)?;
        Ok(set)
    }

    fn open_torch(path: &Path) -> Result<Self, WeightsError> {
        let reader = pytorch_reader::PytorchReader::new(path)
            .map_err(|e| file_error(path, format!("not a readable PyTorch checkpoint: {e}")))?;
        let entries = reader
            .into_tensors()
            .into_iter()
            .map(|(name, tensor)| {
                let entry = Entry {
                    dtype: DType::torch(tensor.dtype()),
                    shape: tensor.shape().to_vec(),
                    location: Location::Torch(tensor),
                };
                (name, entry)
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            entries,
        })
    }

    fn open_index(path: &Path) -> Result<Self, WeightsError> {
        let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
        let index: Value = serde_json::from_str(&text)
            .map_err(|e| file_error(path, format!("invalid JSON: {e}")))?;
        let Some(map) = index.get("weight_map").and_then(Value::as_object) else {
            return Err(file_error(path, "missing object field `weight_map`"));
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<&str> = Vec::new();
        for (name, shard) in map {
            let Some(shard) = shard.as_str() else {
                return Err(file_error(
                    path,
                    format!("weight_map: `{name}` is not a file name"),
                ));
            };
            if !shards.contains(&shard) {
                shards.push(shard);
            }
        }
        let mut set = Self {
            path: path.to_path_buf(),
            entries: BTreeMap::new(),
        };
        for shard in shards {
            set.add_safetensors(&dir.join(shard))?;
        }
        for name in map.keys() {
            if !set.entries.contains_key(name) {
                return Err(tensor_error(
                    path,
                    name,
                    "listed in weight_map but in no shard",
                ));
            }
        }
        Ok(set)
    }

    /// Reads and checks a safetensors header: an 8-byte little-endian length, then a JSON
    /// object `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {..}}` whose
    /// offsets are relative to the end of the header.
    fn add_safetensors(&mut self, path: &Path) -> Result<(), WeightsError> {
        /// Headers are a few hundred bytes per tensor; anything near this is not a header.
        const MAX_HEADER: u64 = 100 << 20;
        let mut file = File::open(path).map_err(|e| file_error(path, e))?;
        let file_len = file.metadata().map_err(|e| file_error(path, e))?.len();
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes).map_err(|_| {
            file_error(
                path,
                format!("{file_len} bytes is too short for a safetensors file"),
            )
        })?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER || header_len > file_len - 8 {
            return Err(file_error(
                path,
                format!(
                    "not a safetensors file, or truncated: its header claims {header_len} bytes but the file has {file_len}"
                ),
            ));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| file_error(path, e))?;
        let header: Value = serde_json::from_slice(&header)
            .map_err(|e| file_error(path, format!("safetensors header is not valid JSON: {e}")))?;
        let Value::Object(header) = header else {
            return Err(file_error(path, "safetensors header is not a JSON object"));
        };
        let data_start = 8 + header_len;
        let data_len = file_len - data_start;
        for (name, info) in header {
            if name == "__metadata__" {
                continue;
            }
            let bad = |message: String| tensor_error(path, &name, message);
            let dtype_name = info.get("dtype").and_then(Value::as_str).unwrap_or("");
            let dtype = DType::safetensors(dtype_name)
                .ok_or_else(|| bad(format!("unknown dtype `{dtype_name}`")))?;
            let shape: Vec<usize> = info
                .get("shape")
                .and_then(Value::as_array)
                .and_then(|dims| {
                    dims.iter()
                        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                        .collect()
                })
                .ok_or_else(|| bad("missing or invalid `shape`".into()))?;
            let offsets: Vec<u64> = info
                .get("data_offsets")
                .and_then(Value::as_array)
                .and_then(|o| o.iter().map(Value::as_u64).collect())
                .filter(|o: &Vec<u64>| o.len() == 2)
                .ok_or_else(|| bad("missing or invalid `data_offsets`".into()))?;
            let (begin, end) = (offsets[0], offsets[1]);
            if begin > end || end > data_len {
                return Err(bad(format!(
                    "data_offsets [{begin}, {end}] lie outside the {data_len} data bytes of the file (truncated or corrupt)"
                )));
            }
            let expected = shape
                .iter()
                .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64));
            if expected != Some(end - begin) {
                return Err(bad(format!(
                    "shape {shape:?} of {dtype_name} needs {} bytes but data_offsets give {}",
                    expected.map_or("more than 2^64".to_string(), |b| b.to_string()),
                    end - begin
                )));
            }
            let entry = Entry {
                dtype,
                shape,
                location: Location::Range {
                    file: path.to_path_buf(),
                    start: data_start + begin,
                    len: end - begin,
                },
            };
            if self.entries.insert(name.clone(), entry).is_some() {
                return Err(tensor_error(path, &name, "appears in two shards"));
            }
        }
        Ok(())
    }

    /// The file (or index) this set was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Reads tensor `name` as `f32` (f64, f16 and bf16 are converted).
    pub fn read(&self, name: &str) -> Result<HostTensor, WeightsError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| tensor_error(&self.path, name, "not in the checkpoint"))?;
        let (bytes, little_endian) = match &entry.location {
            Location::Range { file, start, len } => {
                let read = || -> std::io::Result<Vec<u8>> {
                    let mut f = File::open(file)?;
                    f.seek(SeekFrom::Start(*start))?;
                    let mut bytes = vec![0u8; *len as usize];
                    f.read_exact(&mut bytes)?;
                    Ok(bytes)
                };
                (read().map_err(|e| tensor_error(file, name, e))?, true)
            }
            Location::Torch(tensor) => (
                tensor
                    .read()
                    .map_err(|e| tensor_error(&self.path, name, e))?,
                cfg!(target_endian = "little"),
            ),
        };
        let data = decode_floats(&bytes, entry.dtype, little_endian)
            .map_err(|m| tensor_error(&self.path, name, m))?;
        Ok(HostTensor::new(entry.shape.clone(), data))
    }
}

fn decode_floats(bytes: &[u8], dtype: DType, little_endian: bool) -> Result<Vec<f32>, String> {
    fn words<const N: usize>(bytes: &[u8], le: bool) -> impl Iterator<Item = [u8; N]> + '_ {
        bytes.chunks_exact(N).map(move |c| {
            let mut w: [u8; N] = c.try_into().expect("chunk of N bytes");
            if !le {
                w.reverse();
            }
            w
        })
    }
    Ok(match dtype {
        DType::F32 => words::<4>(bytes, little_endian)
            .map(f32::from_le_bytes)
            .collect(),
        DType::F64 => words::<8>(bytes, little_endian)
            .map(|w| f64::from_le_bytes(w) as f32)
            .collect(),
        DType::BF16 => words::<2>(bytes, little_endian)
            .map(|w| f32::from_bits(u32::from(u16::from_le_bytes(w)) << 16))
            .collect(),
        DType::F16 => words::<2>(bytes, little_endian)
            .map(|w| f16_to_f32(u16::from_le_bytes(w)))
            .collect(),
        DType::Other(name, _) => {
            return Err(format!("has dtype {name}, expected floating point weights"));
        }
    })
}

/// IEEE half → single precision, exact (every f16 is representable as f32).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = mant · 2^-24.
            let value = mant as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -value } else { value };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (mant << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// Writes `tensors` as one F32 safetensors file, atomically (temporary file, fsync, rename),
/// with names in the given order's sorted form as safetensors writers do.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, HostTensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<(), WeightsError> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).expect("strings"),
        );
    }
    let mut offset = 0u64;
    for (name, tensor) in tensors {
        let len = 4 * tensor.data.len() as u64;
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": "F32",
                "shape": tensor.shape,
                "data_offsets": [offset, offset + len],
            }),
        );
        offset += len;
    }
    let mut header = serde_json::to_vec(&Value::Object(header)).expect("json");
    // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("weights"),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut out = BufWriter::new(File::create(&tmp)?);
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        for tensor in tensors.values() {
            for value in &tensor.data {
                out.write_all(&value.to_le_bytes())?;
            }
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(file_error(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_converts_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8400), -(2f32.powi(-14)));
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(
            decode_floats(&[0x80, 0x3f], DType::BF16, true).unwrap(),
            [1.0]
        );
    }
}
