//! The LSTM cell, fused: one thread per `(row, unit)` of a step, forward
//! and backward (`firebrand_ops::recurrent`'s definitions).

use super::{binds, elementwise};

/// `[i | f | g | o | c | h]` `(B, 6H)` from the pre-activations `xw + hw`
/// and `c_prev`; params `[B·H, H, xw_offset, xw_stride, c_offset, c_stride]`.
pub(crate) fn lstm_cell() -> String {
    elementwise(
        &binds(&[
            ("xw", "read", "array<f32>"),
            ("hw", "read", "array<f32>"),
            ("cp", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        r#"  let h = p[1]; let r = i / h; let j = i % h;
  let xb = p[2] + r * p[3] + j; let hb = r * 4u * h + j;
  let ai = sigm(xw[xb] + hw[hb]);
  let af = sigm(xw[xb + h] + hw[hb + h]);
  let ag = tanh_s(xw[xb + 2u * h] + hw[hb + 2u * h]);
  let ao = sigm(xw[xb + 3u * h] + hw[hb + 3u * h]);
  let c = af * cp[p[4] + r * p[5] + j] + ai * ag;
  let o = r * 6u * h + j;
  out[o] = ai; out[o + h] = af; out[o + 2u * h] = ag; out[o + 3u * h] = ao;
  out[o + 4u * h] = c; out[o + 5u * h] = tanh_s(c) * ao;"#,
    )
}

/// `[dgates | dc_prev]` `(B, 5H)`; params `[B·H, H, c_offset, c_stride,
/// g_offset, g_stride, dc_offset, dc_stride]`.
pub(crate) fn lstm_cell_backward() -> String {
    elementwise(
        &binds(&[
            ("st", "read", "array<f32>"),
            ("cp", "read", "array<f32>"),
            ("go", "read", "array<f32>"),
            ("dhn", "read", "array<f32>"),
            ("dcn", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        r#"  let h = p[1]; let r = i / h; let j = i % h;
  let s = r * 6u * h + j;
  let ai = st[s]; let af = st[s + h]; let ag = st[s + 2u * h]; let ao = st[s + 3u * h];
  let tc = tanh_s(st[s + 4u * h]);
  let cpv = cp[p[2] + r * p[3] + j];
  let gb = p[4] + r * p[5] + j;
  let dh = go[gb + h] + dhn[r * h + j];
  let dct = go[gb] + dcn[p[6] + r * p[7] + j] + dh * ao * (1.0 - tc * tc);
  let o = r * 5u * h + j;
  out[o] = dct * ag * ai * (1.0 - ai);
  out[o + h] = dct * cpv * af * (1.0 - af);
  out[o + 2u * h] = dct * ai * (1.0 - ag * ag);
  out[o + 3u * h] = dh * tc * ao * (1.0 - ao);
  out[o + 4u * h] = dct * af;"#,
    )
}
