//! Layer normalization, fused: one workgroup per row for the output and the
//! input's gradient, one thread per column for the affine gradients. Params
//! `[rows, cols, has_weight, has_bias, eps bits]`; a missing weight or bias
//! is bound to another buffer and not read.

use super::{binds, rows_kernel};

/// `y = (x − mean)·rstd·w + b` per row, and the rows' `[mean | rstd]` `(2, rows)`.
pub(crate) fn layer_norm() -> String {
    rows_kernel(
        &binds(&[
            ("xs", "read", "array<f32>"),
            ("w", "read", "array<f32>"),
            ("b", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("stats", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        r#"  let eps = bitcast<f32>(p[4]);
  var s = 0.0;
  for (var c = lid.x; c < cols; c = c + 256u) { s = s + xs[base + c]; }
  let mean = reduce_sum(s, lid.x) / f32(cols);
  var q = 0.0;
  for (var c = lid.x; c < cols; c = c + 256u) { let d = xs[base + c] - mean; q = q + d * d; }
  let rstd = 1.0 / sqrt(reduce_sum(q, lid.x) / f32(cols) + eps);
  for (var c = lid.x; c < cols; c = c + 256u) {
    var y = (xs[base + c] - mean) * rstd;
    if (p[2] != 0u) { y = y * w[c]; }
    if (p[3] != 0u) { y = y + b[c]; }
    out[base + c] = y;
  }
  if (lid.x == 0u) { stats[row] = mean; stats[p[0] + row] = rstd; }"#,
    )
}

/// The input's gradient per row: `rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))` with
/// `ĝ = g·w` and `x̂ = (x − mean)·rstd`.
pub(crate) fn layer_norm_backward() -> String {
    rows_kernel(
        &binds(&[
            ("xs", "read", "array<f32>"),
            ("w", "read", "array<f32>"),
            ("stats", "read", "array<f32>"),
            ("gs", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        r#"  let mean = stats[row]; let rstd = stats[p[0] + row];
  var sg = 0.0; var sgx = 0.0;
  for (var c = lid.x; c < cols; c = c + 256u) {
    let gh = gs[base + c] * select(1.0, w[c], p[2] != 0u);
    sg = sg + gh;
    sgx = sgx + gh * (xs[base + c] - mean) * rstd;
  }
  let mg = reduce_sum(sg, lid.x) / f32(cols);
  let mgx = reduce_sum(sgx, lid.x) / f32(cols);
  for (var c = lid.x; c < cols; c = c + 256u) {
    let gh = gs[base + c] * select(1.0, w[c], p[2] != 0u);
    let xh = (xs[base + c] - mean) * rstd;
    out[base + c] = rstd * (gh - mg - xh * mgx);
  }"#,
    )
}

/// `[dweight | dbias]` `(2, cols)`: column `c` sums `g·x̂` and `g` over the
/// rows (params `[rows, cols]`, one thread per column).
pub(crate) fn layer_norm_affine_backward() -> String {
    super::elementwise_n(
        &binds(&[
            ("xs", "read", "array<f32>"),
            ("stats", "read", "array<f32>"),
            ("gs", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        "p[1]",
        r#"  let rows = p[0]; let cols = p[1];
  var dw = 0.0; var db = 0.0;
  for (var r = 0u; r < rows; r = r + 1u) {
    let g = gs[r * cols + i];
    dw = dw + g * (xs[r * cols + i] - stats[r]) * stats[rows + r];
    db = db + g;
  }
  out[i] = dw; out[cols + i] = db;"#,
    )
}
