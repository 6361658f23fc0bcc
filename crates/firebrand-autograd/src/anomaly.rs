//! Anomaly detection (PyTorch's `torch.autograd.detect_anomaly`): with it on,
//! every recorded op keeps the call site of its forward pass, an op whose
//! output holds a NaN (or an infinity) that its inputs did not is named with
//! that call site as it runs, and `backward` stops at the first op whose
//! gradient rule turns finite gradients into NaN or inf, naming the op and
//! where its forward pass was called. Off by default; when off, the cost is
//! one thread-local read per recorded op.

use crate::Tensor;
use crate::grad_mode::FlagGuard;
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::sync::Arc;

thread_local! {
    static ANOMALY: Cell<bool> = const { Cell::new(false) };
}

/// True when anomaly detection is on for this thread.
pub fn is_anomaly_enabled() -> bool {
    ANOMALY.with(|a| a.get())
}

/// Turns anomaly detection on for this thread until the guard drops (PyTorch's
/// `with torch.autograd.detect_anomaly():`). Guards nest. It is slow: every
/// op's call site is captured and its values scanned, so use it to find a
/// NaN, not to train.
///
/// ```
/// use firebrand_autograd::{Tensor, detect_anomaly};
/// let x = Tensor::from_vec(vec![0.0f32, 1.0], [2]).requires_grad_(true);
/// let _anomaly = detect_anomaly();
/// // sqrt is finite at 0, but its gradient 1/(2·sqrt(x)) is not.
/// let err = x.sqrt().sum_all().try_backward().unwrap_err().to_string();
/// assert!(err.contains("the gradient of `sqrt` is inf"), "{err}");
/// assert!(err.contains("forward call site"), "{err}");
/// ```
#[must_use = "anomaly detection is on only while the guard lives"]
pub fn detect_anomaly() -> AnomalyGuard {
    AnomalyGuard(FlagGuard::set(&ANOMALY, true))
}

/// Restores the previous anomaly mode when dropped. See [`detect_anomaly`].
pub struct AnomalyGuard(#[allow(dead_code)] FlagGuard);

/// The forward pass's stack, captured when an op is recorded in anomaly mode.
pub(crate) type CallSite = Option<Arc<Backtrace>>;

pub(crate) fn capture() -> CallSite {
    is_anomaly_enabled().then(|| Arc::new(Backtrace::force_capture()))
}

/// The first frames of `bt` outside the autograd engine and the standard
/// library: where the op was called from (the layer, then the user's code).
pub(crate) fn describe_site(site: &CallSite) -> String {
    let Some(bt) = site else { return "(unknown: the op was recorded with anomaly detection off)".into() };
    let text = bt.to_string();
    let mut frames: Vec<String> = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((_, symbol)) = line.trim_start().split_once(": ") else { continue };
        let at = match lines.peek() {
            Some(next) if next.trim_start().starts_with("at ") => lines.next().map(|l| l.trim().to_string()),
            _ => None,
        };
        // Frames in this crate, the standard library or dependencies are the
        // engine's; the first others are the layer and the user's code.
        let internal = match &at {
            Some(at) => ["firebrand-autograd/src", "/rustc/", "/.cargo/registry/", "/library/std/", "/library/core/"]
                .iter()
                .any(|p| at.contains(p)),
            None => true,
        };
        if !internal {
            frames.push(format!("    {symbol}\n      {}", at.unwrap_or_default()));
        }
        if frames.len() == 4 {
            break;
        }
    }
    if frames.is_empty() { "(no frames outside the engine)".into() } else { frames.join("\n") }
}

/// `(nan, inf)` counts of a floating tensor's elements; `(0, 0)` for integers.
pub(crate) fn non_finite(t: &Tensor) -> (usize, usize) {
    if !t.dtype().is_float() {
        return (0, 0);
    }
    t.to_dtype(crate::DType::F32)
        .to_vec::<f32>()
        .iter()
        .fold((0, 0), |(n, i), v| (n + v.is_nan() as usize, i + v.is_infinite() as usize))
}

/// What is wrong with `produced` given that `from` was clean: `None` when
/// nothing new appeared.
pub(crate) fn new_non_finite(produced: (usize, usize), from: &[(usize, usize)]) -> Option<&'static str> {
    let (nan_in, inf_in) = from.iter().fold((0, 0), |(a, b), (n, i)| (a + n, b + i));
    if produced.0 > 0 && nan_in == 0 {
        Some("NaN")
    } else if produced.1 > 0 && nan_in == 0 && inf_in == 0 {
        Some("inf")
    } else {
        None
    }
}

/// In anomaly mode, panics when `out` of `op` holds a NaN or inf its inputs did not.
pub(crate) fn check_forward(op: &'static str, inputs: &[&Tensor], out: &Tensor, site: &CallSite) {
    let from: Vec<_> = inputs.iter().map(|t| non_finite(t)).collect();
    if let Some(what) = new_non_finite(non_finite(out), &from) {
        panic!(
            "detect_anomaly: `{op}` produced {what} in its output of shape {:?} from inputs without it; forward call site:\n{}",
            out.dims(),
            describe_site(site)
        );
    }
}
