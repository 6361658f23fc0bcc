//! Rotary position embedding (RoPE) of adjacent pairs, as Llama-family
//! checkpoints in GGUF order use it. Recorded for autograd it is the
//! composite of views, multiplies and adds (their backward rules); without
//! a graph, on the CPU, one pass ([`firebrand_ops::attention::rope_pairs`])
//! with the same roundings replaces those eleven ops.

use super::{panicking, records_graph};
use crate::tensor::Tensor;
use firebrand_tensor::{DType, Error, Result};

impl Tensor {
    /// Pair `i` of each head of `self` `(B, T, heads, d)` turned by the
    /// angle whose `cos` and `sin` are `(1, T, 1, d/2)` (or `(T, d/2)`):
    /// `(x₀·cos − x₁·sin, x₀·sin + x₁·cos)` for the pairs `(x₀, x₁)` at
    /// `2i`, `2i + 1`. Differentiable in `self`, `cos` and `sin`.
    ///
    /// # Errors
    /// When `self` is not 4-D with an even last dim, or the tables do not
    /// hold `(T, d/2)` values.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// // One position, one head, one pair (1, 0) turned by 90°.
    /// let x = Tensor::from_vec(vec![1.0f32, 0.0], [1, 1, 1, 2]);
    /// let (c, s) = (Tensor::from_vec(vec![0.0f32], [1, 1]), Tensor::from_vec(vec![1.0f32], [1, 1]));
    /// assert_eq!(x.try_rope_pairs(&c, &s).unwrap().to_vec::<f32>(), vec![0.0, 1.0]);
    /// ```
    pub fn try_rope_pairs(&self, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let op = "rope_pairs";
        let &[b, t, h, d] = self.dims() else {
            return Err(Error::msg(op, format!("expected (B, T, heads, d), got {:?}", self.dims())));
        };
        let half = d / 2;
        if d % 2 != 0 {
            return Err(Error::msg(op, format!("the head dim of {:?} is odd", self.dims())));
        }
        for table in [cos, sin] {
            if table.elem_count() != t * half || table.dims().last() != Some(&half) {
                return Err(Error::msg(
                    op,
                    format!(
                        "tables must hold (T, d/2) = ({t}, {half}) values for {:?}, got {:?}",
                        self.dims(),
                        table.dims()
                    ),
                ));
            }
        }
        let fused = [self, cos, sin].iter().all(|x| x.device().is_cpu() && x.dtype() == DType::F32)
            && !records_graph(&[self, cos, sin]);
        if fused {
            let mut out = vec![0.0f32; self.elem_count()];
            self.with_f32_slice(|x| {
                cos.with_f32_slice(|c| {
                    sin.with_f32_slice(|s| firebrand_ops::attention::rope_pairs(x, [b, t, h, d], c, s, &mut out))
                })
            })???;
            return Tensor::try_from_vec(out, [b, t, h, d]);
        }
        let (cos, sin) = (cos.reshape([1, t, 1, half]), sin.reshape([1, t, 1, half]));
        let pairs = self.reshape([b, t, h, half, 2]);
        let (x0, x1) = (pairs.select(-1, 0), pairs.select(-1, 1)); // (B, T, heads, d/2)
        let r0 = x0.try_mul(&cos)?.try_sub(&x1.try_mul(&sin)?)?;
        let r1 = x0.try_mul(&sin)?.try_add(&x1.try_mul(&cos)?)?;
        Ok(Tensor::try_stack(&[&r0, &r1], -1)?.reshape([b, t, h, d]))
    }

    panicking!(
        /// Rotary embedding of adjacent pairs; see [`Tensor::try_rope_pairs`].
        rope_pairs => try_rope_pairs(cos: &Tensor, sin: &Tensor) -> Tensor
    );
}
