//! Saving and loading named tensors in the safetensors format, so weights move
//! to and from PyTorch (`safetensors.torch.load_file`) and Hugging Face tools.
//! Writes are atomic: a temporary file in the same folder, synced, then renamed.

use crate::{Module, ModuleExt};
use firebrand_autograd::{DType, Tensor};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why weights could not be saved or loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WeightsError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid safetensors (corrupt or truncated).
    #[error("{path}: not a valid safetensors file: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        msg: String,
    },
    /// The model has a parameter the file lacks.
    #[error("{path}: no tensor named {name:?} (the model's parameter has shape {shape:?})")]
    Missing {
        /// The file.
        path: PathBuf,
        /// Parameter name.
        name: String,
        /// The model's shape for it.
        shape: Vec<usize>,
    },
    /// A tensor's shape differs from the model's parameter.
    #[error("{path}: tensor {name:?} has shape {found:?}, the model expects {expected:?}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// Parameter name.
        name: String,
        /// Shape in the file.
        found: Vec<usize>,
        /// Shape in the model.
        expected: Vec<usize>,
    },
    /// A tensor's dtype is not one this build reads.
    #[error("{path}: tensor {name:?} has dtype {found}, expected F32, F16 or BF16 (or I64 for index tensors)")]
    DType {
        /// The file.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Dtype in the file.
        found: String,
    },
    /// A checkpoint in a format version this build does not read: an older
    /// one (written before checkpoints carried a version) or a newer one.
    #[error("{path}: {found}; this build reads checkpoint format version {supported}")]
    Version {
        /// The file.
        path: PathBuf,
        /// What the file says about its version.
        found: String,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A checkpoint whose contents do not match the checksum written with
    /// them: the file was corrupted after it was written.
    #[error("{path}: corrupted: the checksum of its tensors is {computed}, but {stored} was written with them")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The CRC-32 written in the file.
        stored: String,
        /// The CRC-32 of what the file holds now.
        computed: String,
    },
    /// The file holds tensors the model does not have (strict loading).
    #[error("{path}: tensors not in the model: {names:?}")]
    Unexpected {
        /// The file.
        path: PathBuf,
        /// Their names.
        names: Vec<String>,
    },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> WeightsError + '_ {
    move |source| WeightsError::Io { path: path.to_path_buf(), source }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it is written,
/// flushed to disk, and renamed over `path`, so a crash leaves either the old
/// file or the new one, never a torn one.
///
/// # Errors
/// [`WeightsError::Io`] naming the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WeightsError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| WeightsError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
    })?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    } else {
        remove_stale_temps(dir, &name.to_string_lossy());
    }
    result.map_err(io_err(path))
}

/// Removes `.{name}.tmp-{pid}` files left in `dir` by writers that were
/// killed mid-write (their process no longer exists; Linux: `/proc/{pid}`).
/// A live process's temp file is left alone.
fn remove_stale_temps(dir: &Path, name: &str) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(pid) = file.to_str().and_then(|f| f.strip_prefix(&prefix)).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A checkpoint's string metadata.
pub type Metadata = HashMap<String, String>;

/// The training-checkpoint format this build writes and reads
/// ([`save_checkpoint`], [`load_checkpoint`]).
pub const CHECKPOINT_VERSION: u32 = 1;

const CHECKPOINT_FORMAT: &str = "firebrand-checkpoint";

/// CRC-32 over every tensor's name, dtype, shape and bytes, in name order.
fn checksum<'a>(tensors: impl Iterator<Item = (&'a str, String, &'a [usize], &'a [u8])>) -> String {
    let mut all: Vec<_> = tensors.collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = crc32fast::Hasher::new();
    for (name, dtype, shape, bytes) in all {
        h.update(name.as_bytes());
        h.update(dtype.as_bytes());
        for d in shape {
            h.update(&(*d as u64).to_le_bytes());
        }
        h.update(bytes);
    }
    format!("{:08x}", h.finalize())
}

/// Saves a training checkpoint: named tensors plus string `metadata`, with
/// the format version ([`CHECKPOINT_VERSION`]) and a CRC-32 of the tensors,
/// atomically (a crash leaves the previous file whole).
///
/// # Errors
/// [`WeightsError::Io`] when the file cannot be written (a full disk
/// included); the previous file is then untouched.
pub fn save_checkpoint(
    path: impl AsRef<Path>,
    tensors: &[(String, Tensor)],
    metadata: &[(&str, String)],
) -> Result<(), WeightsError> {
    let data: Vec<RawTensor> = tensors.iter().map(|(name, t)| encode(name, t)).collect();
    let crc = checksum(data.iter().map(|(n, d, s, b)| (n.as_str(), format!("{d:?}"), s.as_slice(), b.as_slice())));
    let mut meta: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    meta.insert("format".into(), CHECKPOINT_FORMAT.into());
    meta.insert("version".into(), CHECKPOINT_VERSION.to_string());
    meta.insert("crc32".into(), crc);
    write_raw(path.as_ref(), &data, Some(meta))
}

/// Reads what [`save_checkpoint`] wrote: the tensors and the metadata
/// (the format's own keys `format`, `version` and `crc32` included).
///
/// # Errors
/// [`WeightsError::Version`] for a file without a version (an older
/// checkpoint, or plain weights) or with another version;
/// [`WeightsError::Checksum`] for one whose tensors changed after writing;
/// [`WeightsError::Format`] for one that is not safetensors at all.
pub fn load_checkpoint(path: impl AsRef<Path>) -> Result<(BTreeMap<String, Tensor>, Metadata), WeightsError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let format =
        |e: safetensors::SafeTensorError| WeightsError::Format { path: path.to_path_buf(), msg: e.to_string() };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(format)?;
    let meta = header.metadata().clone().unwrap_or_default();
    let version_error =
        |found: String| WeightsError::Version { path: path.to_path_buf(), found, supported: CHECKPOINT_VERSION };
    match (meta.get("format").map(String::as_str), meta.get("version")) {
        (Some(CHECKPOINT_FORMAT), Some(v)) if *v == CHECKPOINT_VERSION.to_string() => {}
        (Some(CHECKPOINT_FORMAT), Some(v)) => return Err(version_error(format!("checkpoint format version {v}"))),
        _ => {
            return Err(version_error(
                "an older checkpoint (or plain weights): it has no checkpoint format version".into(),
            ));
        }
    }
    let st = SafeTensors::deserialize(&bytes).map_err(format)?;
    let views = st.tensors();
    let computed = checksum(views.iter().map(|(n, v)| (n.as_str(), format!("{:?}", v.dtype()), v.shape(), v.data())));
    let stored = meta.get("crc32").cloned().unwrap_or_default();
    if computed != stored {
        return Err(WeightsError::Checksum { path: path.to_path_buf(), stored, computed });
    }
    Ok((decode_all(path, views)?, meta))
}

/// Saves named tensors (`f32` or `i64`) to a safetensors file, atomically.
///
/// # Errors
/// [`WeightsError::Io`] when the file cannot be written.
pub fn save_tensors(path: impl AsRef<Path>, tensors: &[(String, Tensor)]) -> Result<(), WeightsError> {
    let data: Vec<RawTensor> = tensors.iter().map(|(name, t)| encode(name, t)).collect();
    write_raw(path.as_ref(), &data, None)
}

/// A tensor as safetensors stores it: name, dtype, shape, little-endian bytes.
pub(crate) type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// An `i64` tensor as `I64`, any other as `F32`.
pub(crate) fn encode(name: &str, t: &Tensor) -> RawTensor {
    let (dtype, bytes): (Dtype, Vec<u8>) = match t.dtype() {
        DType::I64 => (Dtype::I64, t.to_vec::<i64>().iter().flat_map(|v| v.to_le_bytes()).collect()),
        _ => (Dtype::F32, t.to_vec::<f32>().iter().flat_map(|v| v.to_le_bytes()).collect()),
    };
    (name.to_string(), dtype, t.dims().to_vec(), bytes)
}

/// Writes raw tensors (and string metadata) as one safetensors file, atomically.
pub(crate) fn write_raw(
    path: &Path,
    data: &[RawTensor],
    metadata: Option<HashMap<String, String>>,
) -> Result<(), WeightsError> {
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).expect("sizes match by construction")))
        .collect();
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| WeightsError::Format { path: path.to_path_buf(), msg: e.to_string() })?;
    write_atomic(path, &bytes)
}

/// A tensor read as [`load_tensors`] reads it (`None` for another dtype).
pub(crate) fn decode(view: &TensorView<'_>) -> Option<Tensor> {
    let shape = view.shape().to_vec();
    Some(match view.dtype() {
        Dtype::F32 => Tensor::from_vec(
            view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<f32>>(),
            shape,
        ),
        // Half precision (most published checkpoints): widened to f32 on load.
        Dtype::F16 => Tensor::from_vec(
            view.data().chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect::<Vec<f32>>(),
            shape,
        ),
        Dtype::BF16 => Tensor::from_vec(
            view.data().chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect::<Vec<f32>>(),
            shape,
        ),
        Dtype::I64 => Tensor::from_vec(
            view.data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect::<Vec<i64>>(),
            shape,
        ),
        _ => return None,
    })
}

/// Loads every tensor of a safetensors file by name: `F32` and `I64` as
/// they are, `F16` and `BF16` widened to `f32` (how most published
/// checkpoints are stored).
///
/// # Errors
/// On I/O failure, a corrupt or truncated file, or another dtype.
pub fn load_tensors(path: impl AsRef<Path>) -> Result<BTreeMap<String, Tensor>, WeightsError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| WeightsError::Format { path: path.to_path_buf(), msg: e.to_string() })?;
    decode_all(path, st.tensors())
}

/// Every view as a tensor by name; a dtype this build does not read names the tensor.
fn decode_all(path: &Path, views: Vec<(String, TensorView<'_>)>) -> Result<BTreeMap<String, Tensor>, WeightsError> {
    views
        .into_iter()
        .map(|(name, view)| match decode(&view) {
            Some(t) => Ok((name, t)),
            None => Err(WeightsError::DType { path: path.to_path_buf(), name, found: format!("{:?}", view.dtype()) }),
        })
        .collect()
}

/// What a non-strict load left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Model parameters the file did not have (kept as initialized).
    pub missing: Vec<String>,
    /// File tensors the model does not have (ignored).
    pub unexpected: Vec<String>,
}

/// Saves a module's parameters and buffers (its `state_dict`, PyTorch names) atomically.
///
/// # Errors
/// [`WeightsError::Io`] when the file cannot be written.
pub fn save_weights(module: &(impl Module + ?Sized), path: impl AsRef<Path>) -> Result<(), WeightsError> {
    save_tensors(path, &module.state_dict())
}

/// Loads a module's parameters and buffers in place, checking names, shapes and dtypes.
/// With `strict`, a missing or an extra tensor is an error; otherwise they
/// are reported (for a pre-trained body under a new head).
///
/// # Errors
/// On I/O failure, a corrupt file, or a name/shape/dtype mismatch; nothing is
/// copied into the model unless every check passes.
pub fn load_weights(
    module: &(impl Module + ?Sized),
    path: impl AsRef<Path>,
    strict: bool,
) -> Result<LoadReport, WeightsError> {
    let path = path.as_ref();
    Ok(plan_load(&module.state_dict(), load_tensors(path)?, path, strict)?.apply())
}

/// Named parameters checked against named tensors, ready to be copied in.
pub struct LoadPlan {
    pairs: Vec<(Tensor, Tensor)>,
    report: LoadReport,
}

impl LoadPlan {
    /// What the plan leaves out: the model's parameters without a tensor,
    /// and the tensors without a parameter.
    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    /// Copies every matched tensor into its parameter (in place) and returns
    /// what was missing or unexpected.
    pub fn apply(self) -> LoadReport {
        for (p, t) in self.pairs {
            p.copy_(&t).expect("shape and dtype checked by plan_load");
        }
        self.report
    }
}

/// Matches `params` with `tensors` by name and checks dtypes and shapes,
/// changing nothing yet: the caller applies the plan once everything else it
/// loads has been checked too (`path` names the source in errors).
///
/// # Errors
/// On a dtype or shape mismatch, and with `strict` on a missing or extra tensor.
pub fn plan_load(
    params: &[(String, Tensor)],
    mut tensors: BTreeMap<String, Tensor>,
    path: &Path,
    strict: bool,
) -> Result<LoadPlan, WeightsError> {
    let mut report = LoadReport::default();
    let mut pairs = Vec::new();
    let names: HashMap<&str, ()> = params.iter().map(|(n, _)| (n.as_str(), ())).collect();
    for (name, p) in params {
        match tensors.remove(name) {
            Some(t) => {
                if t.dtype() != p.dtype() {
                    return Err(WeightsError::DType {
                        path: path.into(),
                        name: name.clone(),
                        found: format!("{} (the model's is {})", t.dtype(), p.dtype()),
                    });
                }
                if t.dims() != p.dims() {
                    return Err(WeightsError::Shape {
                        path: path.into(),
                        name: name.clone(),
                        found: t.dims().to_vec(),
                        expected: p.dims().to_vec(),
                    });
                }
                pairs.push((p.clone(), t));
            }
            None if strict => {
                return Err(WeightsError::Missing { path: path.into(), name: name.clone(), shape: p.dims().to_vec() });
            }
            None => report.missing.push(name.clone()),
        }
    }
    report.unexpected = tensors.into_keys().filter(|n| !names.contains_key(n.as_str())).collect();
    if strict && !report.unexpected.is_empty() {
        return Err(WeightsError::Unexpected { path: path.into(), names: report.unexpected });
    }
    Ok(LoadPlan { pairs, report })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn a_write_removes_temp_files_of_dead_writers_only() {
        let d = std::env::temp_dir().join(format!("fb_stale_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        // PIDs above Linux's maximum (2^22) never exist; PID 1 always does.
        let dead = d.join(".w.bin.tmp-999999999");
        let live = d.join(".w.bin.tmp-1");
        let other = d.join(".other.bin.tmp-999999999");
        for f in [&dead, &live, &other] {
            std::fs::write(f, b"torn").unwrap();
        }
        write_atomic(&d.join("w.bin"), b"whole").unwrap();
        assert_eq!(std::fs::read(d.join("w.bin")).unwrap(), b"whole");
        assert!(!dead.exists(), "a dead writer's temp file stays");
        assert!(live.exists() && other.exists(), "a live writer's or another file's temp was removed");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
