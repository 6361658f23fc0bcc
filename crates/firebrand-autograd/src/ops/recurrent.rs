//! The LSTM recurrence over a whole sequence as one autograd op.
//!
//! Written per step with `Tensor` ops this would record a graph of a dozen
//! nodes per step, and every step's slice of the input projection would
//! send back a gradient the size of the whole sequence. Here the forward
//! pass runs the steps without recording and keeps the gate activations; the
//! backward pass is backpropagation through time, written once: per step the
//! fused cell backward and one `(B, 4H)·W_hh` product, then one gemm for
//! `W_hh`'s gradient over all steps.

use super::record;
use crate::grad_mode::with_no_grad;
use crate::tensor::Tensor;
use firebrand_tensor::backend::Rows;
use firebrand_tensor::{Error, Result};

/// The LSTM recurrence from primitive ops, step by step (the `f64` path):
/// gates `i, f, g, o` of `xw_t + h·W_hhᵀ`, `c = σ(f)·c + σ(i)·tanh(g)`,
/// `h = σ(o)·tanh(c)`; autograd differentiates every step.
fn lstm_scan_composite(
    xw: &Tensor,
    w_hh: &Tensor,
    h0: &Tensor,
    c0: &Tensor,
    order: &[usize],
    all: bool,
) -> Result<Tensor> {
    let hd = h0.dims()[1];
    let (mut hp, mut cp) = (h0.clone(), c0.clone());
    let mut steps: Vec<Option<Tensor>> = vec![None; order.len()];
    for &ti in order {
        let z = xw.try_select(0, ti)?.try_add(&hp.try_matmul(&w_hh.t())?)?; // (B, 4H)
        let gate = |k: usize| z.narrow(1, k * hd, hd);
        cp = gate(1).sigmoid().mul(&cp).add(&gate(0).sigmoid().mul(&gate(2).tanh()));
        hp = gate(3).sigmoid().mul(&cp.tanh());
        if all {
            steps[ti] = Some(Tensor::cat(&[&cp, &hp], 1)); // (B, 2H)
        }
    }
    if !all {
        return Ok(Tensor::cat(&[&cp, &hp], 1));
    }
    let steps: Vec<Tensor> = steps.into_iter().map(|s| s.expect("every step ran")).collect();
    Ok(Tensor::stack(&steps.iter().collect::<Vec<_>>(), 0)) // (T, B, 2H)
}

impl Tensor {
    /// Runs an LSTM layer's recurrence, time-major. `self` is the input
    /// projection `xw = x·W_ihᵀ + b_ih + b_hh` `(T, B, 4H)` (gates
    /// `i, f, g, o`), `w_hh` is `(4H, H)`, `h0` and `c0` are `(B, H)`;
    /// `reverse` runs from the last step to the first. Returns `(T, B, 2H)`:
    /// each step's cell state `c_t` then hidden state `h_t`. Differentiable in
    /// all four inputs.
    /// The cell's elementwise math is one fused backend primitive per step
    /// (`lstm_cell`, and `lstm_cell_backward`).
    ///
    /// # Errors
    /// When the shapes do not fit together (named in the message).
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let (t, b, h) = (3, 2, 4);
    /// let xw = Tensor::randn([t, b, 4 * h], 0.0, 1.0);
    /// let w_hh = Tensor::randn([4 * h, h], 0.0, 0.5);
    /// let y = xw.try_lstm_scan(&w_hh, &Tensor::zeros([b, h]), &Tensor::zeros([b, h]), false).unwrap();
    /// assert_eq!(y.dims(), &[3, 2, 8]);
    /// ```
    pub fn try_lstm_scan(&self, w_hh: &Tensor, h0: &Tensor, c0: &Tensor, reverse: bool) -> Result<Tensor> {
        self.lstm_scan_impl(w_hh, h0, c0, reverse, true)
    }

    /// As [`Tensor::try_lstm_scan`], returning only the final step's
    /// `[c | h]` `(B, 2H)` (for a layer whose sequence output is not used:
    /// nothing is stacked, and no gradient flows for the other steps' outputs).
    ///
    /// # Errors
    /// As [`Tensor::try_lstm_scan`].
    pub fn try_lstm_scan_last(&self, w_hh: &Tensor, h0: &Tensor, c0: &Tensor, reverse: bool) -> Result<Tensor> {
        self.lstm_scan_impl(w_hh, h0, c0, reverse, false)
    }

    fn lstm_scan_impl(&self, w_hh: &Tensor, h0: &Tensor, c0: &Tensor, reverse: bool, all: bool) -> Result<Tensor> {
        let (t, b, g4) = match *self.dims() {
            [t, b, g] if g % 4 == 0 && t > 0 => (t, b, g),
            _ => return Err(Error::msg("lstm_scan", format!("expected xw (T > 0, B, 4H), got {:?}", self.dims()))),
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
        if [self, w_hh, h0, c0].iter().all(|x| x.dtype() == firebrand_tensor::DType::F64) {
            return lstm_scan_composite(self, w_hh, h0, c0, &order, all);
        }
        let backend = self.backend("lstm_scan")?;
        let dense = |x: &Tensor| x.dense("lstm_scan");
        let rows = |offset: usize, stride: usize| Rows { offset, stride };
        let xw_t = dense(self)?; // (T, B, 4H): each step's (B, 4H) is one block
        // Forward, unrecorded: per step one gemm and the fused cell (which adds
        // the input projection); each step's [acts | c | h] (B, 6H) is kept.
        let mut states: Vec<Option<Tensor>> = vec![None; t];
        let c0_d = dense(&c0.detach())?;
        let out = with_no_grad(|| -> Result<Tensor> {
            let w_t = w_hh.t();
            let mut hp = h0.detach();
            let mut prev: Option<Tensor> = None; // the previous step's state
            for &ti in &order {
                let hw = dense(&hp.try_matmul(&w_t)?)?; // (B, 4H)
                let (c_src, c_at) = match &prev {
                    Some(p) => (p.clone(), rows(4 * h, 6 * h)),
                    None => (c0_d.clone(), rows(0, h)),
                };
                let st = backend.lstm_cell(
                    &**xw_t.storage(),
                    rows(ti * b * g4, g4),
                    &**hw.storage(),
                    &**c_src.storage(),
                    c_at,
                    b,
                    h,
                )?;
                let st = Tensor::from_backend(st, [b, 6 * h]);
                hp = st.try_narrow(1, 5 * h, h)?;
                states[ti] = Some(st.clone());
                prev = Some(st);
            }
            let steps: Vec<Tensor> = states.iter().map(|s| s.as_ref().expect("ran").narrow(1, 4 * h, 2 * h)).collect();
            if !all {
                return Ok(steps[*order.last().expect("t > 0")].contiguous()); // (B, 2H)
            }
            Tensor::try_stack(&steps.iter().collect::<Vec<_>>(), 0) // (T, B, 2H): c_t then h_t
        })?;
        let states: Vec<Tensor> = states.into_iter().map(|s| s.expect("ran")).collect();
        let (w_hh_d, h0_d) = (w_hh.detach(), h0.detach());
        Ok(record(out, "lstm_scan", &[self, w_hh, h0, c0], move |_, gy| {
            with_no_grad(|| {
                // gy: (T, B, 2H) = gradients of every c_t and h_t.
                // (T, B, 2H), or (B, 2H) for the final step alone with zeros elsewhere.
                let gy_t = gy.dense("lstm_scan backward").expect("f32");
                let zeros = (!all).then(|| Tensor::zeros([b, 2 * h]));
                let last = *order.last().expect("t > 0");
                let mut dh_next = Tensor::zeros([b, h]);
                let mut dc_next: (Tensor, Rows) = (Tensor::zeros([b, h]), rows(0, h));
                let mut dgates: Vec<Option<Tensor>> = vec![None; t];
                let mut h_prev: Vec<Option<Tensor>> = vec![None; t];
                for (k, &ti) in order.iter().enumerate().rev() {
                    let (prev_h, c_src, c_at) = if k == 0 {
                        (h0_d.clone(), c0_d.clone(), rows(0, h))
                    } else {
                        let s = &states[order[k - 1]];
                        (s.narrow(1, 5 * h, h), s.clone(), rows(4 * h, 6 * h))
                    };
                    let back = backend
                        .lstm_cell_backward(
                            &**states[ti].storage(),
                            &**c_src.storage(),
                            c_at,
                            &**(if all || ti == last { &gy_t } else { zeros.as_ref().expect("set") }).storage(),
                            rows(if all { ti * b * 2 * h } else { 0 }, 2 * h),
                            &**dh_next.storage(),
                            &**dc_next.0.storage(),
                            dc_next.1,
                            b,
                            h,
                        )
                        .expect("f32");
                    let back = Tensor::from_backend(back, [b, 5 * h]);
                    let dgs = back.narrow(1, 0, 4 * h); // (B, 4H), pre-activation
                    dh_next = dgs.matmul(&w_hh_d).contiguous(); // (B, H)
                    dc_next = (back.clone(), rows(4 * h, 5 * h));
                    dgates[ti] = Some(dgs);
                    h_prev[ti] = Some(prev_h);
                }
                let dg: Vec<Tensor> = dgates.into_iter().map(|d| d.expect("ran")).collect();
                let dxw = Tensor::stack(&dg.iter().collect::<Vec<_>>(), 0); // (T, B, 4H)
                let hp: Vec<Tensor> = h_prev.into_iter().map(|d| d.expect("ran")).collect();
                let hp = Tensor::stack(&hp.iter().collect::<Vec<_>>(), 0).reshape([t * b, h]); // (T·B, H)
                // dW_hh = Σ_t dgates_tᵀ · h_{t−1}: one (4H, T·B)·(T·B, H) product.
                let dw = dxw.reshape([t * b, g4]).t().matmul(&hp);
                let dc0 = dc_next.0.narrow(1, dc_next.1.offset, h).contiguous();
                vec![Some(dxw), Some(dw), Some(dh_next), Some(dc0)]
            })
        }))
    }
}
