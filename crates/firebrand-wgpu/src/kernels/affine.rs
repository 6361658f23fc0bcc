//! The per-channel epilogues, fused: the convolution's `act(transpose(yt) +
//! bias)` and `channel_affine`'s `act(x·scale[c] + shift[c])` over `(N, C,
//! L)`, their input gradients, and the per-channel sums of their backward.
//! Params `[n_threads, N, C, L, has_a, has_b]`; an absent vector is bound to
//! another buffer and not read. In a backward, `act`'s derivative is read
//! off the output `y` (ReLU, hardtanh).

use super::{binds, derivative_expr, elementwise, rows_kernel, unary_expr};
use firebrand_tensor::op::UnaryOp;

fn act_expr(act: Option<UnaryOp>) -> String {
    act.map_or("x".into(), unary_expr)
}

/// Statements giving `d = g · act'(y)` from locals `gv` and `yv` (the
/// derivative's expression evaluated with its input and output both `y`).
fn masked(act: Option<UnaryOp>) -> String {
    match act {
        // A zero derivative gives +0 (as the CPU's mask), not g·0 = −0 for a negative g.
        Some(op) => format!(
            "var d = gv;\n  {{ let x = yv; let y = yv; let k = {}; d = select(gv * k, 0.0, k == 0.0); }}",
            derivative_expr(op)
        ),
        None => "let d = gv;".into(),
    }
}

const SIZES: &str = "  let N = p[1]; let C = p[2]; let L = p[3];\n";

/// `out[n, c, l] = act(yt[(n·L + l)·C + c] + bias[c])`.
pub(crate) fn bias_act_to_nchw(act: Option<UnaryOp>) -> String {
    elementwise(
        &binds(&[
            ("yt", "read", "array<f32>"),
            ("bias", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        &format!(
            "{SIZES}  let ll = i % L; let cc = (i / L) % C; let nn = i / (L * C);\n  \
             let x = yt[(nn * L + ll) * C + cc] + select(0.0, bias[cc], p[5] != 0u);\n  out[i] = {};",
            act_expr(act)
        ),
    )
}

/// The gradient of `yt`, `(N·L, C)`: `g · act'(y)` read at `(n, c, l)`.
pub(crate) fn bias_act_to_nchw_backward(act: Option<UnaryOp>) -> String {
    elementwise(
        &binds(&[
            ("gs", "read", "array<f32>"),
            ("ys", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        &format!(
            "{SIZES}  let cc = i % C; let row = i / C; let nn = row / L; let ll = row % L;\n  \
             let k = (nn * C + cc) * L + ll;\n  let gv = gs[k]; let yv = ys[k];\n  {}\n  out[i] = d;",
            masked(act)
        ),
    )
}

/// `act(x·scale[c] + shift[c])` over `(N, C, L)`.
pub(crate) fn channel_affine(act: Option<UnaryOp>) -> String {
    elementwise(
        &binds(&[
            ("xs", "read", "array<f32>"),
            ("sc", "read", "array<f32>"),
            ("sh", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        &format!(
            "{SIZES}  let cc = (i / L) % C;\n  \
             let x = xs[i] * select(1.0, sc[cc], p[4] != 0u) + select(0.0, sh[cc], p[5] != 0u);\n  out[i] = {};",
            act_expr(act)
        ),
    )
}

/// The input's gradient of [`channel_affine`]: `g · act'(y) · scale[c]`.
pub(crate) fn channel_affine_backward(act: Option<UnaryOp>) -> String {
    elementwise(
        &binds(&[
            ("gs", "read", "array<f32>"),
            ("ys", "read", "array<f32>"),
            ("sc", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        &format!(
            "{SIZES}  let cc = (i / L) % C;\n  let gv = gs[i]; let yv = ys[i];\n  {}\n  \
             out[i] = d * select(1.0, sc[cc], p[4] != 0u);",
            masked(act)
        ),
    )
}

/// Per channel `c` (one workgroup each): `[Σ d·x | Σ d]` `(2, C)` over
/// `(n, l)` with `d = g · act'(y)` (`x` bound to `g` when only `Σ d` is needed).
pub(crate) fn channel_sums(act: Option<UnaryOp>) -> String {
    rows_kernel(
        &binds(&[
            ("gs", "read", "array<f32>"),
            ("ys", "read", "array<f32>"),
            ("xs", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        &format!(
            r#"  let N = p[1]; let C = p[2]; let L = p[3];
  var sx = 0.0; var s = 0.0;
  for (var e = lid.x; e < N * L; e = e + 256u) {{
    let k = ((e / L) * C + row) * L + e % L;
    let gv = gs[k]; let yv = ys[k];
    {}
    s = s + d;
    sx = sx + d * xs[k];
  }}
  let tx = reduce_sum(sx, lid.x);
  let t = reduce_sum(s, lid.x);
  if (lid.x == 0u) {{ out[row] = tx; out[C + row] = t; }}"#,
            masked(act)
        ),
    )
}

/// Training-mode batch statistics per channel (one workgroup each, two
/// passes): `[mean | biased variance]` `(2, C)`; params `[C, N, C, L]`.
pub(crate) fn batch_norm_stats() -> String {
    rows_kernel(
        &binds(&[("xs", "read", "array<f32>"), ("out", "read_write", "array<f32>"), ("p", "read", "array<u32>")]),
        r#"  let N = p[1]; let C = p[2]; let L = p[3];
  let m = f32(N * L);
  var s = 0.0;
  for (var e = lid.x; e < N * L; e = e + 256u) { s = s + xs[((e / L) * C + row) * L + e % L]; }
  let mean = reduce_sum(s, lid.x) / m;
  var q = 0.0;
  for (var e = lid.x; e < N * L; e = e + 256u) { let d = xs[((e / L) * C + row) * L + e % L] - mean; q = q + d * d; }
  let var_ = reduce_sum(q, lid.x) / m;
  if (lid.x == 0u) { out[row] = mean; out[C + row] = var_; }"#,
    )
}

/// The affine gradients of training-mode batch norm per channel:
/// `[dγ | dβ]` `(2, C)` = `[invstd·Σ d·(x − mean) | Σ d]`, `d = g·act'(y)`;
/// `stats` = `[mean | invstd]`; params `[C, N, C, L]`.
pub(crate) fn batch_norm_affine_backward(act: Option<UnaryOp>) -> String {
    rows_kernel(
        &binds(&[
            ("gs", "read", "array<f32>"),
            ("ys", "read", "array<f32>"),
            ("xs", "read", "array<f32>"),
            ("stats", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        &format!(
            r#"  let N = p[1]; let C = p[2]; let L = p[3];
  let mean = stats[row];
  var sx = 0.0; var s = 0.0;
  for (var e = lid.x; e < N * L; e = e + 256u) {{
    let k = ((e / L) * C + row) * L + e % L;
    let gv = gs[k]; let yv = ys[k];
    {}
    s = s + d;
    sx = sx + d * (xs[k] - mean);
  }}
  let tx = reduce_sum(sx, lid.x);
  let t = reduce_sum(s, lid.x);
  if (lid.x == 0u) {{ out[row] = stats[C + row] * tx; out[C + row] = t; }}"#,
            masked(act)
        ),
    )
}

/// The input's gradient of training-mode batch norm from the affine
/// gradients `[dγ | dβ]`: `a·d + b·(x − mean) + c` with `a = γ·invstd`,
/// `b = −a·invstd·dγ/M`, `c = −a·dβ/M`; params `[n, N, C, L, has_w]`.
pub(crate) fn batch_norm_backward(act: Option<UnaryOp>) -> String {
    elementwise(
        &binds(&[
            ("gs", "read", "array<f32>"),
            ("ys", "read", "array<f32>"),
            ("xs", "read", "array<f32>"),
            ("stats", "read", "array<f32>"),
            ("w", "read", "array<f32>"),
            ("daff", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        &format!(
            "{SIZES}  let cc = (i / L) % C; let m = f32(N * L);\n  let gv = gs[i]; let yv = ys[i];\n  {}\n  \
             let r = stats[C + cc];\n  let a = select(1.0, w[cc], p[4] != 0u) * r;\n  \
             out[i] = a * d - a * r * daff[cc] / m * (xs[i] - stats[cc]) - a * daff[C + cc] / m;",
            masked(act)
        ),
    )
}
