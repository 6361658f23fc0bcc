//! Half-precision storage: `f16` and `bf16` elements two to a word (element
//! `e` in the low half of word `e / 2` when `e` is even, else the high
//! half), so any adapter holds them, with or without `shader-f16`. The
//! conversions are written out bit by bit (the `half` crate's, rounding to
//! nearest even, overflow to infinity, subnormals and NaN kept): WGSL's
//! `pack2x16float` leaves out-of-range values indeterminate.

use super::{binds, elementwise, elementwise_n};

const HALF: &str = r#"
fn half_at(e: u32) -> u32 { return (x[e / 2u] >> ((e % 2u) * 16u)) & 0xffffu; }
// f32 bits -> f16 bits, rounding to nearest even.
fn to_f16(v: u32) -> u32 {
  let sign = (v >> 16u) & 0x8000u; let ex = v & 0x7f800000u; let man = v & 0x007fffffu;
  if (ex == 0x7f800000u) { return sign | 0x7c00u | select(0u, 0x0200u, man != 0u) | (man >> 13u); }
  let he = i32(ex >> 23u) - 127 + 15;
  if (he >= 0x1f) { return sign | 0x7c00u; }
  if (he <= 0) {
    if (14 - he > 24) { return sign; }
    let m = man | 0x00800000u;
    var hm = m >> u32(14 - he);
    let rb = 1u << u32(13 - he);
    if ((m & rb) != 0u && (m & (3u * rb - 1u)) != 0u) { hm = hm + 1u; }
    return sign | hm;
  }
  let h = sign | (u32(he) << 10u) | (man >> 13u);
  return select(h, h + 1u, (man & 0x1000u) != 0u && (man & 0x2fffu) != 0u);
}
// f16 bits -> f32 bits (exact).
fn from_f16(h: u32) -> u32 {
  let sign = (h & 0x8000u) << 16u; let ex = h & 0x7c00u; let man = h & 0x03ffu;
  if ((h & 0x7fffu) == 0u) { return sign; }
  if (ex == 0x7c00u) { return select(sign | 0x7fc00000u | (man << 13u), sign | 0x7f800000u, man == 0u); }
  if (ex == 0u) {
    let e = countLeadingZeros(man) - 16u - 6u;
    return sign | ((127u - 15u - e) << 23u) | ((man << (14u + e)) & 0x007fffffu);
  }
  return sign | (((ex >> 10u) + 112u) << 23u) | (man << 13u);
}
// f32 bits -> bf16 bits, rounding to nearest even (NaN stays NaN).
fn to_bf16(v: u32) -> u32 {
  if ((v & 0x7fffffffu) > 0x7f800000u) { return (v >> 16u) | 0x0040u; }
  return select(v >> 16u, (v >> 16u) + 1u, (v & 0x8000u) != 0u && (v & 0x17fffu) != 0u);
}
"#;

fn bindings() -> String {
    binds(&[("x", "read", "array<u32>"), ("out", "read_write", "array<u32>"), ("p", "read", "array<u32>")])
}

/// Strided copy of half elements (layout at params[1], `params[0]` of
/// them): a thread per output word, so no two threads write one word.
pub(crate) fn copy_half() -> String {
    elementwise_n(
        &format!("{}{HALF}", bindings()),
        "(p[0] + 1u) / 2u",
        r#"  var w = 0u;
  for (var h = 0u; h < 2u; h = h + 1u) {
    let e = 2u * i + h;
    if (e < p[0]) { w = w | (half_at(strided(e, 1u)) << (16u * h)); }
  }
  out[i] = w;"#,
    )
}

/// Half elements (`bf16` or `f16`) through a layout as `f32`s.
pub(crate) fn half_to_f32(bf16: bool) -> String {
    let widen = if bf16 { "h << 16u" } else { "from_f16(h)" };
    elementwise(&format!("{}{HALF}", bindings()), &format!("  let h = half_at(strided(i, 1u));\n  out[i] = {widen};"))
}

/// Contiguous `f32`s as half elements (`bf16` or `f16`), a thread per output word.
pub(crate) fn f32_to_half(bf16: bool) -> String {
    let narrow = if bf16 { "to_bf16" } else { "to_f16" };
    elementwise_n(
        &format!("{}{HALF}", bindings()),
        "(p[0] + 1u) / 2u",
        &format!(
            r#"  var w = 0u;
  for (var h = 0u; h < 2u; h = h + 1u) {{
    let e = 2u * i + h;
    if (e < p[0]) {{ w = w | ({narrow}(x[e]) << (16u * h)); }}
  }}
  out[i] = w;"#
        ),
    )
}
