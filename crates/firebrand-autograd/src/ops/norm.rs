//! Layer normalization over the last dim as one op over the backend's fused
//! kernel (`Backend::layer_norm`): one pass per row each way instead of the
//! composite's eight ops (mean, subtract, variance, add, rsqrt, multiply,
//! scale, shift) and their backward rules. The composite form is the
//! reference in the tests.

use super::{check_f32, panicking, record};
use crate::tensor::{Tensor, same_backend};
use firebrand_tensor::{DType, Error, Result};

impl Tensor {
    /// Layer norm over the last dim from primitive ops (mean, population
    /// variance, rsqrt, scale, shift): the `f64` path.
    fn layer_norm_composite(&self, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        let c = self.try_sub(&self.mean(&[-1], true))?;
        let var = c.square().mean(&[-1], true);
        let y = c.try_mul(&var.affine(1.0, eps).rsqrt())?;
        let y = match weight {
            Some(w) => y.try_mul(w)?,
            None => y,
        };
        match bias {
            Some(b) => y.try_add(b),
            None => Ok(y),
        }
    }

    /// `(x − mean) / √(var + eps) · weight + bias` over the last dim
    /// (PyTorch's `F.layer_norm(x, (C,), weight, bias, eps)`, biased
    /// variance); `weight` and `bias` are `(C,)` and optional.
    /// Differentiable in all three.
    ///
    /// # Errors
    /// When `weight` or `bias` is not `(C,)`, a tensor is not `f32`, the
    /// input has no dims, or the devices differ.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![1.0f32, 3.0, 0.0, 4.0], [2, 2]);
    /// let y = x.try_layer_norm(None, None, 0.0).unwrap();
    /// assert_eq!(y.to_vec::<f32>(), vec![-1.0, 1.0, -1.0, 1.0]);
    /// ```
    pub fn try_layer_norm(&self, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        let op = "layer_norm";
        let cols = *self.dims().last().ok_or_else(|| Error::msg(op, "expected (…, C), got a scalar".to_string()))?;
        let affine: Vec<&Tensor> = weight.into_iter().chain(bias).collect();
        let mut inputs = vec![self];
        inputs.extend(&affine);
        if self.dtype() == DType::F64 && affine.iter().all(|t| t.dtype() == DType::F64) {
            return self.layer_norm_composite(weight, bias, eps);
        }
        check_f32(op, &inputs)?;
        if let Some(t) = affine.iter().find(|t| t.dims() != [cols]) {
            return Err(Error::msg(
                op,
                format!("weight and bias must be ({cols},) for input {:?}, got {:?}", self.dims(), t.dims()),
            ));
        }
        let backend = same_backend(op, &inputs)?;
        let rows = self.elem_count() / cols.max(1);
        let x = self.dense(op)?;
        let (w, b) = (weight.map(|w| w.dense(op)).transpose()?, bias.map(|b| b.dense(op)).transpose()?);
        let (y, stats) = {
            let (ws, bs) = (w.as_ref().map(|w| w.storage()), b.as_ref().map(|b| b.storage()));
            backend.layer_norm(
                &**x.storage(),
                ws.as_ref().map(|s| &***s),
                bs.as_ref().map(|s| &***s),
                rows,
                cols,
                eps,
            )?
        };
        let y = Tensor::from_backend(y, self.shape().clone());
        let stats = Tensor::from_backend(stats, [2, rows]);
        let (has_w, has_b, shape) = (weight.is_some(), bias.is_some(), self.shape().clone());
        Ok(record(y, op, &inputs, move |_, gy| {
            let g = gy.dense(op).expect("f32");
            let ws = w.as_ref().map(|w| w.storage());
            let (dx, dwb) = backend
                .layer_norm_backward(
                    &**x.storage(),
                    ws.as_ref().map(|s| &***s),
                    &**stats.storage(),
                    &**g.storage(),
                    rows,
                    cols,
                )
                .expect("layer_norm backward: f32");
            let dwb = Tensor::from_backend(dwb, [2, cols]);
            let mut grads = vec![Some(Tensor::from_backend(dx, shape.clone()))];
            if has_w {
                grads.push(Some(dwb.select(0, 0)));
            }
            if has_b {
                grads.push(Some(dwb.select(0, 1)));
            }
            grads
        }))
    }

    panicking!(
        /// Layer normalization over the last dim; see [`Tensor::try_layer_norm`].
        layer_norm => try_layer_norm(weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32) -> Tensor
    );
}
