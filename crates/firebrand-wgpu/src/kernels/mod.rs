//! The WGSL sources of the kernels, generated per op: each table entry's
//! expression sits here beside the scalar definition it implements
//! (`firebrand_tensor::op`), and constants are spliced in as exact bit
//! patterns. Every kernel reads its sizes, layouts and constants from a
//! `params: array<u32>` storage buffer.

use firebrand_tensor::op::{BinaryOp, ReduceOp, UnaryOp};

mod affine;
mod attention;
mod half;
mod index;
mod norm;
mod recurrent;
mod window;
pub(crate) use affine::{
    batch_norm_affine_backward, batch_norm_backward, batch_norm_stats, bias_act_to_nchw, bias_act_to_nchw_backward,
    channel_affine, channel_affine_backward, channel_sums,
};
pub(crate) use attention::{
    ROWS as ATTENTION_ROWS, attention, attention_backward_kv, attention_backward_q, attention_rows,
};
pub(crate) use half::{copy_half, f32_to_half, half_to_f32};
pub(crate) use index::{concat_part, gather, index_select, scatter_add, where_select};
pub(crate) use norm::{layer_norm, layer_norm_affine_backward, layer_norm_backward};
pub(crate) use recurrent::{lstm_cell, lstm_cell_backward};
pub(crate) use window::{
    avg_pool2d, avg_pool2d_backward, col2im, depthwise_conv2d, depthwise_conv2d_backward_input,
    depthwise_conv2d_backward_weight, im2col, max_pool2d, max_pool2d_backward,
};

/// Storage bindings `@group(0) @binding(i)` in order: `(name, access, type)`.
fn binds(list: &[(&str, &str, &str)]) -> String {
    list.iter()
        .enumerate()
        .map(|(i, (name, access, ty))| format!("@group(0) @binding({i}) var<storage, {access}> {name}: {ty};\n"))
        .collect()
}

/// An `f32` literal with exactly `v`'s bits.
fn lit(v: f32) -> String {
    format!("bitcast<f32>({}u)", v.to_bits())
}

/// Helpers every kernel includes: the linear thread index, a strided
/// offset from a layout in `params`, NaN, `erf`, and NaN-keeping clamp,
/// tanh and sigmoid that do not overflow.
const PRELUDE: &str = r#"
fn linear(gid: vec3<u32>, nwg: vec3<u32>) -> u32 { return gid.x + gid.y * nwg.x * 256u; }
// Layout at params[at]: rank, offset, dims[rank], strides[rank].
fn strided(i: u32, at: u32) -> u32 {
    let rank = p[at];
    var off = p[at + 1u];
    var rem = i;
    for (var d = i32(rank) - 1; d >= 0; d = d - 1) {
        let dim = p[at + 2u + u32(d)];
        off = off + (rem % dim) * p[at + 2u + rank + u32(d)];
        rem = rem / dim;
    }
    return off;
}
fn nan() -> f32 { return bitcast<f32>(0x7fc00000u); }
// By the bits: shader compilers may assume `x != x` is false.
fn isnan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
fn nonfinite(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) >= 0x7f800000u; }
fn clampk(x: f32, lo: f32, hi: f32) -> f32 { return select(select(x, hi, x > hi), lo, x < lo); }
fn tanh_s(x: f32) -> f32 { let e = exp(-2.0 * abs(x)); let t = (1.0 - e) / (1.0 + e); return select(t, -t, x < 0.0); }
fn sigm(x: f32) -> f32 { let e = exp(-abs(x)); return select(e / (1.0 + e), 1.0 / (1.0 + e), x >= 0.0); }
fn log1p_s(z: f32) -> f32 { let u = 1.0 + z; return select(log(u) * z / (u - 1.0), z, u == 1.0); }
fn erf_s(x: f32) -> f32 {
    let a = abs(x);
    if (a < 0.5) {
        let x2 = x * x;
        var term = x; var sum = x;
        for (var n = 1; n < 12; n = n + 1) { term = term * -x2 / f32(n); sum = sum + term / f32(2 * n + 1); }
        return sum * 1.1283791670955126;
    }
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let r = 1.0 - poly * exp(-a * a);
    return select(r, -r, x < 0.0);
}
// x^q as `f32::powf`: real results for a negative base and an integer q,
// NaN for a negative base and any other q (WGSL's pow leaves x < 0 undefined).
fn powr(x: f32, q: f32) -> f32 {
    if (q == 0.0) { return 1.0; }
    if (isnan(x) || isnan(q) || (x < 0.0 && fract(q) != 0.0)) { return nan(); }
    let m = pow(abs(x), q);
    if (x >= 0.0) { return select(pow(x, q), m, x == 0.0); }
    let odd = fract(q * 0.5) != 0.0;
    return select(m, -m, odd);
}
"#;

/// The WGSL expression of `op` applied to `x` ([`UnaryOp::eval`]).
pub(crate) fn unary_expr(op: UnaryOp) -> String {
    match op {
        UnaryOp::Neg => "-x".into(),
        UnaryOp::Abs => "abs(x)".into(),
        UnaryOp::Exp => "exp(x)".into(),
        UnaryOp::Log => "log(x)".into(),
        UnaryOp::Sqrt => "sqrt(x)".into(),
        UnaryOp::Rsqrt => "1.0 / sqrt(x)".into(),
        UnaryOp::Recip => "1.0 / x".into(),
        UnaryOp::Square => "x * x".into(),
        UnaryOp::Tanh => "tanh_s(x)".into(),
        UnaryOp::Sigmoid => "sigm(x)".into(),
        UnaryOp::Relu => "select(x, 0.0, x < 0.0)".into(),
        UnaryOp::Gelu => "0.5 * x * (1.0 + erf_s(x * 0.70710678118654752))".into(),
        UnaryOp::GeluTanh => format!(
            "0.5 * x * (1.0 + tanh_s({} * (x + {} * x * x * x)))",
            lit(firebrand_tensor::op::SQRT_2_OVER_PI),
            lit(firebrand_tensor::op::GELU_C)
        ),
        UnaryOp::Silu => "x * sigm(x)".into(),
        UnaryOp::Softplus => "select(x, 0.0, x < 0.0) + log1p_s(exp(-abs(x)))".into(),
        UnaryOp::Sin => "sin(x)".into(),
        UnaryOp::Cos => "cos(x)".into(),
        UnaryOp::Powf(q) => format!("powr(x, {})", lit(q)),
        UnaryOp::LeakyRelu(s) => format!("select({} * x, x, x > 0.0)", lit(s)),
        UnaryOp::Clamp(lo, hi) | UnaryOp::Hardtanh(lo, hi) => format!("clampk(x, {}, {})", lit(lo), lit(hi)),
        UnaryOp::Hardswish => "x * clampk(x + 3.0, 0.0, 6.0) / 6.0".into(),
        UnaryOp::Hardsigmoid => "clampk(x + 3.0, 0.0, 6.0) / 6.0".into(),
        // `0.0 * x` is folded to 0 by shader compilers (lavapipe does); IEEE
        // makes it NaN for a NaN or an infinite x, as the CPU gives.
        UnaryOp::Affine(0.0, a) => format!("select({}, nan(), nonfinite(x))", lit(a)),
        UnaryOp::Affine(m, a) => format!("{} * x + {}", lit(m), lit(a)),
    }
}

/// The WGSL expression of `op`'s derivative at input `x`, output `y`
/// ([`UnaryOp::derivative_of`]).
pub(crate) fn derivative_expr(op: UnaryOp) -> String {
    match op {
        UnaryOp::Neg => "-1.0".into(),
        UnaryOp::Abs => "select(select(select(0.0, -1.0, x < 0.0), 1.0, x > 0.0), x, isnan(x))".into(),
        UnaryOp::Exp => "y".into(),
        UnaryOp::Log => "1.0 / x".into(),
        UnaryOp::Sqrt => "0.5 / y".into(),
        UnaryOp::Rsqrt => "-0.5 * y / x".into(),
        UnaryOp::Recip => "-y * y".into(),
        UnaryOp::Square => "2.0 * x".into(),
        UnaryOp::Tanh => "1.0 - y * y".into(),
        UnaryOp::Sigmoid => "y * (1.0 - y)".into(),
        UnaryOp::Relu => "select(0.0, 1.0, x > 0.0)".into(),
        UnaryOp::Gelu => {
            "0.5 * (1.0 + erf_s(x * 0.70710678118654752)) + x * exp(-0.5 * x * x) * 0.3989422804014327".into()
        }
        UnaryOp::GeluTanh => {
            let (k, c) = (lit(firebrand_tensor::op::SQRT_2_OVER_PI), lit(firebrand_tensor::op::GELU_C));
            format!(
                "0.5 * (1.0 + tanh_s({k} * (x + {c} * x * x * x))) + 0.5 * x * (1.0 - tanh_s({k} * (x + {c} * x * x * x)) \
                 * tanh_s({k} * (x + {c} * x * x * x))) * {k} * (1.0 + 3.0 * {c} * x * x)"
            )
        }
        UnaryOp::Silu => "sigm(x) * (1.0 + x * (1.0 - sigm(x)))".into(),
        UnaryOp::Softplus => "sigm(x)".into(),
        UnaryOp::Sin => "cos(x)".into(),
        UnaryOp::Cos => "-sin(x)".into(),
        UnaryOp::Powf(q) => format!("{} * powr(x, {})", lit(q), lit(q - 1.0)),
        UnaryOp::LeakyRelu(s) => format!("select({}, 1.0, x > 0.0)", lit(s)),
        UnaryOp::Clamp(lo, hi) => format!("select(0.0, 1.0, x >= {} && x <= {})", lit(lo), lit(hi)),
        UnaryOp::Hardtanh(lo, hi) => format!("select(1.0, 0.0, x <= {} || x >= {})", lit(lo), lit(hi)),
        UnaryOp::Hardswish => "select(select(x / 3.0 + 0.5, 1.0, x >= 3.0), 0.0, x <= -3.0)".into(),
        UnaryOp::Hardsigmoid => "select(0.0, 1.0 / 6.0, x > -3.0 && x < 3.0)".into(),
        UnaryOp::Affine(m, _) => lit(m),
    }
}

/// The WGSL expression of `op` on `a`, `b` ([`BinaryOp::apply`]; a
/// comparison gives 1.0 or 0.0).
fn binary_expr(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "a + b",
        BinaryOp::Sub => "a - b",
        BinaryOp::Mul => "a * b",
        BinaryOp::Div => "a / b",
        BinaryOp::Pow => "powr(a, b)",
        BinaryOp::Maximum => "select(max(a, b), nan(), isnan(a) || isnan(b))",
        BinaryOp::Minimum => "select(min(a, b), nan(), isnan(a) || isnan(b))",
        // NaN compares unequal to everything, spelled out: the compiler may
        // assume there are no NaNs.
        BinaryOp::Eq => "select(0.0, 1.0, a == b && !isnan(a) && !isnan(b))",
        BinaryOp::Ne => "select(0.0, 1.0, a != b || isnan(a) || isnan(b))",
        BinaryOp::Lt => "select(0.0, 1.0, a < b && !isnan(a) && !isnan(b))",
        BinaryOp::Le => "select(0.0, 1.0, a <= b && !isnan(a) && !isnan(b))",
        BinaryOp::Gt => "select(0.0, 1.0, a > b && !isnan(a) && !isnan(b))",
        BinaryOp::Ge => "select(0.0, 1.0, a >= b && !isnan(a) && !isnan(b))",
    }
}

/// A kernel over `n = params[0]` outputs: `body` computes output `i`.
/// Each thread computes [`crate::gpu::PER_THREAD`] outputs, `t`, `t + T`,
/// `t + 2T`, … for `T` threads in all (neighbouring threads on neighbouring
/// elements); `body` is the function of one output `i`, in which `return`
/// skips the rest of that output.
fn elementwise(bindings: &str, body: &str) -> String {
    elementwise_n(bindings, "p[0]", body)
}

/// [`elementwise`] over `count` outputs (a WGSL expression).
fn elementwise_n(bindings: &str, count: &str, body: &str) -> String {
    let per = crate::gpu::PER_THREAD;
    format!(
        "{bindings}\n{PRELUDE}\nfn item(i: u32) {{\n{body}\n}}\n@compute @workgroup_size(256)\nfn main(@builtin(global_invocation_id) gid: vec3<u32>, \
         @builtin(num_workgroups) nwg: vec3<u32>) {{\n  let t = linear(gid, nwg);\n  let threads = nwg.x * nwg.y * 256u;\n  \
         for (var e = 0u; e < {per}u; e = e + 1u) {{\n    let i = t + e * threads;\n    if (i >= {count}) {{ return; }}\n    item(i);\n  }}\n}}\n"
    )
}

/// Strided copy of `words`-word elements: `out[i] = x[layout(i)]` (layout at params[1]).
pub(crate) fn copy(words: u32) -> String {
    elementwise(
        &binds(&[("x", "read", "array<u32>"), ("out", "read_write", "array<u32>"), ("p", "read", "array<u32>")]),
        &format!(
            "  let s = strided(i, 1u);\n  for (var w = 0u; w < {words}u; w = w + 1u) {{ out[i * {words}u + w] = x[s * {words}u + w]; }}"
        ),
    )
}

/// `out[i] = op(x[layout(i)])` (layout at params[1]).
pub(crate) fn unary(op: UnaryOp) -> String {
    elementwise(
        &binds(&[("xs", "read", "array<f32>"), ("out", "read_write", "array<f32>"), ("p", "read", "array<u32>")]),
        &format!("  let x = xs[strided(i, 1u)];\n  out[i] = {};", unary_expr(op)),
    )
}

/// `out[i] = g[i] · op'(x[i], y[i])`.
pub(crate) fn unary_backward(op: UnaryOp) -> String {
    elementwise(
        &binds(&[
            ("xs", "read", "array<f32>"),
            ("ys", "read", "array<f32>"),
            ("gs", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        &format!("  let x = xs[i];\n  let y = ys[i];\n  out[i] = gs[i] * ({});", derivative_expr(op)),
    )
}

/// `out[i] = op(a[la(i)], b[lb(i)])`, layouts at params[1] and params[at_b];
/// a comparison stores 0/1 words (a `bool` tensor).
pub(crate) fn binary(op: BinaryOp, at_b: u32) -> String {
    let (ty, store) = if op.is_comparison() { ("u32", "u32(v)") } else { ("f32", "v") };
    elementwise(
        &binds(&[
            ("xa", "read", "array<f32>"),
            ("xb", "read", "array<f32>"),
            ("out", "read_write", &format!("array<{ty}>")),
            ("p", "read", "array<u32>"),
        ]),
        &format!(
            "  let a = xa[strided(i, 1u)];\n  let b = xb[strided(i, {at_b}u)];\n  let v = {};\n  out[i] = {store};",
            binary_expr(op)
        ),
    )
}

/// A reduction: output `o` folds the `params[1]` elements at
/// `kept(o) + reduced(r)` (kept layout at params[2], reduced at params[at_r]).
/// The arg ops store the winning `r` as an `i64` (two words).
pub(crate) fn reduce(op: ReduceOp, at_r: u32) -> String {
    let (init, step, store, out_ty) = match op {
        ReduceOp::Sum => ("0.0", "acc = acc + v;", "out[i] = acc;", "f32"),
        ReduceOp::Prod => ("1.0", "acc = acc * v;", "out[i] = acc;", "f32"),
        ReduceOp::Max => (
            "-bitcast<f32>(0x7f800000u)",
            "if (isnan(v) || v > acc) { acc = v; } if (isnan(acc)) { break; }",
            "out[i] = acc;",
            "f32",
        ),
        ReduceOp::Min => (
            "bitcast<f32>(0x7f800000u)",
            "if (isnan(v) || v < acc) { acc = v; } if (isnan(acc)) { break; }",
            "out[i] = acc;",
            "f32",
        ),
        ReduceOp::ArgMax => (
            "-bitcast<f32>(0x7f800000u)",
            "if (r == 0u || (!isnan(acc) && (isnan(v) || v > acc))) { acc = v; best = r; }",
            "out[2u * i] = best; out[2u * i + 1u] = 0u;",
            "u32",
        ),
        ReduceOp::ArgMin => (
            "bitcast<f32>(0x7f800000u)",
            "if (r == 0u || (!isnan(acc) && (isnan(v) || v < acc))) { acc = v; best = r; }",
            "out[2u * i] = best; out[2u * i + 1u] = 0u;",
            "u32",
        ),
    };
    elementwise(
        &binds(&[
            ("xs", "read", "array<f32>"),
            ("out", "read_write", &format!("array<{out_ty}>")),
            ("p", "read", "array<u32>"),
        ]),
        &format!(
            "  let base = strided(i, 2u);\n  var acc: f32 = {init};\n  var best = 0u;\n  for (var r = 0u; r < p[1]; r = r + 1u) {{\n    let v = xs[base + strided(r, {at_r}u)];\n    {step}\n  }}\n  {store}"
        ),
    )
}

/// A reduction of `i64` elements (two words each), exact: sums with carry,
/// comparisons on the signed high word then the low word; layouts as in
/// [`reduce`]. The arg ops store the winning `r`. (No product: 64-bit
/// multiplication is not offered.)
pub(crate) fn reduce_i64(op: ReduceOp, at_r: u32) -> String {
    let (step, store) = match op {
        ReduceOp::Sum => ("acc = add64(acc, v);", "out[2u * i] = acc.x; out[2u * i + 1u] = acc.y;"),
        ReduceOp::Max => {
            ("if (r == 0u || lt64(acc, v)) { acc = v; }", "out[2u * i] = acc.x; out[2u * i + 1u] = acc.y;")
        }
        ReduceOp::Min => {
            ("if (r == 0u || lt64(v, acc)) { acc = v; }", "out[2u * i] = acc.x; out[2u * i + 1u] = acc.y;")
        }
        ReduceOp::ArgMax => {
            ("if (r == 0u || lt64(acc, v)) { acc = v; best = r; }", "out[2u * i] = best; out[2u * i + 1u] = 0u;")
        }
        ReduceOp::ArgMin => {
            ("if (r == 0u || lt64(v, acc)) { acc = v; best = r; }", "out[2u * i] = best; out[2u * i + 1u] = 0u;")
        }
        ReduceOp::Prod => unreachable!("refused by the backend"),
    };
    elementwise(
        &(binds(&[("xs", "read", "array<u32>"), ("out", "read_write", "array<u32>"), ("p", "read", "array<u32>")])
            + I64),
        &format!(
            r#"  let base = strided(i, 2u);
  var acc = vec2<u32>(0u, 0u);
  var best = 0u;
  for (var r = 0u; r < p[1]; r = r + 1u) {{
    let e = base + strided(r, {at_r}u);
    let v = vec2<u32>(xs[2u * e], xs[2u * e + 1u]);
    {step}
  }}
  {store}"#
        ),
    )
}

/// `i64` arithmetic on `(low, high)` word pairs, wrapping like Rust's
/// `wrapping_*`: sums, differences, products and signed comparison.
pub(crate) const I64: &str = r#"
fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> { let lo = a.x + b.x; return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x)); }
fn sub64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> { return vec2<u32>(a.x - b.x, a.y - b.y - select(0u, 1u, a.x < b.x)); }
// The full 64-bit product of two words: (lo, hi).
fn mul32(a: u32, b: u32) -> vec2<u32> {
  let a0 = a & 0xffffu; let a1 = a >> 16u; let b0 = b & 0xffffu; let b1 = b >> 16u;
  let p00 = a0 * b0; let p01 = a0 * b1; let p10 = a1 * b0; let p11 = a1 * b1;
  let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
  return vec2<u32>((p00 & 0xffffu) | (mid << 16u), p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u));
}
// a·b mod 2^64.
fn mul64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
  let lo = mul32(a.x, b.x);
  return vec2<u32>(lo.x, lo.y + a.x * b.y + a.y * b.x);
}
fn lt64(a: vec2<u32>, b: vec2<u32>) -> bool {
  let ah = bitcast<i32>(a.y); let bh = bitcast<i32>(b.y);
  return ah < bh || (ah == bh && a.x < b.x);
}
"#;

/// A broadcasting binary op on `i64` elements (two words each; layouts as
/// in [`binary`]): the wrapping arithmetic of the CPU's integer kernels,
/// maximum, minimum and the comparisons (into `bool` words). Division and
/// powers are refused by the backend.
pub(crate) fn binary_i64(op: BinaryOp, at_b: u32) -> String {
    let expr = match op {
        BinaryOp::Add => "add64(a, b)",
        BinaryOp::Sub => "sub64(a, b)",
        BinaryOp::Mul => "mul64(a, b)",
        BinaryOp::Maximum => "select(a, b, lt64(a, b))",
        BinaryOp::Minimum => "select(a, b, lt64(b, a))",
        BinaryOp::Eq => "all(a == b)",
        BinaryOp::Ne => "any(a != b)",
        BinaryOp::Lt => "lt64(a, b)",
        BinaryOp::Le => "!lt64(b, a)",
        BinaryOp::Gt => "lt64(b, a)",
        BinaryOp::Ge => "!lt64(a, b)",
        BinaryOp::Div | BinaryOp::Pow => unreachable!("refused by the backend"),
    };
    let store = if op.is_comparison() { "out[i] = u32(v);" } else { "out[2u * i] = v.x; out[2u * i + 1u] = v.y;" };
    elementwise(
        &(binds(&[
            ("xa", "read", "array<u32>"),
            ("xb", "read", "array<u32>"),
            ("out", "read_write", "array<u32>"),
            ("p", "read", "array<u32>"),
        ]) + I64),
        &format!(
            "  let sa = strided(i, 1u); let sb = strided(i, {at_b}u);\n  let a = vec2<u32>(xa[2u * sa], xa[2u * sa + 1u]);\n  \
             let b = vec2<u32>(xb[2u * sb], xb[2u * sb + 1u]);\n  let v = {expr};\n  {store}"
        ),
    )
}

/// The matmul kernels' bindings: A, B, C and the params.
fn matmul_bindings() -> String {
    binds(&[
        ("xa", "read", "array<f32>"),
        ("xb", "read", "array<f32>"),
        ("out", "read_write", "array<f32>"),
        ("p", "read", "array<u32>"),
    ])
}

/// Batched `C = A·B` on strided operands, 16x16 tiles in workgroup memory,
/// one output per thread (for small products): params `[m, k, n, a_offset,
/// a_rs, a_cs, b_offset, b_rs, b_cs, batch layouts…]` (the batch offsets of
/// A and B from layouts at params[9] and params[at_bb]); workgroup `(x, y,
/// z)` computes tile `(y, x)` of batch entry `z`.
pub(crate) fn matmul(at_bb: u32) -> String {
    let bindings = matmul_bindings();
    format!(
        r#"{bindings}
{PRELUDE}
var<workgroup> ta: array<array<f32, 16>, 16>;
var<workgroup> tb: array<array<f32, 16>, 16>;
@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{
  let m = p[0]; let k = p[1]; let n = p[2];
  let z = wid.z;
  let a0 = p[3] + strided(z, 9u);
  let b0 = p[6] + strided(z, {at_bb}u);
  let row = wid.y * 16u + lid.y;
  let col = wid.x * 16u + lid.x;
  var acc = 0.0;
  for (var t = 0u; t < k; t = t + 16u) {{
    let ka = t + lid.x;
    ta[lid.y][lid.x] = select(0.0, xa[a0 + row * p[4] + ka * p[5]], row < m && ka < k);
    let kb = t + lid.y;
    tb[lid.y][lid.x] = select(0.0, xb[b0 + kb * p[7] + col * p[8]], kb < k && col < n);
    workgroupBarrier();
    for (var q = 0u; q < 16u; q = q + 1u) {{ acc = acc + ta[lid.y][q] * tb[q][lid.x]; }}
    workgroupBarrier();
  }}
  if (row < m && col < n) {{ out[(z * m + row) * n + col] = acc; }}
}}
"#
    )
}

/// Side of the output tile of [`matmul_blocked`]: 64x64 per workgroup of
/// 16x16 threads, each thread a 4x4 block of outputs kept in registers.
pub(crate) const BLOCK: usize = 64;

/// How [`matmul_blocked`] loads an operand's tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TileLoad {
    /// Four scalar loads per thread, along the contiguous dim where there is one.
    Scalar,
    /// One `vec4` load per thread along the reduction dim `k` (contiguous,
    /// with the other stride, the offsets and `k` multiples of 4).
    Vec4AlongK,
    /// One `vec4` load per thread along the output dim (m for A, n for B).
    Vec4AlongOut,
}

/// The register-blocked matmul for larger products (same params and batch
/// handling as [`matmul`]): per step a 64x16 slice of A and a 16x64 slice of
/// B go to workgroup memory (four elements per thread each: one `vec4` load
/// where the operand's layout allows it, else four scalar loads along its
/// contiguous dim), then every thread accumulates its 4x4 block from 4 + 4
/// loads per k.
pub(crate) fn matmul_blocked(at_bb: u32, load_a: TileLoad, load_b: TileLoad) -> String {
    // A and B as scalars or as vec4s, as they load.
    let ty = |load| if load == TileLoad::Scalar { ("", "array<f32>") } else { ("4", "array<vec4<f32>>") };
    let ((sa, ta), (sb, tb)) = (ty(load_a), ty(load_b));
    let bindings = binds(&[
        (&format!("xa{sa}"), "read", ta),
        (&format!("xb{sb}"), "read", tb),
        ("out", "read_write", "array<f32>"),
        ("p", "read", "array<u32>"),
    ]);
    let a = match load_a {
        TileLoad::Scalar => {
            r#"    for (var i = 0u; i < 4u; i = i + 1u) {
      let e = tid + i * 256u;
      var r = e / 16u; var kk = e % 16u;
      if (!a_k_fast) { r = e % 64u; kk = e / 64u; }
      let gr = row0 + r; let gk = t + kk;
      ta[kk * 64u + r] = select(0.0, xa[a0 + gr * a_rs + gk * a_cs], gr < m && gk < k);
    }"#
        }
        TileLoad::Vec4AlongK => {
            r#"    {
      let r = tid / 4u; let kq = (tid % 4u) * 4u;
      let gr = row0 + r; let gk = t + kq;
      var v = vec4<f32>(0.0);
      if (gr < m && gk < k) { v = xa4[(a0 + gr * a_rs + gk) / 4u]; }
      for (var u = 0u; u < 4u; u = u + 1u) { ta[(kq + u) * 64u + r] = v[u]; }
    }"#
        }
        TileLoad::Vec4AlongOut => {
            r#"    {
      let rq = (tid % 16u) * 4u; let kk = tid / 16u;
      let gr = row0 + rq; let gk = t + kk;
      var v = vec4<f32>(0.0);
      if (gr < m && gk < k) { v = xa4[(a0 + gr + gk * a_cs) / 4u]; }
      for (var u = 0u; u < 4u; u = u + 1u) { ta[kk * 64u + rq + u] = v[u]; }
    }"#
        }
    };
    let b = match load_b {
        TileLoad::Scalar => {
            r#"    for (var i = 0u; i < 4u; i = i + 1u) {
      let e = tid + i * 256u;
      var c = e % 64u; var kb = e / 64u;
      if (!b_n_fast) { c = e / 16u; kb = e % 16u; }
      let gc = col0 + c; let gkb = t + kb;
      tb[kb * 64u + c] = select(0.0, xb[b0 + gkb * b_rs + gc * b_cs], gc < n && gkb < k);
    }"#
        }
        TileLoad::Vec4AlongK => {
            r#"    {
      let c = tid / 4u; let kq = (tid % 4u) * 4u;
      let gc = col0 + c; let gk = t + kq;
      var v = vec4<f32>(0.0);
      if (gc < n && gk < k) { v = xb4[(b0 + gk + gc * b_cs) / 4u]; }
      for (var u = 0u; u < 4u; u = u + 1u) { tb[(kq + u) * 64u + c] = v[u]; }
    }"#
        }
        TileLoad::Vec4AlongOut => {
            r#"    {
      let cq = (tid % 16u) * 4u; let kb = tid / 16u;
      let gc = col0 + cq; let gk = t + kb;
      var v = vec4<f32>(0.0);
      if (gc < n && gk < k) { v = xb4[(b0 + gk * b_rs + gc) / 4u]; }
      for (var u = 0u; u < 4u; u = u + 1u) { tb[kb * 64u + cq + u] = v[u]; }
    }"#
        }
    };
    format!(
        r#"{bindings}
{PRELUDE}
var<workgroup> ta: array<f32, 1024>; // [k][m], 16 x 64
var<workgroup> tb: array<f32, 1024>; // [k][n], 16 x 64
@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{
  let m = p[0]; let k = p[1]; let n = p[2];
  let a_rs = p[4]; let a_cs = p[5]; let b_rs = p[7]; let b_cs = p[8];
  let z = wid.z;
  let a0 = p[3] + strided(z, 9u);
  let b0 = p[6] + strided(z, {at_bb}u);
  let row0 = wid.y * 64u; let col0 = wid.x * 64u;
  let tid = lid.y * 16u + lid.x;
  // A row-major along k (a_cs == 1) loads k fastest, else m fastest; B likewise.
  let a_k_fast = a_cs == 1u; let b_n_fast = b_cs == 1u;
  var acc: array<f32, 16>;
  for (var i = 0u; i < 16u; i = i + 1u) {{ acc[i] = 0.0; }}
  for (var t = 0u; t < k; t = t + 16u) {{
{a}
{b}
    workgroupBarrier();
    for (var q = 0u; q < 16u; q = q + 1u) {{
      let a = vec4<f32>(ta[q * 64u + lid.y * 4u], ta[q * 64u + lid.y * 4u + 1u], ta[q * 64u + lid.y * 4u + 2u], ta[q * 64u + lid.y * 4u + 3u]);
      let b = vec4<f32>(tb[q * 64u + lid.x * 4u], tb[q * 64u + lid.x * 4u + 1u], tb[q * 64u + lid.x * 4u + 2u], tb[q * 64u + lid.x * 4u + 3u]);
      for (var i = 0u; i < 4u; i = i + 1u) {{
        acc[i * 4u] = acc[i * 4u] + a[i] * b.x;
        acc[i * 4u + 1u] = acc[i * 4u + 1u] + a[i] * b.y;
        acc[i * 4u + 2u] = acc[i * 4u + 2u] + a[i] * b.z;
        acc[i * 4u + 3u] = acc[i * 4u + 3u] + a[i] * b.w;
      }}
    }}
    workgroupBarrier();
  }}
  for (var i = 0u; i < 4u; i = i + 1u) {{
    let r = row0 + lid.y * 4u + i;
    if (r >= m) {{ continue; }}
    for (var j = 0u; j < 4u; j = j + 1u) {{
      let c = col0 + lid.x * 4u + j;
      if (c < n) {{ out[(z * m + r) * n + c] = acc[i * 4u + j]; }}
    }}
  }}
}}
"#
    )
}

/// Softmax (or log-softmax) of each contiguous row of `params[1]` columns,
/// one workgroup per row (rows `wid.x + wid.y · 65535`, `params[0]` of them).
pub(crate) fn softmax(log: bool) -> String {
    let write =
        if log { "out[base + c] = xs[base + c] - mx - log(s);" } else { "out[base + c] = exp(xs[base + c] - mx) / s;" };
    rows_kernel(
        &binds(&[("xs", "read", "array<f32>"), ("out", "read_write", "array<f32>"), ("p", "read", "array<u32>")]),
        &format!(
            r#"  var v = -bitcast<f32>(0x7f800000u);
  for (var c = lid.x; c < cols; c = c + 256u) {{ let x = xs[base + c]; if (isnan(x) || x > v) {{ v = x; }} }}
  let mx = reduce_max(v, lid.x);
  var e = 0.0;
  for (var c = lid.x; c < cols; c = c + 256u) {{ e = e + select(exp(xs[base + c] - mx), 0.0, mx == -bitcast<f32>(0x7f800000u)); }}
  let s = reduce_sum(e, lid.x);
  for (var c = lid.x; c < cols; c = c + 256u) {{ {write} }}"#
        ),
    )
}

/// The backward of [`softmax`] from its output `y` and gradient `g`:
/// `y·(g − Σ g·y)`, or for log-softmax `g − exp(y)·Σ g`.
pub(crate) fn softmax_backward(log: bool) -> String {
    let (acc, write) = if log {
        ("gs[base + c]", "out[base + c] = gs[base + c] - exp(ys[base + c]) * s;")
    } else {
        ("gs[base + c] * ys[base + c]", "out[base + c] = ys[base + c] * (gs[base + c] - s);")
    };
    rows_kernel(
        &binds(&[
            ("ys", "read", "array<f32>"),
            ("gs", "read", "array<f32>"),
            ("out", "read_write", "array<f32>"),
            ("p", "read", "array<u32>"),
        ]),
        &format!(
            "  var e = 0.0;\n  for (var c = lid.x; c < cols; c = c + 256u) {{ e = e + {acc}; }}\n  let s = reduce_sum(e, lid.x);\n  for (var c = lid.x; c < cols; c = c + 256u) {{ {write} }}"
        ),
    )
}

/// A kernel with one 256-thread workgroup per row and workgroup reductions.
fn rows_kernel(bindings: &str, body: &str) -> String {
    format!(
        r#"{bindings}
{PRELUDE}
var<workgroup> red: array<f32, 256>;
fn reduce_sum(v: f32, t: u32) -> f32 {{
  red[t] = v; workgroupBarrier();
  for (var s = 128u; s > 0u; s = s >> 1u) {{ if (t < s) {{ red[t] = red[t] + red[t + s]; }} workgroupBarrier(); }}
  let r = red[0]; workgroupBarrier(); return r;
}}
fn reduce_max(v: f32, t: u32) -> f32 {{
  red[t] = v; workgroupBarrier();
  for (var s = 128u; s > 0u; s = s >> 1u) {{
    if (t < s) {{ let o = red[t + s]; if (isnan(o) || o > red[t]) {{ red[t] = o; }} }}
    workgroupBarrier();
  }}
  let r = red[0]; workgroupBarrier(); return r;
}}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {{
  let row = wid.x + wid.y * 65535u;
  if (row >= p[0]) {{ return; }}
  let cols = p[1];
  let base = row * cols;
{body}
}}
"#
    )
}

/// Converts between the device dtypes: `kind` names the source and target
/// (`f32`, `u32` for bool, `i32`, `i64` as two words) per element.
pub(crate) fn convert(src: &str, dst: &str) -> String {
    let ints = ["bool", "i32", "i64"];
    if ints.contains(&src) && ints.contains(&dst) {
        return convert_int(src, dst);
    }
    let read = match src {
        "f32" => "let v = bitcast<f32>(x[i]);",
        "bool" => "let v = f32(x[i] != 0u);",
        "i32" => "let v = f32(bitcast<i32>(x[i]));",
        _ => "let v = f32(bitcast<i32>(x[2u * i + 1u])) * 4294967296.0 + f32(x[2u * i]);",
    };
    let write = match dst {
        "f32" => "out[i] = bitcast<u32>(v);",
        "bool" => "out[i] = u32(v != 0.0);",
        "i32" => "out[i] = bitcast<u32>(i32(trunc(v)));",
        // Exact through i32 below 2^31; above, t and the remainder are
        // multiples of 256 below 2^32, which f32 holds exactly.
        _ => {
            "let t = trunc(v); if (abs(t) < 2147483648.0) { let k = i32(t); out[2u * i] = bitcast<u32>(k); out[2u * i + 1u] = select(0u, 0xffffffffu, k < 0); } else { let hi = floor(t / 4294967296.0); out[2u * i] = u32(t - hi * 4294967296.0); out[2u * i + 1u] = bitcast<u32>(i32(hi)); }"
        }
    };
    elementwise(
        &binds(&[("x", "read", "array<u32>"), ("out", "read_write", "array<u32>"), ("p", "read", "array<u32>")]),
        &format!("  {read}\n  {write}"),
    )
}

/// Between the integer dtypes exactly (not through `f32`): `i64` to `i32`
/// keeps the low word (Rust's `as`), `i32` to `i64` extends the sign, and
/// `bool` is whether the value is non-zero.
fn convert_int(src: &str, dst: &str) -> String {
    let read = match src {
        "bool" => "let v = vec2<u32>(u32(x[i] != 0u), 0u);",
        "i32" => "let v = vec2<u32>(x[i], select(0u, 0xffffffffu, bitcast<i32>(x[i]) < 0));",
        _ => "let v = vec2<u32>(x[2u * i], x[2u * i + 1u]);",
    };
    let write = match dst {
        "bool" => "out[i] = u32(any(v != vec2<u32>(0u)));",
        "i32" => "out[i] = v.x;",
        _ => "out[2u * i] = v.x; out[2u * i + 1u] = v.y;",
    };
    elementwise(
        &binds(&[("x", "read", "array<u32>"), ("out", "read_write", "array<u32>"), ("p", "read", "array<u32>")]),
        &format!("  {read}\n  {write}"),
    )
}
