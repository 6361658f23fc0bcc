//! Training state on disk for custom loops: a network's `state_dict`
//! (`model.*`), its optimizer's state (`optim.*`) and the step reached
//! (`step`), in one safetensors file written atomically (temp file + rename,
//! after an fsync), so a run killed at any moment leaves the previous
//! checkpoint whole. The file carries its format version and a CRC-32 of its
//! tensors ([`firebrand_nn::serialize::save_checkpoint`]): an older or a
//! corrupted checkpoint is refused, saying which. [`Model`](crate::Model)'s
//! checkpoints use the same layout, with the history in the metadata.

use firebrand_autograd::{DType, Tensor};
use firebrand_nn::serialize::{Metadata, load_checkpoint, plan_load, save_checkpoint};
use firebrand_nn::{Module, ModuleExt, WeightsError};
use firebrand_optim::Optimizer;
use std::collections::BTreeMap;
use std::path::Path;

/// Writes `net`'s weights and buffers, `opt`'s state and `step` to `path`, atomically.
///
/// ```
/// use firebrand_train::{load_training_state, save_training_state};
/// use firebrand_nn::{Linear, ModuleExt};
/// use firebrand_optim::{Adam, Optimizer};
/// let net = Linear::new(3, 2);
/// let mut opt = Adam::new(net.named_parameters(), 1e-3);
/// let path = std::env::temp_dir().join(format!("fb_doc_ckpt_{}.safetensors", std::process::id()));
/// save_training_state(&path, &net, &opt, 7).unwrap();
/// let fresh = Linear::new(3, 2);
/// let mut fresh_opt = Adam::new(fresh.named_parameters(), 1e-3);
/// assert_eq!(load_training_state(&path, &fresh, &mut fresh_opt).unwrap(), 7);
/// assert_eq!(fresh.weight.to_vec::<f32>(), net.weight.to_vec::<f32>());
/// # std::fs::remove_file(path).unwrap();
/// ```
///
/// # Errors
/// When the file cannot be written (a full disk included); the previous
/// checkpoint at `path` is then untouched.
pub fn save_training_state(
    path: impl AsRef<Path>,
    net: &(impl Module + ?Sized),
    opt: &(impl Optimizer + ?Sized),
    step: u64,
) -> Result<(), WeightsError> {
    save_checkpoint(path, &training_tensors(net, opt, step), &[])
}

pub(crate) fn training_tensors(
    net: &(impl Module + ?Sized),
    opt: &(impl Optimizer + ?Sized),
    step: u64,
) -> Vec<(String, Tensor)> {
    let mut tensors: Vec<(String, Tensor)> =
        net.state_dict().into_iter().map(|(n, t)| (format!("model.{n}"), t)).collect();
    tensors.extend(opt.state().into_iter().map(|(n, t)| (format!("optim.{n}"), t)));
    tensors.push(("step".into(), Tensor::from_vec(vec![step as i64], [1])));
    tensors
}

/// Restores what [`save_training_state`] wrote into `net` and `opt` and
/// returns the step. Everything is checked before anything changes.
///
/// # Errors
/// When the file is missing or malformed, older than this build's format or
/// corrupted ([`WeightsError::Version`], [`WeightsError::Checksum`]), or does
/// not fit `net` and `opt` (the message names the file and the tensor).
pub fn load_training_state(
    path: impl AsRef<Path>,
    net: &(impl Module + ?Sized),
    opt: &mut (impl Optimizer + ?Sized),
) -> Result<u64, WeightsError> {
    Ok(load_state(path.as_ref(), net, opt, |_| Ok(()))?.0)
}

/// [`load_training_state`], with `check` reading the checkpoint's metadata
/// before anything changes; its error stops the load.
pub(crate) fn load_state<T>(
    path: &Path,
    net: &(impl Module + ?Sized),
    opt: &mut (impl Optimizer + ?Sized),
    check: impl FnOnce(&Metadata) -> Result<T, WeightsError>,
) -> Result<(u64, T), WeightsError> {
    let format = |msg: String| WeightsError::Format { path: path.to_path_buf(), msg };
    let (mut model, mut optim, mut step) = (BTreeMap::new(), BTreeMap::new(), None);
    let (tensors, meta) = load_checkpoint(path)?;
    for (k, v) in tensors {
        if let Some(n) = k.strip_prefix("optim.") {
            optim.insert(n.to_string(), v);
        } else if let Some(n) = k.strip_prefix("model.") {
            model.insert(n.to_string(), v);
        } else if k == "step" {
            step = Some(v);
        }
    }
    let step = match step {
        Some(s) if s.dtype() == DType::I64 && s.elem_count() == 1 => s.to_vec::<i64>()[0] as u64,
        Some(s) => return Err(format(format!("`step` must be one i64, got {} {:?}", s.dtype(), s.dims()))),
        None => return Err(format("no `step` tensor: not a training checkpoint".into())),
    };
    let plan = plan_load(&net.state_dict(), model, path, true)?;
    let checked = check(&meta)?;
    opt.load_state(&optim).map_err(|e| format(e.to_string()))?;
    plan.apply();
    Ok((step, checked))
}
