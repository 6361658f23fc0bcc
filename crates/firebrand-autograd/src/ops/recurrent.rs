//! The LSTM recurrence over a whole sequence as one autograd op.
//!
//! Written per step with `Tensor` ops this would record a graph of a dozen
//! nodes per step, and every step's slice of the input projection would
//! send back a gradient the size of the whole sequence. Here the forward
//! pass runs the steps without recording and keeps the gate activations; the
//! backward pass is backpropagation through time, written once: per step the
//! gate gradients and one `(B, 4H)·W_hh` product, then one gemm for `W_hh`'s
//! gradient over all steps.

use super::record;
use crate::grad_mode::with_no_grad;
use crate::tensor::Tensor;
use firebrand_tensor::{Error, Result};

impl Tensor {
    /// Runs an LSTM layer's recurrence. `self` is the input projection
    /// `xw = x·W_ihᵀ + b_ih + b_hh` `(B, T, 4H)` (gates `i, f, g, o`),
    /// `w_hh` is `(4H, H)`, `h0` and `c0` are `(B, H)`; `reverse` runs from
    /// the last step to the first. Returns `(B, T, 2H)`: each step's hidden
    /// state `h_t` then cell state `c_t`. Differentiable in all four inputs.
    ///
    /// # Errors
    /// When the shapes do not fit together (named in the message).
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let (b, t, h) = (2, 3, 4);
    /// let xw = Tensor::randn([b, t, 4 * h], 0.0, 1.0);
    /// let w_hh = Tensor::randn([4 * h, h], 0.0, 0.5);
    /// let y = xw.try_lstm_scan(&w_hh, &Tensor::zeros([b, h]), &Tensor::zeros([b, h]), false).unwrap();
    /// assert_eq!(y.dims(), &[2, 3, 8]);
    /// ```
    pub fn try_lstm_scan(&self, w_hh: &Tensor, h0: &Tensor, c0: &Tensor, reverse: bool) -> Result<Tensor> {
        let (b, t, g4) = match *self.dims() {
            [b, t, g] if g % 4 == 0 && t > 0 => (b, t, g),
            _ => return Err(Error::msg("lstm_scan", format!("expected xw (B, T > 0, 4H), got {:?}", self.dims()))),
        };
        let h = g4 / 4;
        if w_hh.dims() != [g4, h] || h0.dims() != [b, h] || c0.dims() != [b, h] {
            return Err(Error::msg(
                "lstm_scan",
                format!(
                    "xw {:?} needs w_hh [{g4}, {h}], h0 and c0 [{b}, {h}]; got {:?}, {:?}, {:?}",
                    self.dims(),
                    w_hh.dims(),
                    h0.dims(),
                    c0.dims()
                ),
            ));
        }
        let order: Vec<usize> = if reverse { (0..t).rev().collect() } else { (0..t).collect() };
        // Forward, unrecorded; keep what the backward pass needs (per time index).
        let (mut acts, mut cs, mut hs) = (vec![None; t], vec![None; t], vec![None; t]);
        let out = with_no_grad(|| -> Result<Tensor> {
            let w_t = w_hh.t();
            let (mut hp, mut cp) = (h0.detach(), c0.detach());
            for &ti in &order {
                let gates = self.try_select(1, ti)?.try_add(&hp.try_matmul(&w_t)?)?; // (B, 4H)
                let ifo_g = Tensor::cat(
                    &[
                        &gates.narrow(1, 0, 2 * h).sigmoid(),
                        &gates.narrow(1, 2 * h, h).tanh(),
                        &gates.narrow(1, 3 * h, h).sigmoid(),
                    ],
                    1,
                ); // (B, 4H): σi σf tanh(g) σo
                let (i, f, g, o) = (
                    ifo_g.narrow(1, 0, h),
                    ifo_g.narrow(1, h, h),
                    ifo_g.narrow(1, 2 * h, h),
                    ifo_g.narrow(1, 3 * h, h),
                );
                let c = f.mul(&cp).add(&i.mul(&g));
                let hn = o.mul(&c.tanh());
                acts[ti] = Some(ifo_g);
                cs[ti] = Some(c.clone());
                hs[ti] = Some(hn.clone());
                (hp, cp) = (hn, c);
            }
            let steps: Vec<Tensor> = (0..t)
                .map(|ti| Tensor::cat(&[hs[ti].as_ref().expect("ran"), cs[ti].as_ref().expect("ran")], 1))
                .collect();
            Tensor::try_stack(&steps.iter().collect::<Vec<_>>(), 1) // (B, T, 2H)
        })?;
        let (acts, cs, hs): (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>) = (
            acts.into_iter().map(|a| a.expect("ran")).collect(),
            cs.into_iter().map(|a| a.expect("ran")).collect(),
            hs.into_iter().map(|a| a.expect("ran")).collect(),
        );
        let (w_hh_d, h0_d, c0_d) = (w_hh.detach(), h0.detach(), c0.detach());
        Ok(record(out, "lstm_scan", &[self, w_hh, h0, c0], move |_, gy| {
            with_no_grad(|| {
                // gy: (B, T, 2H) = gradients of every h_t and c_t.
                let (mut dh_next, mut dc_next) = (Tensor::zeros([b, h]), Tensor::zeros([b, h]));
                let mut dgates: Vec<Option<Tensor>> = vec![None; t];
                let mut h_prev: Vec<Option<Tensor>> = vec![None; t];
                for (k, &ti) in order.iter().enumerate().rev() {
                    let (prev_h, prev_c) = if k == 0 { (&h0_d, &c0_d) } else { (&hs[order[k - 1]], &cs[order[k - 1]]) };
                    let a = &acts[ti];
                    let (i, f, g, o) =
                        (a.narrow(1, 0, h), a.narrow(1, h, h), a.narrow(1, 2 * h, h), a.narrow(1, 3 * h, h));
                    let gstep = gy.select(1, ti);
                    let dh = gstep.narrow(1, 0, h).add(&dh_next);
                    let tc = cs[ti].tanh();
                    // dc = dc_out + dc_next + dh·o·(1 − tanh²c)
                    let dc =
                        gstep.narrow(1, h, h).add(&dc_next).add(&dh.mul(&o).mul(&tc.square().neg().affine(1.0, 1.0)));
                    let di = dc.mul(&g).mul(&i.mul(&i.neg().affine(1.0, 1.0)));
                    let df = dc.mul(prev_c).mul(&f.mul(&f.neg().affine(1.0, 1.0)));
                    let dg = dc.mul(&i).mul(&g.square().neg().affine(1.0, 1.0));
                    let dout = dh.mul(&tc).mul(&o.mul(&o.neg().affine(1.0, 1.0)));
                    let dgs = Tensor::cat(&[&di, &df, &dg, &dout], 1); // (B, 4H), pre-activation
                    dh_next = dgs.matmul(&w_hh_d); // (B, H)
                    dc_next = dc.mul(&f);
                    dgates[ti] = Some(dgs);
                    h_prev[ti] = Some(prev_h.clone());
                }
                let dg: Vec<Tensor> = dgates.into_iter().map(|d| d.expect("ran")).collect();
                let dxw = Tensor::stack(&dg.iter().collect::<Vec<_>>(), 1); // (B, T, 4H)
                let hp: Vec<Tensor> = h_prev.into_iter().map(|d| d.expect("ran")).collect();
                let hp = Tensor::stack(&hp.iter().collect::<Vec<_>>(), 1).reshape([b * t, h]); // (B·T, H)
                // dW_hh = Σ_t dgates_tᵀ · h_{t−1}: one (4H, B·T)·(B·T, H) product.
                let dw = dxw.reshape([b * t, g4]).t().matmul(&hp);
                vec![Some(dxw), Some(dw), Some(dh_next), Some(dc_next)]
            })
        }))
    }
}
