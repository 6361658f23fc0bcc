//! Scaled-dot-product attention, fused on FlashAttention-2's scheme: the
//! forward pass walks the keys in tiles staged in workgroup memory with an
//! online softmax (a running maximum and sum per query row, one rescale of
//! the accumulator per tile and one division at the end), so no `(T, S)`
//! score matrix exists; it keeps each row's log-sum-exp. The backward pass
//! recomputes the weights from it: one kernel per key tile accumulates `dK`
//! and `dV` over the query tiles, another per query tile accumulates `dQ`
//! over the key tiles (FA-2 adds `dQ` atomically; WGSL has no float atomics,
//! so it is its own pass), after a pass for `rowsum(dO ∘ O)`.
//!
//! Each thread owns one row (a query forward and for `dQ`, a key for `dK`
//! and `dV`) in registers; the head dim `D` and the tile height `BC` are
//! constants of the generated source. The causal and key-padding masks and
//! the dropout mask are computed as the scores are, never stored: the
//! dropout keeps a weight by the CPU's hash (SplitMix64's finalizer on
//! 32-bit word pairs), so both devices drop the same weights.
//!
//! Params (`u32` words): `[B, H, T, S, scale, causal, causal offset,
//! has_pad, has_mask, dropout, p, seed lo, seed hi, 1/(1 − p), pad_at,
//! mask_at, q_at (offset, batch, head, row), k_at, v_at, order q, order k,
//! order v]` (orders: 1 heads-major, 0 positions-major). The padding mask
//! `(B, S)` and the additive mask `(T, S)` share one `aux` buffer at
//! `pad_at` and `mask_at`.

use super::{I64, PRELUDE, binds};

/// Rows per workgroup (one per thread).
pub(crate) const ROWS: usize = 64;

/// Keys (or queries) per tile staged in workgroup memory for head dim `d`:
/// two `BC × D` tiles stay within 8 KiB.
pub(crate) fn tile(d: usize) -> usize {
    (1024 / d.max(1)).clamp(1, 32)
}

/// The helpers every attention kernel includes: the constants, 64-bit
/// products on word pairs, the dropout factor, and the visibility of a key.
fn common(d: usize) -> String {
    let bc = tile(d);
    format!(
        r#"const D: u32 = {d}u;
const BC: u32 = {bc}u;
const BR: u32 = {ROWS}u;
fn neg_inf() -> f32 {{ return -bitcast<f32>(0x7f800000u); }}
// z ^ (z >> n) for 0 < n < 32.
fn xshr(z: vec2<u32>, n: u32) -> vec2<u32> {{
  return z ^ vec2<u32>((z.x >> n) | (z.y << (32u - n)), z.y >> n);
}}
// The dropout factor of weight (bh, i, j): 0 when dropped, 1/(1 − p) when
// kept; the flat index ((bh·T + i)·S + j) hashed with the seed.
fn drop_factor(bh: u32, i: u32, j: u32) -> f32 {{
  if (p[9] == 0u) {{ return 1.0; }}
  let r = mul32(bh * p[2] + i, p[3]);
  let lo = r.x + j;
  let at = vec2<u32>(lo, r.y + select(0u, 1u, lo < r.x));
  var z = vec2<u32>(p[11], p[12]) ^ mul64(at, vec2<u32>(0x7F4A7C15u, 0x9E3779B9u));
  z = mul64(xshr(z, 30u), vec2<u32>(0x1CE4E5B9u, 0xBF58476Du));
  z = mul64(xshr(z, 27u), vec2<u32>(0x133111EBu, 0x94D049BBu));
  z = xshr(z, 31u);
  let u = f32(z.y >> 8u) / 16777216.0;
  return select(0.0, bitcast<f32>(p[13]), u >= bitcast<f32>(p[10]));
}}
// Whether query i sees key j: the causal limit and the padding mask.
fn visible(b: u32, i: u32, j: u32) -> bool {{
  if (p[5] != 0u && j > i + p[6]) {{ return false; }}
  return p[7] == 0u || aux[p[14] + b * p[3] + j] == 0.0;
}}
// The additive mask's entry (0 without one).
fn added(i: u32, j: u32) -> f32 {{
  return select(0.0, aux[p[15] + i * p[3] + j], p[8] != 0u);
}}
// Where row l of head (b, h) of a contiguous (len, ·) gradient goes in `order`.
fn grad_at(order: u32, b: u32, h: u32, l: u32, len: u32) -> u32 {{
  if (order != 0u) {{ return ((b * p[1] + h) * len + l) * D; }}
  return ((b * len + l) * p[1] + h) * D;
}}
// The last key any of the queries [i0, i0 + BR) sees, plus one.
fn key_end(i0: u32) -> u32 {{
  if (p[5] == 0u) {{ return p[3]; }}
  return min(p[3], min(i0 + BR, p[2]) + p[6]);
}}
// The workgroup's (batch·head, first row) over `len` rows, or false past the end.
fn task(wid: vec3<u32>, len: u32) -> vec3<u32> {{
  let tiles = (len + BR - 1u) / BR;
  let g = wid.x + wid.y * 65535u;
  return vec3<u32>(g / tiles, (g % tiles) * BR, u32(g < p[0] * p[1] * tiles));
}}
"#
    )
}

fn kernel(bindings: &[(&str, &str, &str)], d: usize, shared: &str, body: &str) -> String {
    let (b, c) = (binds(bindings), common(d));
    format!(
        "{b}\n{PRELUDE}\n{I64}\n{c}\n{shared}\n@compute @workgroup_size({ROWS})\n\
         fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{\n{body}\n}}\n"
    )
}

const OPERANDS: [(&str, &str, &str); 4] = [
    ("qs", "read", "array<f32>"),
    ("ks", "read", "array<f32>"),
    ("vs", "read", "array<f32>"),
    ("aux", "read", "array<f32>"),
];

/// The forward pass: a workgroup per (batch, head, 64 queries), a thread
/// per query; the output `(B, T, heads, d)` and the log-sum-exp `(B, heads, T)`.
pub(crate) fn attention(d: usize) -> String {
    let mut b = OPERANDS.to_vec();
    b.extend([("out", "read_write", "array<f32>"), ("lse", "read_write", "array<f32>"), ("p", "read", "array<u32>")]);
    kernel(
        &b,
        d,
        "var<workgroup> kt: array<f32, BC * D>;\nvar<workgroup> vt: array<f32, BC * D>;",
        r#"  let w = task(wid, p[2]);
  if (w.z == 0u) { return; }
  let bh = w.x; let b = bh / p[1]; let h = bh % p[1];
  let i = w.y + lid.x; let live = i < p[2];
  let qb = p[16] + b * p[17] + h * p[18];
  let kb = p[20] + b * p[21] + h * p[22];
  let vb = p[24] + b * p[25] + h * p[26];
  let scale = bitcast<f32>(p[4]);
  var q: array<f32, D>; var acc: array<f32, D>;
  for (var c = 0u; c < D; c = c + 1u) { acc[c] = 0.0; q[c] = 0.0; }
  if (live) { for (var c = 0u; c < D; c = c + 1u) { q[c] = qs[qb + i * p[19] + c]; } }
  var m = neg_inf(); var l = 0.0;
  let kend = key_end(w.y);
  for (var j0 = 0u; j0 < kend; j0 = j0 + BC) {
    workgroupBarrier();
    for (var e = lid.x; e < BC * D; e = e + BR) {
      let j = j0 + e / D; let c = e % D;
      if (j < p[3]) { kt[e] = ks[kb + j * p[23] + c]; vt[e] = vs[vb + j * p[27] + c]; }
    }
    workgroupBarrier();
    // No `continue` on a per-thread condition: the barriers need uniform control flow.
    if (live) {
    var sc: array<f32, BC>;
    var mt = m;
    for (var jj = 0u; jj < BC; jj = jj + 1u) {
      let j = j0 + jj;
      var s = neg_inf();
      if (j < p[3] && visible(b, i, j)) {
        var dot = 0.0;
        for (var c = 0u; c < D; c = c + 1u) { dot = dot + q[c] * kt[jj * D + c]; }
        s = dot * scale + added(i, j);
      }
      sc[jj] = s;
      if (isnan(s) || s > mt) { mt = s; }
    }
    if (mt != neg_inf()) {
    // One rescale per tile (0 on the first tile that sees a key).
    let alpha = exp(m - mt);
    l = l * alpha;
    for (var c = 0u; c < D; c = c + 1u) { acc[c] = acc[c] * alpha; }
    for (var jj = 0u; jj < BC; jj = jj + 1u) {
      let e = exp(sc[jj] - mt);
      if (e != 0.0) {
        l = l + e;
        let wgt = e * drop_factor(bh, i, j0 + jj);
        for (var c = 0u; c < D; c = c + 1u) { acc[c] = acc[c] + wgt * vt[jj * D + c]; }
      }
    }
    m = mt;
    }
    }
  }
  if (!live) { return; }
  let o = ((b * p[2] + i) * p[1] + h) * D;
  let inv = select(1.0 / l, 0.0, l == 0.0);
  for (var c = 0u; c < D; c = c + 1u) { out[o + c] = acc[c] * inv; }
  lse[bh * p[2] + i] = select(m + log(l), neg_inf(), m == neg_inf());"#,
    )
}

/// The backward's row statistics `[lse | rowsum(dO ∘ O)]` `(2, B·heads·T)`,
/// a thread per query row (params as the others'; `D` the head dim).
pub(crate) fn attention_rows(d: usize) -> String {
    super::elementwise_n(
        &binds(&[
            ("gs", "read", "array<f32>"),
            ("os", "read", "array<f32>"),
            ("lse", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        "p[0] * p[1] * p[2]",
        &format!(
            r#"  let n = p[0] * p[1] * p[2]; let t = p[2];
  let bh = i / t; let b = bh / p[1]; let h = bh % p[1];
  let o = ((b * t + i % t) * p[1] + h) * {d}u;
  var s = 0.0;
  for (var c = 0u; c < {d}u; c = c + 1u) {{ s = s + gs[o + c] * os[o + c]; }}
  out[i] = lse[i]; out[n + i] = s;"#
        ),
    )
}

const BACKWARD: [(&str, &str, &str); 2] = [("gs", "read", "array<f32>"), ("rows", "read", "array<f32>")];

/// `[dK | dV]`, each `(B·S·heads·d)` in its order: a workgroup per (batch,
/// head, 64 keys), a thread per key, over the query tiles that can see it.
pub(crate) fn attention_backward_kv(d: usize) -> String {
    let mut b = OPERANDS.to_vec();
    b.extend(BACKWARD);
    b.extend([("out", "read_write", "array<f32>"), ("p", "read", "array<u32>")]);
    kernel(
        &b,
        d,
        "var<workgroup> qt: array<f32, BC * D>;\nvar<workgroup> gt: array<f32, BC * D>;\n\
         var<workgroup> lt: array<f32, BC>;\nvar<workgroup> dt: array<f32, BC>;",
        r#"  let w = task(wid, p[3]);
  if (w.z == 0u) { return; }
  let bh = w.x; let b = bh / p[1]; let h = bh % p[1];
  let j = w.y + lid.x;
  let n = p[0] * p[1] * p[2];
  let qb = p[16] + b * p[17] + h * p[18];
  let kb = p[20] + b * p[21] + h * p[22];
  let vb = p[24] + b * p[25] + h * p[26];
  let scale = bitcast<f32>(p[4]);
  var kr: array<f32, D>; var vr: array<f32, D>; var dk: array<f32, D>; var dv: array<f32, D>;
  for (var c = 0u; c < D; c = c + 1u) { kr[c] = 0.0; vr[c] = 0.0; dk[c] = 0.0; dv[c] = 0.0; }
  var live = j < p[3];
  if (live) {
    for (var c = 0u; c < D; c = c + 1u) { kr[c] = ks[kb + j * p[23] + c]; vr[c] = vs[vb + j * p[27] + c]; }
    live = p[7] == 0u || aux[p[14] + b * p[3] + j] == 0.0;
  }
  // The first query that sees a key of this tile.
  var istart = 0u;
  if (p[5] != 0u && w.y > p[6]) { istart = (w.y - p[6]) / BC * BC; }
  for (var i0 = istart; i0 < p[2]; i0 = i0 + BC) {
    workgroupBarrier();
    for (var e = lid.x; e < BC * D; e = e + BR) {
      let i = i0 + e / D; let c = e % D;
      if (i < p[2]) {
        qt[e] = qs[qb + i * p[19] + c];
        gt[e] = gs[((b * p[2] + i) * p[1] + h) * D + c];
      }
    }
    for (var e = lid.x; e < BC; e = e + BR) {
      let i = i0 + e;
      if (i < p[2]) { lt[e] = rows[bh * p[2] + i]; dt[e] = rows[n + bh * p[2] + i]; }
    }
    workgroupBarrier();
    if (live) {
    for (var ii = 0u; ii < BC; ii = ii + 1u) {
      let i = i0 + ii;
      if (i >= p[2]) { break; }
      if ((p[5] != 0u && j > i + p[6]) || lt[ii] == neg_inf()) { continue; }
      var dot = 0.0; var dp = 0.0;
      for (var c = 0u; c < D; c = c + 1u) {
        dot = dot + qt[ii * D + c] * kr[c];
        dp = dp + gt[ii * D + c] * vr[c];
      }
      let pr = exp(dot * scale + added(i, j) - lt[ii]);
      let f = drop_factor(bh, i, j);
      let wgt = pr * f;
      let ds = pr * (dp * f - dt[ii]) * scale;
      for (var c = 0u; c < D; c = c + 1u) {
        dv[c] = dv[c] + wgt * gt[ii * D + c];
        dk[c] = dk[c] + ds * qt[ii * D + c];
      }
    }
    }
  }
  if (j >= p[3]) { return; }
  let half = p[0] * p[3] * p[1] * D;
  let ok = grad_at(p[29], b, h, j, p[3]);
  let ov = half + grad_at(p[30], b, h, j, p[3]);
  for (var c = 0u; c < D; c = c + 1u) { out[ok + c] = dk[c]; out[ov + c] = dv[c]; }"#,
    )
}

/// `dQ` `(B·T·heads·d)` in its order: a workgroup per (batch, head, 64
/// queries), a thread per query, over the key tiles it can see.
pub(crate) fn attention_backward_q(d: usize) -> String {
    let mut b = OPERANDS.to_vec();
    b.extend(BACKWARD);
    b.extend([("out", "read_write", "array<f32>"), ("p", "read", "array<u32>")]);
    kernel(
        &b,
        d,
        "var<workgroup> kt: array<f32, BC * D>;\nvar<workgroup> vt: array<f32, BC * D>;",
        r#"  let w = task(wid, p[2]);
  if (w.z == 0u) { return; }
  let bh = w.x; let b = bh / p[1]; let h = bh % p[1];
  let i = w.y + lid.x; let live = i < p[2];
  let n = p[0] * p[1] * p[2];
  let qb = p[16] + b * p[17] + h * p[18];
  let kb = p[20] + b * p[21] + h * p[22];
  let vb = p[24] + b * p[25] + h * p[26];
  let scale = bitcast<f32>(p[4]);
  var q: array<f32, D>; var g: array<f32, D>; var dq: array<f32, D>;
  for (var c = 0u; c < D; c = c + 1u) { q[c] = 0.0; g[c] = 0.0; dq[c] = 0.0; }
  var li = neg_inf(); var di = 0.0;
  if (live) {
    for (var c = 0u; c < D; c = c + 1u) {
      q[c] = qs[qb + i * p[19] + c];
      g[c] = gs[((b * p[2] + i) * p[1] + h) * D + c];
    }
    li = rows[bh * p[2] + i]; di = rows[n + bh * p[2] + i];
  }
  let kend = key_end(w.y);
  for (var j0 = 0u; j0 < kend; j0 = j0 + BC) {
    workgroupBarrier();
    for (var e = lid.x; e < BC * D; e = e + BR) {
      let j = j0 + e / D; let c = e % D;
      if (j < p[3]) { kt[e] = ks[kb + j * p[23] + c]; vt[e] = vs[vb + j * p[27] + c]; }
    }
    workgroupBarrier();
    if (live && li != neg_inf()) {
    for (var jj = 0u; jj < BC; jj = jj + 1u) {
      let j = j0 + jj;
      if (j >= p[3]) { break; }
      if (!visible(b, i, j)) { continue; }
      var dot = 0.0; var dp = 0.0;
      for (var c = 0u; c < D; c = c + 1u) {
        dot = dot + q[c] * kt[jj * D + c];
        dp = dp + g[c] * vt[jj * D + c];
      }
      let pr = exp(dot * scale + added(i, j) - li);
      let ds = pr * (dp * drop_factor(bh, i, j) - di) * scale;
      for (var c = 0u; c < D; c = c + 1u) { dq[c] = dq[c] + ds * kt[jj * D + c]; }
    }
    }
  }
  if (!live) { return; }
  let o = grad_at(p[28], b, h, i, p[2]);
  for (var c = 0u; c < D; c = c + 1u) { out[o + c] = dq[c]; }"#,
    )
}
