//! `Debug` and `Display` in PyTorch's style, summarizing large tensors.

use crate::tensor::Tensor;
use firebrand_tensor::DType;

const EDGE: usize = 3;
const SUMMARIZE_ABOVE: usize = 1000;

#[allow(clippy::too_many_arguments)]
fn fmt_nested(
    out: &mut String,
    vals: &[String],
    dims: &[usize],
    strides: &[usize],
    base: usize,
    depth: usize,
    summarize: bool,
    indent: usize,
) {
    if dims.is_empty() {
        out.push_str(&vals[base]);
        return;
    }
    let n = dims[0];
    out.push('[');
    let show: Vec<Option<usize>> = if summarize && n > 2 * EDGE {
        (0..EDGE).map(Some).chain(std::iter::once(None)).chain((n - EDGE..n).map(Some)).collect()
    } else {
        (0..n).map(Some).collect()
    };
    for (k, item) in show.iter().enumerate() {
        if k > 0 {
            if dims.len() > 1 {
                out.push(',');
                out.push_str(&"\n".repeat(dims.len() - 1));
                out.push_str(&" ".repeat(indent + depth + 1));
            } else {
                out.push_str(", ");
            }
        }
        match item {
            Some(i) => {
                fmt_nested(out, vals, &dims[1..], &strides[1..], base + i * strides[0], depth + 1, summarize, indent)
            }
            None => out.push_str("..."),
        }
    }
    out.push(']');
}

impl Tensor {
    fn render(&self) -> String {
        let summarize = self.elem_count() > SUMMARIZE_ABOVE;
        let vals: Vec<String> = match self.dtype() {
            DType::Bool => self.to_vec::<bool>().iter().map(|v| format!("{:>5}", v.to_string())).collect(),
            d if !d.is_float() => {
                let strs: Vec<String> = self.to_vec::<i64>().iter().map(|v| v.to_string()).collect();
                let w = strs.iter().map(|s| s.len()).max().unwrap_or(0);
                strs.into_iter().map(|s| format!("{s:>w$}")).collect()
            }
            _ => {
                let v = self.to_vec::<f64>();
                let big = v.iter().any(|x| x.abs() >= 1e5 || (x.abs() < 1e-4 && *x != 0.0));
                let strs: Vec<String> =
                    v.iter().map(|x| if big { format!("{x:.4e}") } else { format!("{x:.4}") }).collect();
                let w = strs.iter().map(|s| s.len()).max().unwrap_or(0);
                strs.into_iter().map(|s| format!("{s:>w$}")).collect()
            }
        };
        let mut out = String::from("tensor(");
        let strides = self.shape().contiguous_strides();
        fmt_nested(&mut out, &vals, self.dims(), &strides, 0, 0, summarize, 7);
        if summarize || self.elem_count() == 0 {
            out.push_str(&format!(", shape={:?}", self.dims()));
        }
        if self.dtype() != DType::F32 {
            out.push_str(&format!(", dtype={}", self.dtype()));
        }
        if let Some(name) = self.grad_fn_name() {
            out.push_str(&format!(", grad_fn={name}"));
        } else if self.requires_grad() {
            out.push_str(", requires_grad=true");
        }
        out.push(')');
        out
    }
}

/// ```
/// use firebrand_autograd::Tensor;
/// let t = Tensor::from_vec(vec![1.0f32, -2.5, 3.0, 4.0], [2, 2]);
/// assert_eq!(t.to_string(), "tensor([[ 1.0000, -2.5000],\n        [ 3.0000,  4.0000]])");
/// ```
impl std::fmt::Display for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor {{ shape: {:?}, dtype: {}, device: {}, data: {} }}",
            self.dims(),
            self.dtype(),
            self.device(),
            self.render()
        )
    }
}
