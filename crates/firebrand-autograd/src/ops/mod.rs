//! Every op of the `Tensor` API, one theme per file: its shape checks, its
//! forward call into `firebrand-ops`, and its backward rule.

mod attention;
mod binary;
mod conv;
mod einsum;
mod index;
mod inplace;
mod mask;
mod matmul;
mod norm;
mod order;
mod recurrent;
mod reduce;
mod rope;
mod shape;
mod softmax;
mod unary;
mod view;

pub use attention::AttentionOptions;
pub use binary::result_type;
pub use conv::ConvOptions;
pub use shape::{IndexExpr, PadMode, TensorIndex};

use crate::grad_mode::is_grad_enabled;
use crate::tensor::{GradFn, Tensor};
use firebrand_ops::unary::UnaryOp;
use firebrand_tensor::{Error, Result, Shape, normalize_dim};

/// True when an op on `inputs` would be recorded: recording is on and an
/// input requires grad. Fused kernels ask it to pick a form whose backward
/// rule they have.
pub(crate) fn records_graph(inputs: &[&Tensor]) -> bool {
    is_grad_enabled() && inputs.iter().any(|t| t.requires_grad())
}

/// The part of `act` a fused kernel applies: all of it when no graph is
/// recorded, else only an activation whose output gives its derivative
/// (ReLU, hardtanh); [`activate_rest`] applies what is left.
pub(crate) fn fusable_act(act: Option<UnaryOp>, records: bool) -> Option<UnaryOp> {
    act.filter(|&op| !records || firebrand_ops::elem::output_determines_grad(op))
}

/// `act` applied to `y` as its own op when the kernel did not fuse it.
pub(crate) fn activate_rest(y: Tensor, act: Option<UnaryOp>, fused: Option<UnaryOp>) -> Result<Tensor> {
    match (act, fused) {
        (Some(op), None) => y.try_unary(op),
        _ => Ok(y),
    }
}

/// Records `out` as produced by `name` from `inputs` when any input requires
/// grad and recording is on; `backward(out, grad_out)` returns one optional
/// gradient per input.
pub(crate) fn record(
    out: Tensor,
    name: &'static str,
    inputs: &[&Tensor],
    backward: impl Fn(&Tensor, &Tensor) -> Vec<Option<Tensor>> + Send + Sync + 'static,
) -> Tensor {
    if !records_graph(inputs) {
        return out;
    }
    let versions = inputs.iter().chain([&&out]).map(|t| t.version()).collect();
    let site = crate::anomaly::capture();
    if site.is_some() {
        crate::anomaly::check_forward(name, inputs, &out, &site);
    }
    let inputs = inputs.iter().map(|t| (*t).clone()).collect();
    let grad_fn = GradFn { name, inputs, backward: Box::new(backward), versions, site };
    Tensor::from_parts(out.0.storage.clone(), out.0.layout.clone(), Some(grad_fn))
}

/// An error naming `op` unless every tensor has one dtype that runs on the
/// `f32` kernels (`f32`, or `f16`/`bf16`, which widen to `f32` inside them).
pub(crate) fn check_f32(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    use firebrand_tensor::DType;
    let first = ts[0].dtype();
    match ts.iter().find(|t| !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) || t.dtype() != first) {
        Some(t) if t.dtype() != first => Err(Error::msg(
            op,
            format!("inputs of dtypes {first} and {} (convert them to one with to_dtype)", t.dtype()),
        )),
        Some(t) => Err(Error::DType { op, got: t.dtype(), expected: "f32, f16 or bf16" }),
        None => Ok(()),
    }
}

/// Normalizes a list of possibly negative dims, rejecting duplicates.
pub(crate) fn normalize_dims(op: &'static str, dims: &[isize], shape: &Shape) -> Result<Vec<usize>> {
    let mut out = Vec::with_capacity(dims.len());
    for &d in dims {
        let n = normalize_dim(d, shape.rank(), op, shape)?;
        if out.contains(&n) {
            return Err(Error::msg(op, format!("dimension {d} given twice for shape {shape:?}")));
        }
        out.push(n);
    }
    Ok(out)
}

/// Generates the panicking form of a `try_` method: same arguments, panics with
/// the error's message (which names the op and the shapes).
macro_rules! panicking {
    ($(#[$m:meta])* $name:ident => $try:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty) => {
        $(#[$m])*
        ///
        /// # Panics
        #[doc = concat!("On the errors of [`Tensor::", stringify!($try), "`].")]
        #[track_caller]
        pub fn $name(&self, $($arg: $ty),*) -> $ret {
            match self.$try($($arg),*) {
                Ok(v) => v,
                Err(e) => panic!("{e}"),
            }
        }
    };
}
pub(crate) use panicking;
