//! Fused scaled-dot-product attention: `softmax(scale·q·kᵀ + mask)·v` per
//! (batch, head), with the causal and key-padding masks applied while the
//! scores are made (no mask tensor exists) and the output written straight
//! into `(B, T, heads, d)` order, which is `(B, T, E)` for the output
//! projection. The forward pass keeps each row's log-sum-exp so the backward
//! pass recomputes the probabilities instead of storing them.
//!
//! One task per (batch, head); inside, the two products of each pass are
//! gemms on the calling thread ([`gemm_serial`]) over the operands' own strided
//! views (a third of a fused `(B, L, 3E)` projection needs no copy).
//!
//! [`rope_pairs`] rotates queries and keys by position (rotary embedding).

use crate::gemm::{MatRef, gemm_serial};
use crate::parallel::{SendPtr, par_for};
use firebrand_tensor::backend::{AttentionSpec, HeadLayout, HeadOrder};
use firebrand_tensor::pool::{recycle_f32, take_f32};

/// The operands of one call as CPU slices (see
/// [`AttentionInputs`](firebrand_tensor::backend::AttentionInputs)).
#[derive(Clone, Copy)]
pub struct Operands<'a> {
    /// Queries `(B, heads, T, d)` at `q_at`.
    pub q: &'a [f32],
    /// Where the queries sit.
    pub q_at: HeadLayout,
    /// Keys `(B, heads, S, d)` at `k_at`.
    pub k: &'a [f32],
    /// Where the keys sit.
    pub k_at: HeadLayout,
    /// Values `(B, heads, S, d)` at `v_at`.
    pub v: &'a [f32],
    /// Where the values sit.
    pub v_at: HeadLayout,
    /// `(B, S)`, non-zero where a key is ignored.
    pub key_padding: Option<&'a [f32]>,
    /// `(T, S)`, added to the scaled scores (`−∞` blocks a pair).
    pub attn_mask: Option<&'a [f32]>,
}

fn base(at: &HeadLayout, b: usize, h: usize) -> usize {
    at.offset + b * at.batch + h * at.head
}

/// The `(L, d)` matrix of one head.
fn head<'a>(data: &'a [f32], at: &HeadLayout, b: usize, h: usize) -> MatRef<'a> {
    MatRef { data, offset: base(at, b, h), rs: at.row, cs: 1 }
}

fn check(x: &Operands, spec: &AttentionSpec) {
    let s = spec;
    for (name, data, at, len) in
        [("q", x.q, &x.q_at, s.q_len), ("k", x.k, &x.k_at, s.kv_len), ("v", x.v, &x.v_at, s.kv_len)]
    {
        if s.batch > 0 && s.heads > 0 && len > 0 && s.head_dim > 0 {
            let last = base(at, s.batch - 1, s.heads - 1) + (len - 1) * at.row + s.head_dim - 1;
            assert!(last < data.len(), "attention: {name} at {at:?} overruns its buffer of {}", data.len());
        }
    }
    if let Some(p) = x.key_padding {
        assert_eq!(p.len(), s.batch * s.kv_len, "attention: key padding mask must be (B, S)");
    }
    if let Some(m) = x.attn_mask {
        assert_eq!(m.len(), s.q_len * s.kv_len, "attention: attn_mask must be (T, S)");
    }
}

/// How many leading keys query `i` may see under the causal mask.
fn visible(spec: &AttentionSpec, i: usize) -> usize {
    match spec.causal {
        Some(off) => (i + off + 1).min(spec.kv_len),
        None => spec.kv_len,
    }
}

/// `scale·q·kᵀ` of head `(b, h)` into `s` `(T, S)`, masked scores at −∞.
fn scores(x: &Operands, spec: &AttentionSpec, b: usize, h: usize, s: &mut [f32]) {
    let (t, sl, d) = (spec.q_len, spec.kv_len, spec.head_dim);
    gemm_serial(t, d, sl, head(x.q, &x.q_at, b, h), head(x.k, &x.k_at, b, h).t(), s, sl, false);
    let pad = x.key_padding.map(|p| &p[b * sl..(b + 1) * sl]);
    for (i, row) in s.chunks_exact_mut(sl).enumerate() {
        let lim = visible(spec, i);
        row[..lim].iter_mut().for_each(|v| *v *= spec.scale);
        if let Some(m) = x.attn_mask {
            row[..lim].iter_mut().zip(&m[i * sl..]).for_each(|(v, a)| *v += a);
        }
        row[lim..].fill(f32::NEG_INFINITY);
        if let Some(p) = pad {
            for (v, &m) in row[..lim].iter_mut().zip(p) {
                if m != 0.0 {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// The dropout factor of weight `(b, h, i, j)` (flat index `at`): 0 when
/// dropped, `1/(1 − p)` when kept. A counter-based hash (SplitMix64's
/// finalizer) of the seed and the index, so any pass can regenerate it.
#[inline]
fn dropout_factor(dropout: Option<(f32, u64)>, at: u64) -> f32 {
    match dropout {
        None => 1.0,
        Some((p, seed)) => {
            let mut z = seed ^ at.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / (1u64 << 24) as f32; // uniform in [0, 1)
            if u >= p { 1.0 / (1.0 - p) } else { 0.0 }
        }
    }
}

/// Applies the dropout factors to row `i` of head `(b, h)`'s weights.
fn drop_row(spec: &AttentionSpec, b: usize, h: usize, i: usize, row: &mut [f32]) {
    if spec.dropout.is_none() {
        return;
    }
    let first = (((b * spec.heads + h) * spec.q_len + i) * spec.kv_len) as u64;
    for (j, v) in row.iter_mut().enumerate() {
        *v *= dropout_factor(spec.dropout, first + j as u64);
    }
}

/// `p = exp(s − shift)` over a row, returning its sum, in one pass; zeros
/// when the shift is −∞ (a query that sees no key).
fn exp_row(s: &[f32], shift: f32, p: &mut [f32]) -> f32 {
    if shift == f32::NEG_INFINITY {
        p.fill(0.0);
        return 0.0;
    }
    crate::softmax::exp_shifted(s, shift, p)
}

/// Per head, up to this many weights `T·S` the forward pass keeps the
/// attention weights for the backward pass instead of recomputing them from
/// the scores there (the recomputation's `q·kᵀ` and exponentials cost more
/// than the copy at small heads: at the GPT's 64 x 64 heads the fused forward
/// + backward took 1.69 ms against the composite form's 1.12).
pub const KEEP_WEIGHTS_MAX: usize = 64 * 64;

/// Whether [`attention`] keeps the weights: its second output is then the
/// log-sum-exp `(B, heads, T)` followed by the weights `(B, heads, T, S)`.
pub fn keeps_weights(spec: &AttentionSpec) -> bool {
    spec.q_len * spec.kv_len <= KEEP_WEIGHTS_MAX
}

/// Copies the `(L, d)` matrix `src` into head `h` of a contiguous
/// `(B, L, heads, d)` buffer at `dst`.
///
/// # Safety
/// `dst` must point at such a buffer; no other task writes head `(b, h)`.
unsafe fn scatter_head(src: &[f32], dst: SendPtr<f32>, spec: &AttentionSpec, len: usize, b: usize, h: usize) {
    let (nh, d) = (spec.heads, spec.head_dim);
    #[cfg(target_arch = "x86_64")]
    let simd = crate::simd512::available();
    for (l, row) in src.chunks_exact(d).enumerate().take(len) {
        let at = ((b * len + l) * nh + h) * d;
        // SAFETY: inside the buffer; this head's slots belong to this task.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            if simd {
                // A head's row is short (d = 32 at the GPT's heads): inline
                // vector moves instead of a call to memcpy per row (which
                // was 12% of the GPT attention's forward + backward).
                crate::simd512::copy(row, dst.get().add(at));
                continue;
            }
            std::ptr::copy_nonoverlapping(row.as_ptr(), dst.get().add(at), d)
        };
    }
}

/// Computes head `(b, h)`'s `(len, d)` gradient with `f` (which overwrites
/// the row-major slice it is given) into the contiguous buffer at `dst` in
/// `order`: straight into the head's own block when heads-major, else into
/// `scratch` and then scattered ([`scatter_head`]).
///
/// # Safety
/// As for [`scatter_head`], with a `(B, len, heads, d)` or `(B, heads, len, d)` buffer.
#[allow(clippy::too_many_arguments)]
unsafe fn write_head(
    dst: SendPtr<f32>,
    order: HeadOrder,
    spec: &AttentionSpec,
    len: usize,
    b: usize,
    h: usize,
    scratch: &mut [f32],
    f: impl FnOnce(&mut [f32]),
) {
    let n = len * spec.head_dim;
    match order {
        HeadOrder::HeadsMajor => {
            // SAFETY: head (b, h)'s block, disjoint from every other task's.
            let block = unsafe { std::slice::from_raw_parts_mut(dst.get().add((b * spec.heads + h) * n), n) };
            f(block);
        }
        HeadOrder::PositionsMajor => {
            f(&mut scratch[..n]);
            // SAFETY: the caller's contract.
            unsafe { scatter_head(&scratch[..n], dst, spec, len, b, h) };
        }
    }
}

/// Forward pass: the output `(B, T, heads, d)` and the statistics the
/// backward pass needs: each query row's log-sum-exp `(B, heads, T)` (−∞ for
/// a row that sees no key; its output is 0), followed, for small heads
/// ([`keeps_weights`]), by the attention weights before dropout `(B, heads, T, S)`.
///
/// ```
/// use firebrand_ops::attention::{attention, Operands};
/// use firebrand_tensor::backend::{AttentionSpec, HeadLayout, HeadOrder};
/// // One head, two positions, d = 1, causal: the first query sees only the first value.
/// let (q, k, v) = ([1.0, 1.0], [0.0, 0.0], [2.0, 4.0]);
/// let at = HeadLayout { offset: 0, batch: 2, head: 2, row: 1 };
/// let x = Operands { q: &q, q_at: at, k: &k, k_at: at, v: &v, v_at: at, key_padding: None, attn_mask: None };
/// let spec = AttentionSpec { batch: 1, heads: 1, q_len: 2, kv_len: 2, head_dim: 1, scale: 1.0, causal: Some(0), dropout: None };
/// let (out, _lse) = attention(&x, &spec);
/// assert_eq!(out, vec![2.0, 3.0]);
/// ```
pub fn attention(x: &Operands, spec: &AttentionSpec) -> (Vec<f32>, Vec<f32>) {
    check(x, spec);
    let (nb, nh, t, sl, d) = (spec.batch, spec.heads, spec.q_len, spec.kv_len, spec.head_dim);
    let mut out = take_f32(nb * t * nh * d);
    let keep = keeps_weights(spec);
    let mut lse = take_f32(nb * nh * t * if keep { 1 + sl } else { 1 });
    let (out_p, lse_p) = (SendPtr(out.as_mut_ptr()), SendPtr(lse.as_mut_ptr()));
    par_for(nb * nh, |task| {
        let (b, h) = (task / nh, task % nh);
        // Scratch from the pool (every element is written before it is read).
        let (mut s, mut p) = (take_f32(t * sl), take_f32(t * sl));
        scores(x, spec, b, h, &mut s);
        for i in 0..t {
            let (srow, prow) = (&s[i * sl..(i + 1) * sl], &mut p[i * sl..(i + 1) * sl]);
            let m = crate::softmax::row_max(srow);
            let sum = exp_row(srow, m, prow);
            let l = if m == f32::NEG_INFINITY { m } else { m + sum.ln() };
            if sum > 0.0 {
                let inv = 1.0 / sum;
                prow.iter_mut().for_each(|v| *v *= inv);
            }
            if keep {
                // SAFETY: head (b, h)'s weights (after the log-sum-exp block) are this task's.
                let at = nb * nh * t + ((b * nh + h) * t + i) * sl;
                unsafe { std::ptr::copy_nonoverlapping(prow.as_ptr(), lse_p.get().add(at), sl) };
            }
            drop_row(spec, b, h, i, prow);
            // SAFETY: row (b, h, i) of the log-sum-exp belongs to this task.
            unsafe { *lse_p.get().add((b * nh + h) * t + i) = l };
        }
        let mut o = take_f32(t * d);
        gemm_serial(t, sl, d, MatRef::row_major(&p, sl), head(x.v, &x.v_at, b, h), &mut o, d, false);
        // SAFETY: `out` is (B, T, heads, d); head (b, h) is this task's.
        unsafe { scatter_head(&o, out_p, spec, t, b, h) };
        [s, p, o].into_iter().for_each(recycle_f32);
    });
    (out, lse)
}

/// Backward pass: from the forward's inputs, output `out` and `lse`, and the
/// output's gradient `g` (both `(B, T, heads, d)` contiguous), the gradients
/// of `q` (`T` positions), `k` and `v` (`S`), contiguous in the order
/// `orders` gives for each (`[q, k, v]`).
///
/// Per head, with `P` recomputed from the scores and `lse`:
/// `dV = Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P ∘ (dP − rowsum(dO ∘ O))`,
/// `dQ = scale·dS·K`, `dK = scale·dSᵀ·Q`.
pub fn attention_backward(
    x: &Operands,
    spec: &AttentionSpec,
    out: &[f32],
    lse: &[f32],
    g: &[f32],
    orders: [HeadOrder; 3],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    check(x, spec);
    let (nb, nh, t, sl, d) = (spec.batch, spec.heads, spec.q_len, spec.kv_len, spec.head_dim);
    assert!(out.len() == nb * t * nh * d && g.len() == out.len(), "attention_backward: output/gradient length");
    // The statistics: the log-sum-exp, and the weights when the forward kept them.
    let kept = lse.len() == nb * nh * t * (1 + sl) && sl > 0;
    assert!(kept || lse.len() == nb * nh * t, "attention_backward: statistics length");
    // Every element is written: each task writes all rows of its head.
    let mut dq = take_f32(nb * t * nh * d);
    let mut dk = take_f32(nb * sl * nh * d);
    let mut dv = take_f32(nb * sl * nh * d);
    let ptrs = (SendPtr(dq.as_mut_ptr()), SendPtr(dk.as_mut_ptr()), SendPtr(dv.as_mut_ptr()));
    let out_at = HeadLayout { offset: 0, batch: t * nh * d, head: d, row: nh * d };
    par_for(nb * nh, |task| {
        let (b, h) = (task / nh, task % nh);
        let (go, o) = (head(g, &out_at, b, h), head(out, &out_at, b, h));
        // Scratch (every element is written before it is read).
        let mut s = take_f32(t * sl);
        let kept_at = nb * nh * t + (b * nh + h) * t * sl;
        // P: the kept weights read in place, or (with dropout, which changes
        // them for dV) a copy; else recomputed from the scores, exp(s − lse).
        let mut p_own = Vec::new();
        if !kept || spec.dropout.is_some() {
            p_own = take_f32(t * sl);
            if kept {
                p_own.copy_from_slice(&lse[kept_at..kept_at + t * sl]);
            } else {
                scores(x, spec, b, h, &mut s);
                for i in 0..t {
                    let l = lse[(b * nh + h) * t + i];
                    exp_row(&s[i * sl..(i + 1) * sl], l, &mut p_own[i * sl..(i + 1) * sl]);
                }
            }
        }
        // dP = dO·Vᵀ into `s` (the scores are no longer needed).
        gemm_serial(t, d, sl, go, head(x.v, &x.v_at, b, h).t(), &mut s, sl, false);
        // With dropout the gradient of the weights before it is dP'·factor;
        // rowsum(dO∘O) = Σ P·dP either way.
        let p: &[f32] = if p_own.is_empty() { &lse[kept_at..kept_at + t * sl] } else { &p_own };
        for i in 0..t {
            let (gr, or) = (&g[go.offset + i * go.rs..][..d], &out[o.offset + i * o.rs..][..d]);
            let di: f32 = gr.iter().zip(or).map(|(a, b)| a * b).sum();
            let row = &mut s[i * sl..(i + 1) * sl];
            drop_row(spec, b, h, i, row);
            for (ds, &pv) in row.iter_mut().zip(&p[i * sl..(i + 1) * sl]) {
                *ds = pv * (*ds - di) * spec.scale;
            }
        }
        let ds = MatRef::row_major(&s, sl); // (T, S), scale folded in
        let mut buf = take_f32(t.max(sl) * d);
        // dV = P'ᵀ·dO with the dropped weights P' (P itself when no dropout).
        if spec.dropout.is_some() {
            for (i, row) in p_own.chunks_exact_mut(sl).enumerate() {
                drop_row(spec, b, h, i, row);
            }
        }
        let p: &[f32] = if p_own.is_empty() { &lse[kept_at..kept_at + t * sl] } else { &p_own };
        let pt = MatRef::row_major(p, sl).t();
        // SAFETY (all three): head (b, h) of each gradient is this task's.
        unsafe {
            write_head(ptrs.2, orders[2], spec, sl, b, h, &mut buf, |c| gemm_serial(sl, t, d, pt, go, c, d, false));
            let k = head(x.k, &x.k_at, b, h);
            write_head(ptrs.0, orders[0], spec, t, b, h, &mut buf, |c| gemm_serial(t, sl, d, ds, k, c, d, false));
            let q = head(x.q, &x.q_at, b, h);
            write_head(ptrs.1, orders[1], spec, sl, b, h, &mut buf, |c| gemm_serial(sl, t, d, ds.t(), q, c, d, false));
        }
        [s, p_own, buf].into_iter().for_each(recycle_f32);
    });
    (dq, dk, dv)
}

/// The definition, slowly (f64, every score materialized): the output
/// `(B, T, heads, d)`, for tests.
pub fn attention_reference(x: &Operands, spec: &AttentionSpec) -> Vec<f32> {
    let (nb, nh, t, sl, d) = (spec.batch, spec.heads, spec.q_len, spec.kv_len, spec.head_dim);
    let mut out = vec![0.0f32; nb * t * nh * d];
    let at = |data: &[f32], l: &HeadLayout, b, h, i, c| data[base(l, b, h) + i * l.row + c] as f64;
    for b in 0..nb {
        for h in 0..nh {
            for i in 0..t {
                let sc: Vec<f64> = (0..sl)
                    .map(|j| {
                        let masked = j >= visible(spec, i) || x.key_padding.is_some_and(|p| p[b * sl + j] != 0.0);
                        if masked {
                            f64::NEG_INFINITY
                        } else {
                            (0..d).map(|c| at(x.q, &x.q_at, b, h, i, c) * at(x.k, &x.k_at, b, h, j, c)).sum::<f64>()
                                * spec.scale as f64
                                + x.attn_mask.map_or(0.0, |m| m[i * sl + j] as f64)
                        }
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    continue;
                }
                let e: Vec<f64> = sc.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d {
                    let v: f64 = (0..sl).map(|j| e[j] / z * at(x.v, &x.v_at, b, h, j, c)).sum();
                    out[((b * t + i) * nh + h) * d + c] = v as f32;
                }
            }
        }
    }
    out
}

/// Rotary position embedding of adjacent pairs: `x` `(B, T, H, D)`
/// contiguous, `cos` and `sin` `(T, D/2)`; pair `i` of each head turns by
/// its angle: `(x₀c − x₁s, x₀s + x₁c)`. The same roundings as that formula
/// written as separate multiplies and adds.
///
/// # Panics
/// When a slice is shorter than its shape or `D` is odd.
pub fn rope_pairs(x: &[f32], [b, t, h, d]: [usize; 4], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    assert!(d % 2 == 0, "rope_pairs: odd head dim {d}");
    let half = d / 2;
    assert!(
        x.len() >= b * t * h * d && out.len() >= b * t * h * d && cos.len() >= t * half && sin.len() >= t * half,
        "rope_pairs: slices too short for ({b}, {t}, {h}, {d})"
    );
    for (row, (xr, yr)) in x.chunks_exact(d.max(1)).zip(out.chunks_exact_mut(d.max(1))).take(b * t * h).enumerate() {
        let p = row / h % t;
        let (c, s) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
        for i in 0..half {
            let (x0, x1) = (xr[2 * i], xr[2 * i + 1]);
            yr[2 * i] = x0 * c[i] - x1 * s[i];
            yr[2 * i + 1] = x0 * s[i] + x1 * c[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_data::uniform as fill;

    /// A fused `(B, L, 3E)` projection's q/k/v thirds, or separate
    /// contiguous `(B, heads, L, d)` tensors.
    fn layouts(fused: bool, nh: usize, l: usize, d: usize) -> [HeadLayout; 3] {
        let e = nh * d;
        if fused {
            [0, 1, 2].map(|i| HeadLayout { offset: i * e, batch: l * 3 * e, head: d, row: 3 * e })
        } else {
            [HeadLayout { offset: 0, batch: nh * l * d, head: l * d, row: d }; 3]
        }
    }

    #[test]
    fn forward_matches_the_definition_on_awkward_shapes() {
        // (B, heads, T, S, d, causal offset, padding, fused layout)
        let cases = [
            (1, 1, 1, 1, 1, None, false, false),
            (2, 3, 5, 5, 4, Some(0), false, true),
            (2, 2, 3, 7, 5, Some(4), false, false),
            (3, 2, 6, 9, 3, None, true, false),
            (2, 4, 17, 17, 16, Some(0), true, true),
            (1, 2, 1, 13, 8, Some(12), false, false),
        ];
        for (nb, nh, t, sl, d, causal, padded, fused) in cases {
            let (q, k, v);
            let [q_at, k_at, v_at];
            if fused {
                assert_eq!(t, sl);
                q = fill(nb * t * 3 * nh * d, 1);
                (k, v) = (q.clone(), q.clone());
                [q_at, k_at, v_at] = layouts(true, nh, t, d);
            } else {
                q = fill(nb * nh * t * d, 2);
                k = fill(nb * nh * sl * d, 3);
                v = fill(nb * nh * sl * d, 4);
                q_at = layouts(false, nh, t, d)[0];
                k_at = layouts(false, nh, sl, d)[0];
                v_at = k_at;
            }
            // Pad the last key of every other batch entry (never all keys).
            let pad: Vec<f32> =
                (0..nb * sl).map(|i| (padded && i % sl == sl - 1 && (i / sl).is_multiple_of(2)) as u8 as f32).collect();
            // A finite additive mask on the unpadded cases.
            let mask: Vec<f32> = (0..t * sl).map(|i| ((i * 7 + (i % sl) * 3) % 5) as f32 * -0.4).collect();
            let x = Operands {
                q: &q,
                q_at,
                k: &k,
                k_at,
                v: &v,
                v_at,
                key_padding: padded.then_some(&pad[..]),
                attn_mask: (!padded).then_some(&mask[..]),
            };
            let spec = AttentionSpec {
                batch: nb,
                heads: nh,
                q_len: t,
                kv_len: sl,
                head_dim: d,
                scale: 0.7,
                causal,
                dropout: None,
            };
            let (out, lse) = attention(&x, &spec);
            let want = attention_reference(&x, &spec);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                assert!((a - b).abs() < 1e-5, "case {nb}x{nh}x{t}x{sl}x{d}: out[{i}] {a} vs {b}");
            }
            assert!(lse.iter().all(|l| l.is_finite()));
        }
    }

    #[test]
    fn dropout_keeps_the_expected_share_and_is_reproducible() {
        let kept = (0..100_000u64).filter(|&i| dropout_factor(Some((0.25, 7)), i) > 0.0).count();
        assert!((kept as f64 / 1e5 - 0.75).abs() < 0.01, "kept {kept} of 100000 at p = 0.25");
        assert_eq!(dropout_factor(Some((0.25, 7)), 12_345), dropout_factor(Some((0.25, 7)), 12_345));
        let other_seed =
            (0..1000u64).filter(|&i| dropout_factor(Some((0.5, 7)), i) != dropout_factor(Some((0.5, 8)), i));
        assert!(other_seed.count() > 300, "another seed gives another mask");
        assert_eq!(dropout_factor(Some((0.2, 1)), 3).max(1.25), 1.25);
    }

    #[test]
    fn a_query_that_sees_no_key_gets_zeros() {
        let (q, k, v) = (fill(4, 1), fill(4, 2), fill(4, 3));
        let at = HeadLayout { offset: 0, batch: 4, head: 4, row: 2 };
        let pad = [1.0, 1.0];
        let x =
            Operands { q: &q, q_at: at, k: &k, k_at: at, v: &v, v_at: at, key_padding: Some(&pad), attn_mask: None };
        let spec = AttentionSpec {
            batch: 1,
            heads: 1,
            q_len: 2,
            kv_len: 2,
            head_dim: 2,
            scale: 1.0,
            causal: None,
            dropout: None,
        };
        let (out, lse) = attention(&x, &spec);
        assert_eq!(out, vec![0.0; 4]);
        // The log-sum-exp block (then the kept weights, all zero).
        assert!(lse[..2].iter().all(|l| *l == f32::NEG_INFINITY));
        assert!(lse[2..].iter().all(|p| *p == 0.0));
        for stats in [&lse[..], &lse[..2]] {
            let (dq, dk, dv) = attention_backward(&x, &spec, &out, stats, &[1.0; 4], Default::default());
            assert!(dq.iter().chain(&dk).chain(&dv).all(|g| *g == 0.0));
        }
    }

    /// The backward pass against central differences of the forward pass
    /// (in f32, so loose) on a causal, padded, fused-layout case, without and
    /// with dropout (the seed fixes the mask).
    #[test]
    fn backward_matches_finite_differences() {
        for dropout in [None, Some((0.3, 42))] {
            let (nb, nh, t, d) = (2, 2, 5, 3);
            let e = nh * d;
            let qkv = fill(nb * t * 3 * e, 7);
            let [q_at, k_at, v_at] = layouts(true, nh, t, d);
            let pad: Vec<f32> = (0..nb * t).map(|i| (i == 3) as u8 as f32).collect();
            let spec = AttentionSpec {
                batch: nb,
                heads: nh,
                q_len: t,
                kv_len: t,
                head_dim: d,
                scale: 0.6,
                causal: Some(0),
                dropout,
            };
            let gout = fill(nb * t * e, 9);
            let mask: Vec<f32> = (0..t * t).map(|i| (i % 3) as f32 * -0.5).collect();
            let loss = |buf: &[f32]| -> f64 {
                let x = Operands {
                    q: buf,
                    q_at,
                    k: buf,
                    k_at,
                    v: buf,
                    v_at,
                    key_padding: Some(&pad),
                    attn_mask: Some(&mask),
                };
                attention(&x, &spec).0.iter().zip(&gout).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
            };
            let x = Operands {
                q: &qkv,
                q_at,
                k: &qkv,
                k_at,
                v: &qkv,
                v_at,
                key_padding: Some(&pad),
                attn_mask: Some(&mask),
            };
            let (out, stats) = attention(&x, &spec);
            assert!(keeps_weights(&spec) && stats.len() == nb * nh * t * (1 + t), "small heads keep their weights");
            let (dq, dk, dv) = attention_backward(&x, &spec, &out, &stats, &gout, Default::default());
            // With the log-sum-exp alone the backward recomputes the weights: the same gradients.
            let recomputed = attention_backward(&x, &spec, &out, &stats[..nb * nh * t], &gout, Default::default());
            for (kept, again) in [(&dq, &recomputed.0), (&dk, &recomputed.1), (&dv, &recomputed.2)] {
                for (a, b) in kept.iter().zip(again.iter()) {
                    assert!((a - b).abs() <= 1e-6 * (1.0 + a.abs()), "kept {a} vs recomputed {b}");
                }
            }
            // Heads-major gradients are the same numbers in (B, heads, T, d) order.
            let heads = attention_backward(&x, &spec, &out, &stats, &gout, [HeadOrder::HeadsMajor; 3]);
            for (pm, hm) in [(&dq, &heads.0), (&dk, &heads.1), (&dv, &heads.2)] {
                for (at, g) in pm.iter().enumerate() {
                    let (c, hh, i, bi) = (at % d, at / d % nh, at / (d * nh) % t, at / (d * nh * t));
                    assert_eq!(*g, hm[((bi * nh + hh) * t + i) * d + c], "heads-major gradient at {at}");
                }
            }
            // Gather the analytic gradient back into the fused (B, T, 3E) layout.
            let mut grad = vec![0.0f32; qkv.len()];
            for b in 0..nb {
                for i in 0..t {
                    for c in 0..e {
                        let at = (b * t + i) * e + c;
                        grad[(b * t + i) * 3 * e + c] = dq[at];
                        grad[(b * t + i) * 3 * e + e + c] = dk[at];
                        grad[(b * t + i) * 3 * e + 2 * e + c] = dv[at];
                    }
                }
            }
            let h = 1e-2f32;
            for idx in 0..qkv.len() {
                let (mut up, mut dn) = (qkv.clone(), qkv.clone());
                up[idx] += h;
                dn[idx] -= h;
                let num = (loss(&up) - loss(&dn)) / (2.0 * h as f64);
                assert!((num - grad[idx] as f64).abs() < 2e-3, "grad[{idx}]: numeric {num} vs analytic {}", grad[idx]);
            }
        }
    }
}
