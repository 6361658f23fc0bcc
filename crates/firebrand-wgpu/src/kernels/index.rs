//! Index kernels: selection, gathering and their scatter-adds, concatenation
//! and `where`. Indices are `i64` (two words, low first); a kernel that meets
//! one outside `0..size` records it in the device's five-word `flag` buffer
//! (set, low, high, size, the op's code from the params' last word), which
//! the next readback reports as `IndexOutOfRange`.

use super::{binds, elementwise};

/// The index check every index kernel includes: `index_of(j, size)` is the
/// `j`-th index, or `0xffffffff` (after recording it) when out of range.
const INDEX_OF: &str = r#"
fn index_of(j: u32, size: u32) -> u32 {
  let lo = ix[2u * j];
  let hi = ix[2u * j + 1u];
  if (hi != 0u || lo >= size) {
    if (atomicExchange(&flag[0], 1u) == 0u) {
      atomicStore(&flag[1], lo); atomicStore(&flag[2], hi);
      atomicStore(&flag[3], size); atomicStore(&flag[4], p[arrayLength(&p) - 1u]);
    }
    return 0xffffffffu;
  }
  return lo;
}
"#;

/// `out += v` at word `k` of an `atomic<u32>` array holding `f32`s (a
/// compare-and-swap loop: WGSL has no float atomics).
const ATOMIC_ADD: &str = r#"
fn atomic_add_f32(k: u32, v: f32) {
  var old = atomicLoad(&out[k]);
  loop {
    let r = atomicCompareExchangeWeak(&out[k], old, bitcast<u32>(bitcast<f32>(old) + v));
    if (r.exchanged) { break; }
    old = r.old_value;
  }
}
"#;

fn index_binds(out_ty: &str) -> String {
    binds(&[
        ("x", "read", "array<u32>"),
        ("ix", "read", "array<u32>"),
        ("out", "read_write", out_ty),
        ("p", "read", "array<u32>"),
        ("flag", "read_write", "array<atomic<u32>>"),
    ])
}

/// `out[o, j, i] = x[layout((o·size + idx[j])·inner + i)]` for `words`-word
/// elements; params `[n, size, inner, len, layout…]` (layout at params[4]).
pub(crate) fn index_select(words: u32) -> String {
    elementwise(
        &format!("{}{INDEX_OF}", index_binds("array<u32>")),
        &format!(
            r#"  let size = p[1]; let inner = p[2]; let len = p[3];
  let i_ = i % inner; let j = (i / inner) % len; let o = i / (inner * len);
  let r = index_of(j, size);
  if (r == 0xffffffffu) {{ return; }}
  let s = strided((o * size + r) * inner + i_, 4u);
  for (var w = 0u; w < {words}u; w = w + 1u) {{ out[i * {words}u + w] = x[s * {words}u + w]; }}"#
        ),
    )
}

/// `out[o, j, i] = x[(o·size + index[o, j, i])·inner + i]` for a contiguous
/// `x` of `words`-word elements; params `[n, size, inner, len]`.
pub(crate) fn gather(words: u32) -> String {
    elementwise(
        &format!("{}{INDEX_OF}", index_binds("array<u32>")),
        &format!(
            r#"  let size = p[1]; let inner = p[2]; let len = p[3];
  let i_ = i % inner; let o = i / (inner * len);
  let r = index_of(i, size);
  if (r == 0xffffffffu) {{ return; }}
  let s = (o * size + r) * inner + i_;
  for (var w = 0u; w < {words}u; w = w + 1u) {{ out[i * {words}u + w] = x[s * {words}u + w]; }}"#
        ),
    )
}

/// The scatter-adds, one thread per source element `(o, j, i)` of `f32`
/// `src` (bound as `x`): `out[o, idx(j), i] += src[o, j, i]` with the index
/// `idx[j]` (`per_row`, index_add) or `index[o, j, i]` (scatter_add); params
/// `[n, size, inner, len]`.
pub(crate) fn scatter_add(per_row: bool) -> String {
    let which = if per_row { "(i / inner) % len" } else { "i" };
    elementwise(
        &format!("{}{INDEX_OF}{ATOMIC_ADD}", index_binds("array<atomic<u32>>")),
        &format!(
            r#"  let size = p[1]; let inner = p[2]; let len = p[3];
  let i_ = i % inner; let o = i / (inner * len);
  let r = index_of({which}, size);
  if (r == 0xffffffffu) {{ return; }}
  atomic_add_f32((o * size + r) * inner + i_, bitcast<f32>(x[i]));"#
        ),
    )
}

/// One part of a concatenation: `out[o, offset + j, i] = part[layout(o, j, i)]`
/// of `words`-word elements; params `[n, total, offset, size, inner, layout…]`
/// (layout at params[5]).
pub(crate) fn concat_part(words: u32) -> String {
    elementwise(
        &binds(&[("x", "read", "array<u32>"), ("out", "read_write", "array<u32>"), ("p", "read", "array<u32>")]),
        &format!(
            r#"  let total = p[1]; let offset = p[2]; let block = p[3] * p[4];
  let o = i / block; let rest = i % block;
  let d = (o * total + offset) * p[4] + rest;
  let s = strided(i, 5u);
  for (var w = 0u; w < {words}u; w = w + 1u) {{ out[d * {words}u + w] = x[s * {words}u + w]; }}"#
        ),
    )
}

/// `out[i] = cond[i] != 0 ? a[i] : b[i]` for `words`-word `a`/`b`; `cond`
/// is `f32` (by its bits: ±0.0 is false, NaN true), or a 1- or 2-word integer.
pub(crate) fn where_select(cond_kind: &str, words: u32) -> String {
    let test = match cond_kind {
        "f32" => "(c[i] & 0x7fffffffu) != 0u",
        "i64" => "(c[2u * i] | c[2u * i + 1u]) != 0u",
        _ => "c[i] != 0u",
    };
    elementwise(
        &binds(&[
            ("c", "read", "array<u32>"),
            ("a", "read", "array<u32>"),
            ("b", "read", "array<u32>"),
            ("out", "read_write", "array<u32>"),
            ("p", "read", "array<u32>"),
        ]),
        &format!(
            "  let t = {test};\n  for (var w = 0u; w < {words}u; w = w + 1u) {{ out[i * {words}u + w] = select(b[i * {words}u + w], a[i * {words}u + w], t); }}"
        ),
    )
}
