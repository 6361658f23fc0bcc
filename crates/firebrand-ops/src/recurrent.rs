//! The LSTM cell's elementwise math, fused: one pass per step forward and one
//! backward instead of a dozen elementwise ops each.

use crate::conv::for_planes as rows; // per row, in parallel when large
use crate::elem::simd_fn;
use crate::unary::map_slice;
use firebrand_tensor::backend::Rows;
use firebrand_tensor::op::UnaryOp;
use firebrand_tensor::pool::take_f32;

/// One LSTM step. The pre-activation gates are `xw + hw` (`(B, 4H)`, gates
/// `i, f, g, o`; `xw`'s rows at `xw_at`), `c_prev`'s rows at `c_at`. Returns,
/// per example, the activations (`σ(i), σ(f), tanh(g), σ(o)`) then the new
/// cell and hidden states: `(B, 6H)` as `[acts | c | h]`.
#[allow(clippy::too_many_arguments)]
pub fn lstm_cell(xw: &[f32], xw_at: Rows, hw: &[f32], c_prev: &[f32], c_at: Rows, b: usize, h: usize) -> Vec<f32> {
    assert!(hw.len() == b * 4 * h, "lstm_cell: hw length");
    assert!(b == 0 || xw_at.offset + (b - 1) * xw_at.stride + 4 * h <= xw.len(), "lstm_cell: xw too short");
    assert!(b == 0 || c_at.offset + (b - 1) * c_at.stride + h <= c_prev.len(), "lstm_cell: c_prev too short");
    let mut out = take_f32(b * 6 * h);
    rows(&mut out, 6 * h, |r, row| {
        let (acts, rest) = row.split_at_mut(4 * h);
        let x = &xw[xw_at.offset + r * xw_at.stride..][..4 * h];
        add_rows(acts, x, &hw[r * 4 * h..(r + 1) * 4 * h]);
        activate_in_place(acts, h);
        let (c, hn) = rest.split_at_mut(h);
        let cp = &c_prev[c_at.offset + r * c_at.stride..][..h];
        cell_state(c, acts, cp, h);
        map_slice(UnaryOp::Tanh, c, hn);
        mul_in_place(hn, &acts[3 * h..]);
    });
    out
}

simd_fn!(
    /// `out = x + y`.
    fn add_rows(out: &mut [f32], x: &[f32], y: &[f32]) {
        for ((o, a), b) in out.iter_mut().zip(x).zip(y) {
            *o = a + b;
        }
    }
);

simd_fn!(
    /// `c = σ(f)·c_prev + σ(i)·tanh(g)` from a row's activations `[i | f | g | o]`.
    fn cell_state(c: &mut [f32], acts: &[f32], cp: &[f32], h: usize) {
        let (i, rest) = acts[..4 * h].split_at(h);
        let (f, rest) = rest.split_at(h);
        let g = &rest[..h];
        for j in 0..h {
            c[j] = f[j] * cp[j] + i[j] * g[j];
        }
    }
);

simd_fn!(
    /// `out *= y` over `out`'s length.
    fn mul_in_place(out: &mut [f32], y: &[f32]) {
        for (o, v) in out.iter_mut().zip(y) {
            *o *= v;
        }
    }
);

/// σ on the i, f, o blocks and tanh on the g block of a `4H` row, in place.
fn activate_in_place(acts: &mut [f32], h: usize) {
    let mut buf = [0.0f32; 256];
    for (lo, hi, op) in [(0, 2 * h, UnaryOp::Sigmoid), (2 * h, 3 * h, UnaryOp::Tanh), (3 * h, 4 * h, UnaryOp::Sigmoid)]
    {
        for start in (lo..hi).step_by(256) {
            let end = (start + 256).min(hi);
            let n = end - start;
            buf[..n].copy_from_slice(&acts[start..end]);
            map_slice(op, &buf[..n], &mut acts[start..end]);
        }
    }
}

/// Backward of [`lstm_cell`]: from the step's `[acts | c | h]` `(B, 6H)`,
/// `c_prev` (rows at `c_at`), the gradients of the step's outputs
/// `g_out = [dc | dh]` (rows at `g_at`) and those from the next step,
/// `dh_next` `(B, H)` and `dc_next` (rows at `dc_at`): the gradient of the
/// pre-activation gates and of `c_prev`, `(B, 5H)` as `[dgates | dc_prev]`.
#[allow(clippy::too_many_arguments)]
pub fn lstm_cell_backward(
    state: &[f32],
    c_prev: &[f32],
    c_at: Rows,
    g_out: &[f32],
    g_at: Rows,
    dh_next: &[f32],
    dc_next: &[f32],
    dc_at: Rows,
    b: usize,
    h: usize,
) -> Vec<f32> {
    assert!(state.len() == b * 6 * h && dh_next.len() == b * h, "lstm_cell_backward: lengths");
    let fits = |v: &[f32], at: Rows, w: usize| b == 0 || at.offset + (b - 1) * at.stride + w <= v.len();
    assert!(fits(c_prev, c_at, h) && fits(g_out, g_at, 2 * h) && fits(dc_next, dc_at, h), "lstm_cell_backward: views");
    let mut out = take_f32(b * 5 * h);
    rows(&mut out, 5 * h, |r, row| {
        let s = &state[r * 6 * h..(r + 1) * 6 * h];
        let (acts, c) = (&s[..4 * h], &s[4 * h..5 * h]);
        let cp = &c_prev[c_at.offset + r * c_at.stride..][..h];
        let g = &g_out[g_at.offset + r * g_at.stride..][..2 * h];
        let dcn = &dc_next[dc_at.offset + r * dc_at.stride..][..h];
        let dhn = &dh_next[r * h..(r + 1) * h];
        let (dg, dcp) = row.split_at_mut(4 * h);
        // tanh(c) into the dc_prev slot first (it is overwritten below).
        map_slice(UnaryOp::Tanh, c, dcp);
        cell_backward_row(dg, dcp, acts, cp, g, dhn, dcn, h);
    });
    out
}

simd_fn!(
    /// One row of [`lstm_cell_backward`]: `dcp` holds `tanh(c)` on entry and
    /// `dc_prev` on return; `g = [dc | dh]` of the step's outputs.
    fn cell_backward_row(
        dg: &mut [f32],
        dcp: &mut [f32],
        acts: &[f32],
        cp: &[f32],
        g: &[f32],
        dhn: &[f32],
        dcn: &[f32],
        h: usize,
    ) {
        let (ai, rest) = acts[..4 * h].split_at(h);
        let (af, rest) = rest.split_at(h);
        let (ag, ao) = rest.split_at(h);
        let (gc, gh) = g[..2 * h].split_at(h);
        let (di, rest) = dg[..4 * h].split_at_mut(h);
        let (df, rest) = rest.split_at_mut(h);
        let (dgg, do_) = rest.split_at_mut(h);
        let (cp, dhn, dcn, dcp) = (&cp[..h], &dhn[..h], &dcn[..h], &mut dcp[..h]);
        for j in 0..h {
            let (i, f, gg, o) = (ai[j], af[j], ag[j], ao[j]);
            let tc = dcp[j];
            let dh = gh[j] + dhn[j];
            let dct = gc[j] + dcn[j] + dh * o * (1.0 - tc * tc);
            di[j] = dct * gg * i * (1.0 - i);
            df[j] = dct * cp[j] * f * (1.0 - f);
            dgg[j] = dct * i * (1.0 - gg * gg);
            do_[j] = dh * tc * o * (1.0 - o);
            dcp[j] = dct * f;
        }
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn cell_and_backward_match_the_definition() {
        let (b, h) = (3, 5);
        let gates: Vec<f32> = (0..b * 4 * h).map(|i| ((i * 37) % 23) as f32 * 0.2 - 2.0).collect();
        let cp: Vec<f32> = (0..b * h).map(|i| ((i * 11) % 7) as f32 * 0.3 - 1.0).collect();
        // gates = xw + hw, with xw a strided view (offset 3, row stride 4H + 2)
        // and c_prev one too (offset 1, row stride H + 1).
        let (xs, cs) = (4 * h + 2, h + 1);
        let mut xw = vec![9.0f32; 3 + b * xs];
        let hw: Vec<f32> = (0..b * 4 * h).map(|i| (i % 3) as f32 * 0.1).collect();
        let mut cpv = vec![9.0f32; 1 + b * cs];
        for r in 0..b {
            for k in 0..4 * h {
                xw[3 + r * xs + k] = gates[r * 4 * h + k] - hw[r * 4 * h + k];
            }
            cpv[1 + r * cs..1 + r * cs + h].copy_from_slice(&cp[r * h..(r + 1) * h]);
        }
        let out = lstm_cell(&xw, Rows { offset: 3, stride: xs }, &hw, &cpv, Rows { offset: 1, stride: cs }, b, h);
        // Incoming gradients split as g_out + next-step parts.
        let dh: Vec<f32> = (0..b * h).map(|i| ((i * 5) % 9) as f32 * 0.1 - 0.4).collect();
        let dc: Vec<f32> = (0..b * h).map(|i| ((i * 3) % 8) as f32 * 0.1 - 0.3).collect();
        let mut g_out = vec![0.0f32; b * 2 * h];
        let (dh_next, dc_next): (Vec<f32>, Vec<f32>) =
            (dh.iter().map(|v| v * 0.25).collect(), dc.iter().map(|v| v * 0.5).collect());
        for r in 0..b {
            for j in 0..h {
                g_out[r * 2 * h + j] = dc[r * h + j] - dc_next[r * h + j];
                g_out[r * 2 * h + h + j] = dh[r * h + j] - dh_next[r * h + j];
            }
        }
        let plain = |w: usize| Rows { offset: 0, stride: w };
        let back = lstm_cell_backward(&out, &cp, plain(h), &g_out, plain(2 * h), &dh_next, &dc_next, plain(h), b, h);
        for r in 0..b {
            for j in 0..h {
                let gv = |k: usize| gates[r * 4 * h + k * h + j] as f64;
                let (i, f, g, o) = (sig(gv(0)), sig(gv(1)), gv(2).tanh(), sig(gv(3)));
                let c = f * cp[r * h + j] as f64 + i * g;
                let hn = o * c.tanh();
                let at = |k: usize| out[r * 6 * h + k] as f64;
                for (k, want) in [(j, i), (h + j, f), (2 * h + j, g), (3 * h + j, o), (4 * h + j, c), (5 * h + j, hn)] {
                    assert!((at(k) - want).abs() < 2e-6, "forward row {r} col {k}: {} vs {want}", at(k));
                }
                let dct = dc[r * h + j] as f64 + dh[r * h + j] as f64 * o * (1.0 - c.tanh().powi(2));
                let want = [
                    dct * g * i * (1.0 - i),
                    dct * cp[r * h + j] as f64 * f * (1.0 - f),
                    dct * i * (1.0 - g * g),
                    dh[r * h + j] as f64 * c.tanh() * o * (1.0 - o),
                ];
                for (k, w) in want.iter().enumerate() {
                    let got = back[r * 5 * h + k * h + j] as f64;
                    assert!((got - w).abs() < 2e-6, "dgates row {r} gate {k} col {j}: {got} vs {w}");
                }
                assert!((back[r * 5 * h + 4 * h + j] as f64 - dct * f).abs() < 2e-6);
            }
        }
    }
}
