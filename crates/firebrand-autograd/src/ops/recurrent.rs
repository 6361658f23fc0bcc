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
        if [self, w_hh, h0, c0].iter().all(|x| x.dtype() == firebrand_tensor::DType::F64)
            || !self.backend("lstm_scan")?.has_fused(firebrand_tensor::backend::Fused::LstmCell)
        {
            return lstm_scan_composite(self, w_hh, h0, c0, &order, all);
        }
        let backend = self.backend("lstm_scan")?;
        let dense = |x: &Tensor| x.dense("lstm_scan");
        let rows = |offset: usize, stride: usize| Rows { offset, stride };
        let xw_t = dense(self)?; // (T, B, 4H): each step's (B, 4H) is one block
        let (c0_d, h0_d, w_d) = (dense(&c0.detach())?, h0.detach(), w_hh.detach());
        // On the CPU the batch is split across the threads, each running the
        // whole recurrence on its rows with serial kernels: no hand-off between
        // threads at every step (two per step each way), and the cells of a
        // chunk stay in its core's cache. A chunk is a range of rows `(b0, bc)`.
        let chunks = row_chunks(b, self.device() == firebrand_tensor::Device::Cpu);
        // Forward, unrecorded: per step one gemm and the fused cell (which adds
        // the input projection); each step's [acts | c | h] (bc, 6H) is kept.
        // W_hhᵀ (H, 4H) laid out once, so each step's gemm reads it in place.
        let w_t = w_d.t().contiguous();
        let forward_chunk = |_, (b0, bc): (usize, usize)| -> Result<Vec<Tensor>> {
            with_no_grad(|| {
                let mut hp = h0_d.narrow(0, b0, bc);
                let mut states: Vec<Option<Tensor>> = vec![None; t];
                let mut prev: Option<Tensor> = None; // the previous step's state
                for &ti in &order {
                    let hw = dense(&hp.try_matmul(&w_t)?)?; // (bc, 4H)
                    let (c_src, c_at) = match &prev {
                        Some(p) => (p.clone(), rows(4 * h, 6 * h)),
                        None => (c0_d.clone(), rows(b0 * h, h)),
                    };
                    let st = backend.lstm_cell(
                        &**xw_t.storage(),
                        rows((ti * b + b0) * g4, g4),
                        &**hw.storage(),
                        &**c_src.storage(),
                        c_at,
                        bc,
                        h,
                    )?;
                    let st = Tensor::from_backend(st, [bc, 6 * h]);
                    hp = st.try_narrow(1, 5 * h, h)?;
                    states[ti] = Some(st.clone());
                    prev = Some(st);
                }
                Ok(states.into_iter().map(|s| s.expect("every step ran")).collect())
            })
        };
        let states: Vec<Vec<Tensor>> = per_chunk(&chunks, forward_chunk)?; // [chunk][step]
        let last = *order.last().expect("t > 0");
        // The step before `ti` in the order run (None for the first).
        let prev_of = move |ti: usize| if reverse { (ti + 1 < t).then_some(ti + 1) } else { ti.checked_sub(1) };
        // Every chunk's rows of step `ti`'s [c | h], in batch order.
        let step_out = |ti: usize| -> Vec<Tensor> { states.iter().map(|s| s[ti].narrow(1, 4 * h, 2 * h)).collect() };
        let out = if all {
            // (T, B, 2H): c_t then h_t, step-major, each step's chunks in order.
            let parts: Vec<Tensor> = (0..t).flat_map(step_out).collect();
            Tensor::try_cat(&parts.iter().collect::<Vec<_>>(), 0)?.try_reshape([t, b, 2 * h])?
        } else {
            Tensor::try_cat(&step_out(last).iter().collect::<Vec<_>>(), 0)? // (B, 2H)
        };
        Ok(record(out, "lstm_scan", &[self, w_hh, h0, c0], move |_, gy| {
            with_no_grad(|| {
                // gy: (T, B, 2H) = gradients of every c_t and h_t, or (B, 2H)
                // for the final step alone with zeros elsewhere.
                let gy_t = gy.dense("lstm_scan backward").expect("f32");
                // Per chunk, backpropagation through time: each step's
                // [dgates | dc_prev] (bc, 5H), and dh0, dc0 (bc, H).
                let backward_chunk = |ci: usize, (b0, bc): (usize, usize)| -> Result<(Vec<Tensor>, Tensor, Tensor)> {
                    with_no_grad(|| {
                        let st = &states[ci];
                        let zeros = |dims: [usize; 2]| Tensor::zeros(dims).to_device(gy_t.device());
                        let zeros2 = (!all).then(|| zeros([bc, 2 * h])).transpose()?;
                        let mut dh_next = zeros([bc, h])?;
                        let mut dc_next: (Tensor, Rows) = (zeros([bc, h])?, rows(0, h));
                        let mut back_steps: Vec<Option<Tensor>> = vec![None; t];
                        for &ti in order.iter().rev() {
                            let (c_src, c_at) = match prev_of(ti) {
                                None => (c0_d.clone(), rows(b0 * h, h)),
                                Some(p) => (st[p].clone(), rows(4 * h, 6 * h)),
                            };
                            let (g_src, g_at) = match (all, ti == last) {
                                (true, _) => (&gy_t, rows((ti * b + b0) * 2 * h, 2 * h)),
                                (false, true) => (&gy_t, rows(b0 * 2 * h, 2 * h)),
                                (false, false) => (zeros2.as_ref().expect("set"), rows(0, 2 * h)),
                            };
                            let back = backend.lstm_cell_backward(
                                &**st[ti].storage(),
                                &**c_src.storage(),
                                c_at,
                                &**g_src.storage(),
                                g_at,
                                &**dh_next.storage(),
                                &**dc_next.0.storage(),
                                dc_next.1,
                                bc,
                                h,
                            )?;
                            let back = Tensor::from_backend(back, [bc, 5 * h]);
                            // (bc, 4H) pre-activation gradients, then dh_{t-1} = dgates·W_hh.
                            dh_next = dense(&back.try_narrow(1, 0, 4 * h)?.try_matmul(&w_d)?)?;
                            dc_next = (back.clone(), rows(4 * h, 5 * h));
                            back_steps[ti] = Some(back);
                        }
                        let dc0 = dc_next.0.narrow(1, dc_next.1.offset, h);
                        Ok((back_steps.into_iter().map(|s| s.expect("ran")).collect(), dh_next, dc0))
                    })
                };
                let backs = per_chunk(&chunks, backward_chunk).expect("lstm_scan backward");
                let cat0 = |parts: Vec<Tensor>| Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0);
                // (T, B, 4H) gate gradients, step-major, chunks in batch order: one copy.
                let dxw = cat0((0..t).flat_map(|ti| backs.iter().map(move |c| c.0[ti].narrow(1, 0, 4 * h))).collect())
                    .reshape([t, b, g4]);
                // Every step's h_{t−1} (T·B, H) in the same order, for dW_hh.
                let h_prev = |ci: usize, ti: usize| -> Tensor {
                    match prev_of(ti) {
                        None => h0_d.narrow(0, chunks[ci].0, chunks[ci].1),
                        Some(p) => states[ci][p].narrow(1, 5 * h, h),
                    }
                };
                let hp = cat0((0..t).flat_map(|ti| (0..chunks.len()).map(move |ci| h_prev(ci, ti))).collect());
                // dW_hh = Σ_t dgates_tᵀ · h_{t−1}: one product over all T·B rows.
                let dw = super::matmul::weight_grad(&dxw.reshape([t * b, g4]), &hp, &w_d);
                let dh0 = cat0(backs.iter().map(|c| c.1.clone()).collect());
                let dc0 = cat0(backs.iter().map(|c| c.2.clone()).collect());
                vec![Some(dxw), Some(dw), Some(dh0), Some(dc0)]
            })
        }))
    }
}

/// The batch rows `(first, count)` each thread runs the recurrence on: one
/// chunk per thread when `split` and every chunk keeps at least 16 rows (the
/// gemm's row blocks stay full), else the whole batch as one.
fn row_chunks(b: usize, split: bool) -> Vec<(usize, usize)> {
    let n = if split { firebrand_ops::parallel::num_threads().min(b / 16).max(1) } else { 1 };
    (0..n).map(|i| (i * b / n, (i + 1) * b / n - i * b / n)).collect()
}

/// `f(i, chunk)` over every chunk, in parallel when there are several (the
/// kernels inside a chunk then run serially), results in chunk order.
fn per_chunk<C: Copy + Sync, R: Send>(chunks: &[C], f: impl Fn(usize, C) -> Result<R> + Sync) -> Result<Vec<R>> {
    if chunks.len() == 1 {
        return Ok(vec![f(0, chunks[0])?]);
    }
    let mut out: Vec<Option<Result<R>>> = chunks.iter().map(|_| None).collect();
    firebrand_ops::parallel::par_chunks_mut(&mut out, 1, |i, slot| slot[0] = Some(f(i, chunks[i])));
    out.into_iter().map(|r| r.expect("every chunk ran")).collect()
}
