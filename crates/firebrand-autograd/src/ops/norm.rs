//! Layer normalization over the last dim as one op over the backend's fused
//! kernel (`Backend::layer_norm`): one pass per row each way instead of the
//! composite's eight ops (mean, subtract, variance, add, rsqrt, multiply,
//! scale, shift) and their backward rules. The composite form is the
//! reference in the tests.

use super::{activate_rest, check_f32, fusable_act, panicking, record, records_graph};
use crate::tensor::{Tensor, same_backend};
use firebrand_tensor::backend::Fused;
use firebrand_tensor::op::UnaryOp;
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
        if self.dtype() == DType::F64 && affine.iter().all(|t| t.dtype() == DType::F64)
            || !self.backend(op)?.has_fused(Fused::LayerNorm)
        {
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

impl Tensor {
    /// `x / √(mean(x²) + eps) · weight` over the last dim (PyTorch's
    /// `F.rms_norm(x, (C,), weight, eps)`); `weight` is `(C,)`.
    /// Differentiable in both: recorded for autograd it is the composite of
    /// square, mean, rsqrt and multiplies; without a graph, on the CPU in
    /// `f32`, one pass per row ([`firebrand_ops::norm::rms_norm`]).
    ///
    /// # Errors
    /// When `weight` is not `(C,)` or the input has no dims.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![3.0f32, 4.0], [1, 2]);
    /// let y = x.try_rms_norm(&Tensor::ones([2]), 0.0).unwrap().to_vec::<f32>();
    /// // mean(x²) = 12.5
    /// assert!((y[0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-6 && (y[1] - 4.0 / 12.5f32.sqrt()).abs() < 1e-6);
    /// ```
    pub fn try_rms_norm(&self, weight: &Tensor, eps: f32) -> Result<Tensor> {
        let op = "rms_norm";
        let cols = *self.dims().last().ok_or_else(|| Error::msg(op, "expected (…, C), got a scalar".to_string()))?;
        if weight.dims() != [cols] {
            return Err(Error::msg(
                op,
                format!("weight must be ({cols},) for input {:?}, got {:?}", self.dims(), weight.dims()),
            ));
        }
        let fused = [self, weight].iter().all(|x| x.device().is_cpu() && x.dtype() == DType::F32)
            && !records_graph(&[self, weight]);
        if fused {
            let rows = self.elem_count() / cols.max(1);
            let mut out = vec![0.0f32; self.elem_count()];
            self.with_f32_slice(|x| {
                weight.with_f32_slice(|w| firebrand_ops::norm::rms_norm(x, w, rows, cols, eps, &mut out))
            })??;
            return Tensor::try_from_vec(out, self.shape().clone());
        }
        let ms = self.square().mean(&[-1], true);
        self.try_mul(&ms.affine(1.0, eps).rsqrt())?.try_mul(weight)
    }

    panicking!(
        /// Root-mean-square normalization over the last dim; see [`Tensor::try_rms_norm`].
        rms_norm => try_rms_norm(weight: &Tensor, eps: f32) -> Tensor
    );
}

impl Tensor {
    /// Training-mode batch norm from primitive ops (for a device without the
    /// fused kernels): the batch mean and biased variance over every dim but
    /// 1, the affine map, then `act`; autograd differentiates each op.
    fn batch_norm_composite(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
        act: Option<UnaryOp>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let d = self.dims();
        let axes: Vec<isize> = (0..d.len() as isize).filter(|&a| a != 1).collect();
        let mean = self.mean(&axes, true);
        let centred = self.try_sub(&mean)?;
        let var = centred.square().mean(&axes, true);
        let y = centred.try_mul(&var.affine(1.0, eps).rsqrt())?.channel_affine_composite(weight, bias, act)?;
        let c = d[1];
        Ok((y, mean.detach().reshape([c]), var.detach().reshape([c])))
    }

    /// Batch normalization with the batch's own statistics (training mode,
    /// PyTorch's `F.batch_norm(x, None, None, weight, bias, training=True)`)
    /// over dim 1 of `(N, C, *)`: `(x − mean)/√(var + eps)·weight + bias`
    /// with the biased variance. Returns the output and the batch's `(C,)`
    /// mean and biased variance (for running statistics; not differentiable).
    /// One fused pass for the statistics, one for the output and two for the
    /// backward (`Backend::batch_norm_stats`/`batch_norm_backward`).
    ///
    /// # Errors
    /// When `x` has fewer than 2 dims, `weight`/`bias` are not `(C,)`, the
    /// dtypes differ or the devices differ.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![1.0f32, 3.0, 10.0, 30.0], [2, 2, 1]);
    /// let (y, mean, var) = x.try_batch_norm(None, None, 0.0).unwrap();
    /// let want = [-1.0f32, -1.0, 1.0, 1.0];
    /// assert!(y.to_vec::<f32>().iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6));
    /// assert_eq!((mean.to_vec::<f32>(), var.to_vec::<f32>()), (vec![5.5, 16.5], vec![20.25, 182.25]));
    /// ```
    pub fn try_batch_norm(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        self.try_batch_norm_act(weight, bias, eps, None)
    }

    /// [`Tensor::try_batch_norm`] followed by the activation `act`, fused:
    /// the activation is applied in the normalization's output pass and, for
    /// ReLU and hardtanh (ReLU6), its derivative is applied inside the
    /// normalization's two backward passes, so neither pass over the
    /// activations exists on its own. Other activations run as their own op
    /// after it when a graph is recorded. The same values as the two ops.
    ///
    /// # Errors
    /// As [`Tensor::try_batch_norm`].
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// use firebrand_tensor::op::UnaryOp;
    /// let x = Tensor::from_vec(vec![1.0f32, 3.0, 10.0, 30.0], [2, 2, 1]);
    /// let (y, _, _) = x.try_batch_norm_act(None, None, 0.0, Some(UnaryOp::Relu)).unwrap();
    /// assert!(y.to_vec::<f32>().iter().zip([0.0, 0.0, 1.0, 1.0]).all(|(a, b)| (a - b).abs() < 1e-6));
    /// ```
    pub fn try_batch_norm_act(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f32,
        act: Option<UnaryOp>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let op = "batch_norm";
        let d = self.dims();
        if d.len() < 2 {
            return Err(Error::InvalidShape { op, shape: self.shape().clone(), msg: "expected (N, C, *)".into() });
        }
        let (n, c) = (d[0], d[1]);
        let dims = [n, c, self.elem_count() / (n * c).max(1)];
        let affine: Vec<&Tensor> = weight.into_iter().chain(bias).collect();
        if let Some(t) = affine.iter().find(|t| t.dims() != [c]) {
            return Err(Error::msg(
                op,
                format!("weight and bias must be ({c},) for input {:?}, got {:?}", d, t.dims()),
            ));
        }
        if let Some(t) = affine.iter().find(|t| t.dtype() != self.dtype()) {
            return Err(Error::msg(op, format!("input {} but weight or bias {}", self.dtype(), t.dtype())));
        }
        let mut inputs = vec![self];
        inputs.extend(&affine);
        let fused = fusable_act(act, records_graph(&inputs));
        let backend = same_backend(op, &inputs)?;
        if !backend.has_fused(Fused::BatchNorm) {
            return self.batch_norm_composite(weight, bias, eps, act);
        }
        let x = self.dense(op)?;
        let stats = Tensor::from_backend(backend.batch_norm_stats(&**x.storage(), dims)?, [2, c]);
        let (mean, var) = (stats.narrow(0, 0, 1).reshape([c]), stats.narrow(0, 1, 1).reshape([c]));
        let (y, saved) = crate::with_no_grad(|| -> Result<(Tensor, Tensor)> {
            let invstd = var.affine(1.0, eps).rsqrt();
            let scale = match weight {
                Some(w) => invstd.try_mul(w)?,
                None => invstd.clone(),
            };
            let shift = mean.try_mul(&scale)?.neg();
            let shift = match bias {
                Some(b) => shift.try_add(b)?,
                None => shift,
            };
            let y = x.try_channel_affine(Some(&scale), Some(&shift), fused)?;
            Ok((y, Tensor::cat(&[&mean, &invstd], 0).contiguous()))
        })?;
        let wd = weight.map(|w| w.dense(op)).transpose()?.map(|w| w.detach());
        let (has_w, has_b) = (weight.is_some(), bias.is_some());
        let xs = x.detach();
        let y = record(y, op, &inputs, move |y, g| {
            let gd = g.dense(op).expect("dense");
            let ws = wd.as_ref().map(|w| w.storage());
            // The activation's output (the recorded output) for its derivative.
            let ys = fused.map(|_| y.storage());
            let (dx, da) = backend
                .batch_norm_backward(
                    &**gd.storage(),
                    &**xs.storage(),
                    &**saved.storage(),
                    ws.as_deref().map(|s| &**s),
                    dims,
                    fused.zip(ys.as_deref().map(|s| &**s)),
                )
                .expect("batch_norm backward: float tensors on one device");
            let da = Tensor::from_backend(da, [2, dims[1]]);
            let mut grads = vec![Some(Tensor::from_backend(dx, xs.shape().clone()))];
            if has_w {
                grads.push(Some(da.narrow(0, 0, 1).reshape([dims[1]]).contiguous()));
            }
            if has_b {
                grads.push(Some(da.narrow(0, 1, 1).reshape([dims[1]]).contiguous()));
            }
            grads
        });
        Ok((activate_rest(y, act, fused)?, mean.contiguous(), var.contiguous()))
    }
}
