//! The LSTM cell's elementwise math, fused: one pass per step forward and one
//! backward instead of a dozen elementwise ops each.

use crate::parallel::{PAR_MIN_ELEMS, num_threads, par_chunks_mut};
use crate::unary::map_slice;
use firebrand_tensor::op::UnaryOp;
use firebrand_tensor::pool::take_f32;

/// Runs `f(row, out_row)` over rows of `width`, in parallel when large.
fn rows(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let n = out.len() / width.max(1);
    if out.len() >= PAR_MIN_ELEMS && num_threads() > 1 && n > 1 {
        let per = n.div_ceil(4 * num_threads());
        par_chunks_mut(out, per * width, |t, chunk| {
            chunk.chunks_mut(width).enumerate().for_each(|(i, r)| f(t * per + i, r));
        });
    } else {
        out.chunks_mut(width).enumerate().for_each(|(i, r)| f(i, r));
    }
}

/// One LSTM step from pre-activation gates `(B, 4H)` (order `i, f, g, o`)
/// and the previous cell state `(B, H)`. Returns, row-major per example, the
/// activations `(B, 4H)` (`σ(i), σ(f), tanh(g), σ(o)`) followed by the new
/// cell state and hidden state, `(B, 6H)` in all: `[acts | c | h]`.
pub fn lstm_cell(gates: &[f32], c_prev: &[f32], b: usize, h: usize) -> Vec<f32> {
    assert!(gates.len() == b * 4 * h && c_prev.len() == b * h, "lstm_cell: lengths");
    let mut out = take_f32(b * 6 * h);
    rows(&mut out, 6 * h, |r, row| {
        let g = &gates[r * 4 * h..(r + 1) * 4 * h];
        let (acts, rest) = row.split_at_mut(4 * h);
        map_slice(UnaryOp::Sigmoid, &g[..2 * h], &mut acts[..2 * h]);
        map_slice(UnaryOp::Tanh, &g[2 * h..3 * h], &mut acts[2 * h..3 * h]);
        map_slice(UnaryOp::Sigmoid, &g[3 * h..], &mut acts[3 * h..]);
        let (c, hn) = rest.split_at_mut(h);
        let cp = &c_prev[r * h..(r + 1) * h];
        for j in 0..h {
            c[j] = acts[h + j] * cp[j] + acts[j] * acts[2 * h + j];
        }
        map_slice(UnaryOp::Tanh, c, hn);
        for j in 0..h {
            hn[j] *= acts[3 * h + j];
        }
    });
    out
}

/// Backward of [`lstm_cell`]: from the step's `[acts | c | h]` `(B, 6H)`, the
/// previous cell state, and the gradients of `h` and `c` `(B, H)`, the
/// gradient of the pre-activation gates followed by that of `c_prev`:
/// `(B, 5H)` as `[dgates | dc_prev]`.
pub fn lstm_cell_backward(state: &[f32], c_prev: &[f32], dh: &[f32], dc: &[f32], b: usize, h: usize) -> Vec<f32> {
    assert!(
        state.len() == b * 6 * h && c_prev.len() == b * h && dh.len() == b * h && dc.len() == b * h,
        "lstm_cell_backward: lengths"
    );
    let mut out = take_f32(b * 5 * h);
    rows(&mut out, 5 * h, |r, row| {
        let s = &state[r * 6 * h..(r + 1) * 6 * h];
        let (acts, c) = (&s[..4 * h], &s[4 * h..5 * h]);
        let (cp, dhr, dcr) = (&c_prev[r * h..(r + 1) * h], &dh[r * h..(r + 1) * h], &dc[r * h..(r + 1) * h]);
        let (dg, dcp) = row.split_at_mut(4 * h);
        // tanh(c) into the dc_prev slot first (it is overwritten below).
        map_slice(UnaryOp::Tanh, c, dcp);
        for j in 0..h {
            let (i, f, g, o) = (acts[j], acts[h + j], acts[2 * h + j], acts[3 * h + j]);
            let tc = dcp[j];
            let dct = dcr[j] + dhr[j] * o * (1.0 - tc * tc);
            dg[j] = dct * g * i * (1.0 - i);
            dg[h + j] = dct * cp[j] * f * (1.0 - f);
            dg[2 * h + j] = dct * i * (1.0 - g * g);
            dg[3 * h + j] = dhr[j] * tc * o * (1.0 - o);
            dcp[j] = dct * f;
        }
    });
    out
}

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
        let out = lstm_cell(&gates, &cp, b, h);
        let dh: Vec<f32> = (0..b * h).map(|i| ((i * 5) % 9) as f32 * 0.1 - 0.4).collect();
        let dc: Vec<f32> = (0..b * h).map(|i| ((i * 3) % 8) as f32 * 0.1 - 0.3).collect();
        let back = lstm_cell_backward(&out, &cp, &dh, &dc, b, h);
        for r in 0..b {
            for j in 0..h {
                let gv = |k: usize| gates[r * 4 * h + k * h + j] as f64;
                let (i, f, g, o) = (sig(gv(0)), sig(gv(1)), gv(2).tanh(), sig(gv(3)));
                let c = f * cp[r * h + j] as f64 + i * g;
                let hn = o * c.tanh();
                let at = |k: usize| out[r * 6 * h + k] as f64;
                for (k, want) in [(j, i), (h + j, f), (2 * h + j, g), (3 * h + j, o), (4 * h + j, c), (5 * h + j, hn)] {
                    assert!((at(k) - want).abs() < 1e-6, "forward row {r} col {k}: {} vs {want}", at(k));
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
                    assert!((got - w).abs() < 1e-6, "dgates row {r} gate {k} col {j}: {got} vs {w}");
                }
                assert!((back[r * 5 * h + 4 * h + j] as f64 - dct * f).abs() < 1e-6);
            }
        }
    }
}
