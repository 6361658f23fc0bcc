//! Sliding-window kernels on `(N, C, H, W)` planes: im2col and col2im, max
//! and average pooling and their backwards. Every one reads the window from
//! params `[n, N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw]`; the
//! backwards gather (one thread per input pixel, taps visited so that the
//! additions come in the CPU kernels' order) instead of scattering.

use super::{binds, elementwise};

/// The window's names, read from params.
const WINDOW: &str = r#"  let N = p[1]; let C = p[2]; let H = i32(p[3]); let W = i32(p[4]); let Ho = p[5]; let Wo = p[6];
  let kh = p[7]; let kw = p[8]; let sh = i32(p[9]); let sw = i32(p[10]); let ph = i32(p[11]); let pw = i32(p[12]);
  let dh = i32(p[13]); let dw = i32(p[14]);
"#;

/// Gathering the outputs whose window tap `(ki, kj)` lands on input pixel
/// `(y, x)`: `oy`/`ox` valid inside the loop body, taps in descending order
/// so that the outputs come in ascending order.
fn for_outputs_of_pixel(body: &str) -> String {
    format!(
        r#"  for (var ki = i32(kh) - 1; ki >= 0; ki = ki - 1) {{
    let ty = y + ph - ki * dh;
    if (ty < 0 || ty % sh != 0 || u32(ty / sh) >= Ho) {{ continue; }}
    let oy = u32(ty / sh);
    for (var kj = i32(kw) - 1; kj >= 0; kj = kj - 1) {{
      let tx = x + pw - kj * dw;
      if (tx < 0 || tx % sw != 0 || u32(tx / sw) >= Wo) {{ continue; }}
      let ox = u32(tx / sw);
{body}
    }}
  }}"#
    )
}

fn io_binds() -> String {
    binds(&[("xs", "read", "array<f32>"), ("out", "read_write", "array<f32>"), ("p", "read", "array<u32>")])
}

/// `(C·kh·kw, N·Ho·Wo)` columns from `(N, C, H, W)`, zeros in the padding.
pub(crate) fn im2col() -> String {
    elementwise(
        &io_binds(),
        &format!(
            r#"{WINDOW}  let l = Ho * Wo;
  let r = i / (N * l); let rem = i % (N * l);
  let b = rem / l; let oy = (rem % l) / Wo; let ox = rem % Wo;
  let ch = r / (kh * kw); let ki = i32((r / kw) % kh); let kj = i32(r % kw);
  let y = i32(oy) * sh + ki * dh - ph; let x = i32(ox) * sw + kj * dw - pw;
  var v = 0.0;
  if (y >= 0 && y < H && x >= 0 && x < W) {{ v = xs[((b * C + ch) * u32(H) + u32(y)) * u32(W) + u32(x)]; }}
  out[i] = v;"#
        ),
    )
}

/// `(N, C, H, W)` from `(C·kh·kw, N·Ho·Wo)` columns, overlapping taps summed
/// in ascending tap order (the CPU's).
pub(crate) fn col2im() -> String {
    elementwise(
        &io_binds(),
        &format!(
            r#"{WINDOW}  let l = Ho * Wo;
  let x = i32(i % u32(W)); let y = i32((i / u32(W)) % u32(H)); let ch = (i / u32(W * H)) % C; let b = i / u32(W * H) / C;
  var acc = 0.0;
  for (var ki = 0; ki < i32(kh); ki = ki + 1) {{
    let ty = y + ph - ki * dh;
    if (ty < 0 || ty % sh != 0 || u32(ty / sh) >= Ho) {{ continue; }}
    for (var kj = 0; kj < i32(kw); kj = kj + 1) {{
      let tx = x + pw - kj * dw;
      if (tx < 0 || tx % sw != 0 || u32(tx / sw) >= Wo) {{ continue; }}
      let r = (ch * kh + u32(ki)) * kw + u32(kj);
      acc = acc + xs[(r * N + b) * l + u32(ty / sh) * Wo + u32(tx / sw)];
    }}
  }}
  out[i] = acc;"#
        ),
    )
}

/// Max pooling: the value and the in-plane position (an `i64`, two words in
/// `ix`) of each window's maximum, by the CPU's order (−0.0 below 0.0, the
/// first maximum kept, a NaN wins); taps in the padding skipped.
pub(crate) fn max_pool2d() -> String {
    elementwise(
        &binds(&[
            ("xs", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
            ("ix", "read_write", "array<u32>"),
        ]),
        &format!(
            r#"{WINDOW}  let ox = i % Wo; let oy = (i / Wo) % Ho; let plane = i / (Wo * Ho);
  let base = plane * u32(H * W);
  var best = -2147483647 - 1; var at = 0u; var found = false;
  for (var ki = 0; ki < i32(kh); ki = ki + 1) {{
    let y = i32(oy) * sh + ki * dh - ph;
    if (y < 0 || y >= H) {{ continue; }}
    for (var kj = 0; kj < i32(kw); kj = kj + 1) {{
      let x = i32(ox) * sw + kj * dw - pw;
      if (x < 0 || x >= W) {{ continue; }}
      let pos = u32(y * W + x);
      let v = xs[base + pos];
      let b = bitcast<i32>(v);
      let key = select(b ^ ((b >> 31u) & 0x7fffffff), 2147483647, isnan(v));
      if (!found || key > best) {{ best = key; at = pos; found = true; }}
    }}
  }}
  out[i] = xs[base + at];
  ix[2u * i] = at; ix[2u * i + 1u] = 0u;"#
        ),
    )
}

/// Backward of [`max_pool2d`]: each input pixel sums the gradients of the
/// windows whose maximum it was (params as the forward's, `n` input pixels).
pub(crate) fn max_pool2d_backward() -> String {
    elementwise(
        &binds(&[
            ("xs", "read", "array<f32>"),
            ("ix", "read", "array<u32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        &format!(
            r#"{WINDOW}  let x = i32(i % u32(W)); let y = i32((i / u32(W)) % u32(H)); let plane = i / u32(W * H);
  let me = u32(y * W + x);
  var acc = 0.0;
{}
  out[i] = acc;"#,
            for_outputs_of_pixel(
                "      let o = (plane * Ho + oy) * Wo + ox;\n      if (ix[2u * o] == me) { acc = acc + xs[o]; }"
            )
        ),
    )
}

/// The number of taps of output `(oy, ox)` inside the image (the average's
/// divisor without the padding).
const TAPS_INSIDE: &str = r#"
fn taps_inside(oy: u32, ox: u32, kh: u32, kw: u32, sh: i32, sw: i32, ph: i32, pw: i32, dh: i32, dw: i32, H: i32, W: i32) -> u32 {
  var rows = 0u; var cols = 0u;
  for (var ki = 0; ki < i32(kh); ki = ki + 1) { let y = i32(oy) * sh + ki * dh - ph; if (y >= 0 && y < H) { rows = rows + 1u; } }
  for (var kj = 0; kj < i32(kw); kj = kj + 1) { let x = i32(ox) * sw + kj * dw - pw; if (x >= 0 && x < W) { cols = cols + 1u; } }
  return rows * cols;
}
"#;

/// Average pooling; `include_pad` divides by `kh·kw`, otherwise by the taps
/// inside the image.
pub(crate) fn avg_pool2d(include_pad: bool) -> String {
    elementwise(
        &format!("{}{TAPS_INSIDE}", io_binds()),
        &format!(
            r#"{WINDOW}  let ox = i % Wo; let oy = (i / Wo) % Ho; let plane = i / (Wo * Ho);
  let base = plane * u32(H * W);
  var acc = 0.0;
  for (var ki = 0; ki < i32(kh); ki = ki + 1) {{
    let y = i32(oy) * sh + ki * dh - ph;
    if (y < 0 || y >= H) {{ continue; }}
    for (var kj = 0; kj < i32(kw); kj = kj + 1) {{
      let x = i32(ox) * sw + kj * dw - pw;
      if (x >= 0 && x < W) {{ acc = acc + xs[base + u32(y * W + x)]; }}
    }}
  }}
  out[i] = acc / f32({});"#,
            divisor(include_pad)
        ),
    )
}

fn divisor(include_pad: bool) -> &'static str {
    if include_pad { "kh * kw" } else { "max(taps_inside(oy, ox, kh, kw, sh, sw, ph, pw, dh, dw, H, W), 1u)" }
}

/// Backward of [`avg_pool2d`], one thread per input pixel.
pub(crate) fn avg_pool2d_backward(include_pad: bool) -> String {
    elementwise(
        &format!("{}{TAPS_INSIDE}", io_binds()),
        &format!(
            r#"{WINDOW}  let x = i32(i % u32(W)); let y = i32((i / u32(W)) % u32(H)); let plane = i / u32(W * H);
  var acc = 0.0;
{}
  out[i] = acc;"#,
            for_outputs_of_pixel(&format!(
                "      acc = acc + xs[(plane * Ho + oy) * Wo + ox] / f32({});",
                divisor(include_pad)
            ))
        ),
    )
}

/// The depthwise convolution, direct: output `(n, oc, oy, ox)` of `C·M`
/// channels sums its window of input channel `oc / M` times `w[oc]`, plus
/// the bias, then `act`; params: the window's, then `[M, has_bias]`.
pub(crate) fn depthwise_conv2d(act: Option<firebrand_tensor::op::UnaryOp>) -> String {
    elementwise(
        &binds(&[
            ("xs", "read", "array<f32>"),
            ("wt", "read", "array<f32>"),
            ("bias", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        &format!(
            r#"{WINDOW}  let M = p[15];
  let ox = i % Wo; let oy = (i / Wo) % Ho; let oc = (i / (Wo * Ho)) % (C * M); let n = i / (Wo * Ho * C * M);
  let base = (n * C + oc / M) * u32(H * W);
  var acc = select(0.0, bias[oc], p[16] != 0u);
  for (var ki = 0; ki < i32(kh); ki = ki + 1) {{
    let y = i32(oy) * sh + ki * dh - ph;
    if (y < 0 || y >= H) {{ continue; }}
    for (var kj = 0; kj < i32(kw); kj = kj + 1) {{
      let x = i32(ox) * sw + kj * dw - pw;
      if (x >= 0 && x < W) {{ acc = acc + xs[base + u32(y * W + x)] * wt[(oc * kh + u32(ki)) * kw + u32(kj)]; }}
    }}
  }}
  let x = acc;
  out[i] = {};"#,
            act.map_or("x".to_string(), super::unary_expr)
        ),
    )
}

/// The input's gradient of [`depthwise_conv2d`] (before its activation):
/// one thread per input pixel gathers its `M` output channels' taps.
pub(crate) fn depthwise_conv2d_backward_input() -> String {
    elementwise(
        &binds(&[
            ("gs", "read", "array<f32>"),
            ("wt", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        &format!(
            r#"{WINDOW}  let M = p[15];
  let x = i32(i % u32(W)); let y = i32((i / u32(W)) % u32(H)); let c = (i / u32(W * H)) % C; let n = i / (u32(W * H) * C);
  var acc = 0.0;
  for (var m = 0u; m < M; m = m + 1u) {{
    let oc = c * M + m;
    let gb = (n * C * M + oc) * Ho * Wo;
{}
  }}
  out[i] = acc;"#,
            for_outputs_of_pixel("      acc = acc + gs[gb + oy * Wo + ox] * wt[(oc * kh + u32(ki)) * kw + u32(kj)];")
        ),
    )
}

/// The weight's gradient of [`depthwise_conv2d`]: one workgroup per weight
/// `(oc, ki, kj)` sums `g · x` over the batch and the output plane.
pub(crate) fn depthwise_conv2d_backward_weight() -> String {
    super::rows_kernel(
        &binds(&[
            ("gs", "read", "array<f32>"),
            ("xs", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        &format!(
            r#"{WINDOW}  let M = p[15];
  let kj = i32(row % kw); let ki = i32((row / kw) % kh); let oc = row / (kw * kh); let c = oc / M;
  var acc = 0.0;
  for (var e = lid.x; e < N * Ho * Wo; e = e + 256u) {{
    let n = e / (Ho * Wo); let oy = (e / Wo) % Ho; let ox = e % Wo;
    let y = i32(oy) * sh + ki * dh - ph; let x = i32(ox) * sw + kj * dw - pw;
    if (y >= 0 && y < H && x >= 0 && x < W) {{
      acc = acc + gs[((n * C * M + oc) * Ho + oy) * Wo + ox] * xs[((n * C + c) * u32(H) + u32(y)) * u32(W) + u32(x)];
    }}
  }}
  let t = reduce_sum(acc, lid.x);
  if (lid.x == 0u) {{ out[row] = t; }}"#
        ),
    )
}
