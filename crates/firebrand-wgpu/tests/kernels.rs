//! Every wgpu kernel against the CPU backend's on awkward shapes: size 1,
//! odd sizes, more elements than one workgroup, transposed and broadcast
//! (stride 0) views, NaN and infinities, and matmul depths beyond one tile.
//! Tolerances are scaled by the largest magnitude of the expected values.
//!
//! Without an adapter the tests say so and pass, except under `CI=true`,
//! where a missing adapter fails (CI installs Mesa's lavapipe).

use firebrand_ops::CPU;
use firebrand_tensor::backend::{Backend, Fused, Storage};
use firebrand_tensor::op::{ALL_UNARY_OPS, BinaryOp, ReduceOp, UnaryOp, Window2d};
use firebrand_tensor::{CpuStorage, DType, Layout, Shape};

/// The backend of `wgpu:0`, or `None` (after saying why) when there is none.
fn device() -> Option<&'static dyn Backend> {
    match firebrand_wgpu::init(0) {
        Ok(()) => {
            Some(firebrand_tensor::backend::registered_backend(firebrand_tensor::Device::Wgpu(0), "test").unwrap())
        }
        Err(e) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but no wgpu adapter: {e}");
            eprintln!("SKIPPED: no wgpu adapter ({e})");
            None
        }
    }
}

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn f32s(s: &Storage) -> Vec<f32> {
    match &s.to_cpu() {
        CpuStorage::F32(v) => v.clone(),
        other => panic!("expected f32, got {:?}", other.dtype()),
    }
}

/// Values equal up to `tol` times the largest expected magnitude; NaN where NaN.
fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().filter(|v| v.is_finite()).fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= tol * scale
        };
        assert!(ok, "{what}[{i}]: wgpu {g} vs cpu {w} (scale {scale})");
    }
}

/// The same buffer on both backends.
fn both(dev: &dyn Backend, v: &[f32]) -> (Storage, Storage) {
    (CPU.upload(CpuStorage::F32(v.to_vec())).unwrap(), dev.upload(CpuStorage::F32(v.to_vec())).unwrap())
}

/// Contiguous, transposed, broadcast and offset views of a small buffer.
fn layouts() -> Vec<Layout> {
    let c = Layout::contiguous(Shape::from(vec![3, 5, 7]));
    vec![
        Layout::contiguous(Shape::from(vec![1])),
        Layout::contiguous(Shape::from(vec![257, 3])),
        c.clone(),
        c.transpose(0, 2).unwrap(),
        Layout::contiguous(Shape::from(vec![5, 1])).broadcast_as(&Shape::from(vec![4, 5, 3])).unwrap(),
        c.narrow(1, 2, 3).unwrap(),
    ]
}

#[test]
fn strided_copies_and_dtype_conversions() {
    let Some(dev) = device() else { return };
    let v = data(800, 1);
    let (c, g) = both(dev, &v);
    for l in layouts() {
        close(
            &format!("contiguous {l:?}"),
            &f32s(&dev.contiguous(&*g, &l).unwrap()),
            &f32s(&CPU.contiguous(&*c, &l).unwrap()),
            0.0,
        );
    }
    let l = Layout::contiguous(Shape::from(vec![800]));
    let gi = dev.to_dtype(&*g, &l, DType::I64).unwrap();
    assert_eq!(gi.to_cpu(), CPU.to_dtype(&*c, &l, DType::I64).unwrap().to_cpu(), "f32 -> i64 truncates toward zero");
    let ints = CpuStorage::I64(vec![0, -1, 5, -123_456, 1 << 40]);
    let (ci, di) = (CPU.upload(ints.clone()).unwrap(), dev.upload(ints).unwrap());
    let l5 = Layout::contiguous(Shape::from(vec![5]));
    assert_eq!(di.to_cpu(), ci.to_cpu(), "i64 round trip");
    close(
        "i64 -> f32",
        &f32s(&dev.to_dtype(&*di, &l5, DType::F32).unwrap()),
        &f32s(&CPU.to_dtype(&*ci, &l5, DType::F32).unwrap()),
        1e-7,
    );
    let b = CpuStorage::Bool(vec![true, false, true]);
    assert_eq!(dev.upload(b.clone()).unwrap().to_cpu(), b);
}

#[test]
fn half_precision_storage_and_conversions() {
    let Some(dev) = device() else { return };
    // Ties, overflow, subnormals of each format, underflow, NaN, infinities,
    // and random values; an odd count, so the last word holds one half.
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        65504.0,
        65519.0,
        65520.0,
        -1e6,
        1e-5,
        6e-8,
        2e-8,
        1e-40,
        3e38,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1.0 / 3.0,
        -2.5e-6,
    ];
    v.extend(data(1001, 12));
    let n = v.len();
    let (c, g) = both(dev, &v);
    let flat = Layout::contiguous(Shape::from(vec![n]));
    for dt in [DType::F16, DType::BF16] {
        let (ch, gh) = (CPU.to_dtype(&*c, &flat, dt).unwrap(), dev.to_dtype(&*g, &flat, dt).unwrap());
        same(&format!("f32 -> {dt}"), &gh, &ch);
        // Upload and readback keep the bits; widening is exact.
        same(&format!("{dt} round trip"), &dev.upload(ch.to_cpu()).unwrap(), &ch);
        same(
            &format!("{dt} -> f32"),
            &dev.to_dtype(&*gh, &flat, DType::F32).unwrap(),
            &CPU.to_dtype(&*ch, &flat, DType::F32).unwrap(),
        );
        for to in [DType::I64, DType::Bool, DType::I32] {
            // NaN and the infinities have no integer value; compare the finite rest.
            let l = Layout::contiguous(Shape::from(vec![n])).narrow(0, 17, n - 17).unwrap();
            same(&format!("{dt} -> {to}"), &dev.to_dtype(&*gh, &l, to).unwrap(), &CPU.to_dtype(&*ch, &l, to).unwrap());
        }
        let other = if dt == DType::F16 { DType::BF16 } else { DType::F16 };
        same(
            &format!("{dt} -> {other}"),
            &dev.to_dtype(&*gh, &flat, other).unwrap(),
            &CPU.to_dtype(&*ch, &flat, other).unwrap(),
        );
        // Strided copies: a transposed view with odd sides, and an offset one.
        let t = Layout::contiguous(Shape::from(vec![5, 7])).transpose(0, 1).unwrap();
        let o = Layout::contiguous(Shape::from(vec![n])).narrow(0, 3, 30).unwrap();
        for l in [t, o] {
            same(&format!("{dt} copy {l:?}"), &dev.contiguous(&*gh, &l).unwrap(), &CPU.contiguous(&*ch, &l).unwrap());
        }
        // Storage only: computing on halves is a typed error naming the op.
        let Err(err) = dev.unary(UnaryOp::Relu, &*gh, &flat) else { panic!("f16 compute refused") };
        assert!(err.to_string().contains("to_dtype(F32)"), "{err}");
        assert!(dev.reduce(ReduceOp::Sum, &*gh, &flat, &[true]).is_err());
    }
}

#[test]
fn the_unary_table_and_its_backward() {
    let Some(dev) = device() else { return };
    let mut v = data(1000, 2);
    v[..8].copy_from_slice(&[0.0, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 3.0, -3.0, 6.0]);
    let pos: Vec<f32> = v.iter().map(|x| x.abs() + 0.1).collect();
    // The table, and parameters it does not hold: integer powers of negative
    // bases, a square root, ReLU6's bounds (0 and 6 are in the data).
    let extra = [
        UnaryOp::Powf(2.0),
        UnaryOp::Powf(3.0),
        UnaryOp::Powf(0.5),
        UnaryOp::Clamp(-1.0, 1.5),
        UnaryOp::Hardtanh(0.0, 6.0),
        UnaryOp::Affine(2.5, -1.0),
    ];
    // Ops whose domain is the positive reals get positive inputs.
    let positive = |op: UnaryOp| matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Powf(0.5));
    for op in ALL_UNARY_OPS.iter().copied().chain(extra) {
        let input = if positive(op) { &pos } else { &v };
        // The finite part only: drivers differ on sin/cos of infinity and similar.
        let finite: Vec<f32> = input
            .iter()
            .map(|x| if x.is_finite() || matches!(op, UnaryOp::Relu | UnaryOp::Abs | UnaryOp::Neg) { *x } else { 0.5 })
            .collect();
        let (c, g) = both(dev, &finite);
        let l = Layout::contiguous(Shape::from(vec![finite.len()]));
        let (yc, yg) = (CPU.unary(op, &*c, &l).unwrap(), dev.unary(op, &*g, &l).unwrap());
        close(op.name(), &f32s(&yg), &f32s(&yc), 2e-6);
        let gr = data(finite.len(), 3);
        let (gc, gg) = both(dev, &gr);
        let want = f32s(&CPU.unary_backward(op, &*c, &*yc, &*gc).unwrap());
        let got = f32s(&dev.unary_backward(op, &*g, &*yg, &*gg).unwrap());
        close(&format!("{} backward", op.name()), &got, &want, 2e-5);
        // A transposed view.
        let v2 = data(35, 4).iter().map(|x| if positive(op) { x.abs() + 0.1 } else { *x }).collect::<Vec<_>>();
        let (c2, g2) = both(dev, &v2);
        let t = Layout::contiguous(Shape::from(vec![5, 7])).transpose(0, 1).unwrap();
        close(
            &format!("{} transposed", op.name()),
            &f32s(&dev.unary(op, &*g2, &t).unwrap()),
            &f32s(&CPU.unary(op, &*c2, &t).unwrap()),
            2e-6,
        );
    }
}

#[test]
fn integer_binary_ops_and_conversions_are_exact() {
    let Some(dev) = device() else { return };
    // Values past 2^24 and 2^32, negatives, and products that wrap.
    let a: Vec<i64> = (0..3 * 5 * 7)
        .map(|i: i64| ((i - 50) * 123_456_789_013).wrapping_add(if i % 3 == 0 { i64::MIN + i } else { i }))
        .collect();
    let b: Vec<i64> = vec![-7, 0, 1 << 40, 99_999_999_999, i64::MAX];
    let shape = Shape::from(vec![3, 5, 7]);
    let la = Layout::contiguous(shape.clone()).transpose(0, 2).unwrap().transpose(0, 2).unwrap();
    let lb = Layout::contiguous(Shape::from(vec![5, 1])).broadcast_as(&shape).unwrap();
    let ops = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
        BinaryOp::Eq,
        BinaryOp::Ne,
        BinaryOp::Lt,
        BinaryOp::Le,
        BinaryOp::Gt,
        BinaryOp::Ge,
    ];
    let i32s = |v: &[i64]| CpuStorage::I32(v.iter().map(|&x| x as i32).collect());
    let bools = |v: &[i64]| CpuStorage::Bool(v.iter().map(|&x| x % 2 != 0).collect());
    for (what, ca, cb) in [("i64", i64s(&a), i64s(&b)), ("i32", i32s(&a), i32s(&b)), ("bool", bools(&a), bools(&b))] {
        let (ga, gb) = (dev.upload(ca.clone()).unwrap(), dev.upload(cb.clone()).unwrap());
        let (ca, cb) = (CPU.upload(ca).unwrap(), CPU.upload(cb).unwrap());
        for op in ops {
            if what == "bool" && op == BinaryOp::Sub {
                assert!(dev.binary(op, &*ga, &la, &*gb, &lb).is_err());
                continue;
            }
            let want = CPU.binary(op, &*ca, &la, &*cb, &lb).unwrap();
            same(&format!("{what} {}", op.name()), &dev.binary(op, &*ga, &la, &*gb, &lb).unwrap(), &want);
        }
        // Division and powers of integers stay on the CPU: a typed error here.
        assert!(dev.binary(BinaryOp::Div, &*ga, &la, &*gb, &lb).is_err());
        // Conversions among the integer dtypes, exact (i64 -> i32 keeps the low word).
        for to in [DType::I64, DType::I32, DType::Bool] {
            let want = CPU.to_dtype(&*ca, &la, to).unwrap();
            same(&format!("{what} -> {to}"), &dev.to_dtype(&*ga, &la, to).unwrap(), &want);
        }
    }
}

#[test]
fn broadcasting_binary_ops_and_comparisons() {
    let Some(dev) = device() else { return };
    let mut a = data(3 * 5 * 7, 5);
    a[0] = f32::NAN;
    let b = data(5, 6);
    let (ca, ga) = both(dev, &a);
    let (cb, gb) = both(dev, &b);
    let shape = Shape::from(vec![3, 5, 7]);
    let la = Layout::contiguous(shape.clone()).transpose(0, 2).unwrap().transpose(0, 2).unwrap();
    let lb = Layout::contiguous(Shape::from(vec![5, 1])).broadcast_as(&shape).unwrap();
    for op in [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
        BinaryOp::Eq,
        BinaryOp::Ne,
        BinaryOp::Lt,
        BinaryOp::Le,
        BinaryOp::Gt,
        BinaryOp::Ge,
    ] {
        let want = CPU.binary(op, &*ca, &la, &*cb, &lb).unwrap();
        let got = dev.binary(op, &*ga, &la, &*gb, &lb).unwrap();
        if op.is_comparison() {
            assert_eq!(got.to_cpu(), want.to_cpu(), "{}", op.name());
        } else {
            close(op.name(), &f32s(&got), &f32s(&want), 2e-6);
        }
    }
}

#[test]
fn reductions_over_any_axes() {
    let Some(dev) = device() else { return };
    let mut v = data(4 * 6 * 9, 7);
    v[10] = f32::NAN;
    let (c, g) = both(dev, &v);
    let l = Layout::contiguous(Shape::from(vec![4, 6, 9]));
    let views = [l.clone(), l.transpose(0, 2).unwrap()];
    for view in &views {
        for axes in [[true, true, true], [false, false, true], [true, false, true], [false, true, false]] {
            for op in [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Max, ReduceOp::Min, ReduceOp::ArgMax, ReduceOp::ArgMin]
            {
                let want = CPU.reduce(op, &*c, view, &axes).unwrap();
                let got = dev.reduce(op, &*g, view, &axes).unwrap();
                if matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin) {
                    assert_eq!(got.to_cpu(), want.to_cpu(), "{} {axes:?}", op.name());
                } else {
                    close(&format!("{} {axes:?}", op.name()), &f32s(&got), &f32s(&want), 1e-5);
                }
            }
        }
    }
}

#[test]
fn integer_and_bool_reductions_are_exact() {
    let Some(dev) = device() else { return };
    // i64 values around the 32-bit carry and the sign, over 300 rows.
    let v: Vec<i64> = (0..600).map(|i| (i as i64 - 300) * 4_000_000_017 + (i % 7) as i64).collect();
    let (c, g) = (CPU.upload(i64s(&v)).unwrap(), dev.upload(i64s(&v)).unwrap());
    let l = Layout::contiguous(Shape::from(vec![300, 2]));
    for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min, ReduceOp::ArgMax, ReduceOp::ArgMin] {
        for axes in [[true, false], [false, true], [true, true]] {
            let what = format!("{op:?} {axes:?}");
            same(&what, &dev.reduce(op, &*g, &l, &axes).unwrap(), &CPU.reduce(op, &*c, &l, &axes).unwrap());
        }
    }
    assert!(dev.reduce(ReduceOp::Prod, &*g, &l, &[true, false]).is_err());
    let bools: Vec<bool> = (0..600).map(|i| i % 5 != 0 || i > 590).collect();
    let (c, g) = (CPU.upload(CpuStorage::Bool(bools.clone())).unwrap(), dev.upload(CpuStorage::Bool(bools)).unwrap());
    let l = Layout::contiguous(Shape::from(vec![2, 300])).transpose(0, 1).unwrap();
    for op in [ReduceOp::Max, ReduceOp::Min, ReduceOp::Sum, ReduceOp::ArgMax] {
        same(
            &format!("bool {op:?}"),
            &dev.reduce(op, &*g, &l, &[true, false]).unwrap(),
            &CPU.reduce(op, &*c, &l, &[true, false]).unwrap(),
        );
    }
}

#[test]
fn batched_matmul_on_strided_operands() {
    let Some(dev) = device() else { return };
    // Small products (one output per thread) and register-blocked ones with
    // edges that do not fill a 64x64 tile or a 16-deep step.
    for (batch, m, k, n) in [
        (1, 1, 1, 1),
        (1, 17, 33, 19),
        (3, 5, 40, 2),
        (2, 64, 16, 48),
        (2, 70, 37, 65),
        (1, 130, 129, 33),
        (2, 68, 36, 132),
    ] {
        let a = data(batch * m * k, 8);
        let b = data(batch * k * n, 9);
        let (ca, ga) = both(dev, &a);
        let (cb, gb) = both(dev, &b);
        // A as stored, B as the transpose of a (batch, n, k) buffer.
        let la = Layout::contiguous(Shape::from(vec![batch, m, k]));
        let lb = Layout::contiguous(Shape::from(vec![batch, n, k])).transpose(1, 2).unwrap();
        let want = f32s(&CPU.matmul(&*ca, &la, &*cb, &lb).unwrap());
        let got = f32s(&dev.matmul(&*ga, &la, &*gb, &lb).unwrap());
        close(&format!("matmul {batch}x{m}x{k}x{n}"), &got, &want, 1e-5 * (k as f32).sqrt());
        // A broadcast over the batch (stride 0), B contiguous.
        let la = Layout::contiguous(Shape::from(vec![1, m, k])).broadcast_as(&Shape::from(vec![batch, m, k])).unwrap();
        let lb = Layout::contiguous(Shape::from(vec![batch, k, n]));
        let want = f32s(&CPU.matmul(&*ca, &la, &*cb, &lb).unwrap());
        let got = f32s(&dev.matmul(&*ga, &la, &*gb, &lb).unwrap());
        close(&format!("broadcast matmul {batch}x{m}x{k}x{n}"), &got, &want, 1e-5 * (k as f32).sqrt());
        // A as the transpose of a (batch, k, m) buffer: m is its contiguous dim.
        let la = Layout::contiguous(Shape::from(vec![batch, k, m])).transpose(1, 2).unwrap();
        let want = f32s(&CPU.matmul(&*ca, &la, &*cb, &lb).unwrap());
        let got = f32s(&dev.matmul(&*ga, &la, &*gb, &lb).unwrap());
        close(&format!("transposed-A matmul {batch}x{m}x{k}x{n}"), &got, &want, 1e-5 * (k as f32).sqrt());
    }
}

#[test]
fn softmax_and_its_backward() {
    let Some(dev) = device() else { return };
    for (rows, cols) in [(1, 1), (3, 7), (5, 300), (2, 1000)] {
        let mut v = data(rows * cols, 10);
        v[0] = f32::NEG_INFINITY;
        let (c, g) = both(dev, &v);
        let l = Layout::contiguous(Shape::from(vec![rows, cols]));
        for log in [false, true] {
            let (yc, yg) = (CPU.softmax(&*c, &l, log).unwrap(), dev.softmax(&*g, &l, log).unwrap());
            close(&format!("softmax {rows}x{cols} log={log}"), &f32s(&yg), &f32s(&yc), 1e-5);
            let gr = data(rows * cols, 11);
            let (gc, gg) = both(dev, &gr);
            let want = f32s(&CPU.softmax_backward(&*yc, &*gc, cols, log).unwrap());
            let got = f32s(&dev.softmax_backward(&*yg, &*gg, cols, log).unwrap());
            close(&format!("softmax backward {rows}x{cols} log={log}"), &got, &want, 1e-5);
        }
    }
}

fn i64s(v: &[i64]) -> CpuStorage {
    CpuStorage::I64(v.to_vec())
}

/// Exactly equal storages (the same dtype and bits; NaN equals NaN).
fn same(what: &str, got: &Storage, want: &Storage) {
    let (g, w) = (got.to_cpu(), want.to_cpu());
    assert_eq!(g.dtype(), w.dtype(), "{what}: dtypes");
    match (&g, &w) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => {
            assert_eq!(a.len(), b.len(), "{what}: lengths");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!(x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan(), "{what}[{i}]: wgpu {x} vs cpu {y}");
            }
        }
        _ => assert_eq!(format!("{g:?}"), format!("{w:?}"), "{what}"),
    }
}

#[test]
fn index_select_gather_and_their_scatter_adds() {
    let Some(dev) = device() else { return };
    let v = data(3 * 5 * 7, 11);
    let (c, g) = both(dev, &v);
    let idx = [4i64, 0, 4, 2, 1, 3];
    let (ci, gi) = (CPU.upload(i64s(&idx)).unwrap(), dev.upload(i64s(&idx)).unwrap());
    for l in [
        Layout::contiguous(Shape::from(vec![3, 5, 7])),
        Layout::contiguous(Shape::from(vec![7, 5, 3])).transpose(0, 2).unwrap(),
    ] {
        let want = CPU.index_select(&*c, &l, 1, &*ci).unwrap();
        same(&format!("index_select {l:?}"), &dev.index_select(&*g, &l, 1, &*gi).unwrap(), &want);
    }
    // Integer elements (two words) and the first and last dims.
    let ints: Vec<i64> = (0..15).map(|i| i * 1_000_000_007 - 5).collect();
    let (cn, gn) = (CPU.upload(i64s(&ints)).unwrap(), dev.upload(i64s(&ints)).unwrap());
    let l = Layout::contiguous(Shape::from(vec![5, 3]));
    let (i3, g3) = (CPU.upload(i64s(&[2, 0, 2])).unwrap(), dev.upload(i64s(&[2, 0, 2])).unwrap());
    same(
        "index_select i64 dim 1",
        &dev.index_select(&*gn, &l, 1, &*g3).unwrap(),
        &CPU.index_select(&*cn, &l, 1, &*i3).unwrap(),
    );
    let (i0, g0) = (CPU.upload(i64s(&idx[..5])).unwrap(), dev.upload(i64s(&idx[..5])).unwrap());
    same(
        "index_select i64 dim 0",
        &dev.index_select(&*gn, &l, 0, &*g0).unwrap(),
        &CPU.index_select(&*cn, &l, 0, &*i0).unwrap(),
    );
    // Out-of-range indices: `tests/index_errors.rs` (its own process, since
    // the device reports them to whichever readback comes next).
    // index_add: rows of (3, 6, 7) added at idx into (3, 5, 7), repeats summed.
    let src = data(3 * 6 * 7, 12);
    let (cs, gs) = both(dev, &src);
    close(
        "index_add",
        &f32s(&dev.index_add(&*gs, 3, 5, 7, &*gi).unwrap()),
        &f32s(&CPU.index_add(&*cs, 3, 5, 7, &*ci).unwrap()),
        1e-6,
    );
    // gather / scatter_add with a full index (outer 3, 4 rows, inner 7) into size 5,
    // and a large one (more threads than one workgroup, many collisions).
    for (outer, len, size, inner) in [(3usize, 4usize, 5usize, 7usize), (2, 300, 3, 5), (1, 1, 1, 1)] {
        let n = outer * len * inner;
        let index: Vec<i64> = (0..n).map(|i| ((i * 7 + i / 3) % size) as i64).collect();
        let (ci, gi) = (CPU.upload(i64s(&index)).unwrap(), dev.upload(i64s(&index)).unwrap());
        let x = data(outer * size * inner, 13);
        let (cx, gx) = both(dev, &x);
        same(
            "gather",
            &dev.gather(&*gx, outer, size, inner, &*gi).unwrap(),
            &CPU.gather(&*cx, outer, size, inner, &*ci).unwrap(),
        );
        let src = data(n, 14);
        let (cs, gs) = both(dev, &src);
        let want = f32s(&CPU.scatter_add(&*cs, outer, size, inner, &*ci).unwrap());
        close("scatter_add", &f32s(&dev.scatter_add(&*gs, outer, size, inner, &*gi).unwrap()), &want, 1e-6);
    }
}

#[test]
fn concat_of_views_and_where() {
    let Some(dev) = device() else { return };
    let (a, b) = (data(2 * 3 * 4, 21), data(2 * 5 * 4, 22));
    let ((ca, ga), (cb, gb)) = (both(dev, &a), both(dev, &b));
    let la = Layout::contiguous(Shape::from(vec![2, 3, 4]));
    // A transposed view as the second part: (2, 5, 4) read from a (4, 5, 2) buffer.
    let lb = Layout::contiguous(Shape::from(vec![4, 5, 2])).transpose(0, 2).unwrap();
    let want = CPU.concat(&[(&*ca, &la), (&*cb, &lb), (&*ca, &la)], 2, &[3, 5, 3], 4).unwrap();
    same("concat", &dev.concat(&[(&*ga, &la), (&*gb, &lb), (&*ga, &la)], 2, &[3, 5, 3], 4).unwrap(), &want);
    // where: an f32 condition with −0.0 and NaN, a bool one, over 300 elements.
    let n = 300;
    let cond: Vec<f32> = (0..n).map(|i| [0.0, -0.0, f32::NAN, 1.0, -2.0][i % 5]).collect();
    let (x, y) = (data(n, 23), data(n, 24));
    let ((cc, gc), (cx, gx), (cy, gy)) = (both(dev, &cond), both(dev, &x), both(dev, &y));
    same("where f32", &dev.where_select(&*gc, &*gx, &*gy).unwrap(), &CPU.where_select(&*cc, &*cx, &*cy).unwrap());
    let bools: Vec<bool> = (0..n).map(|i| i % 3 == 0).collect();
    let (cb, gb) = (CPU.upload(CpuStorage::Bool(bools.clone())).unwrap(), dev.upload(CpuStorage::Bool(bools)).unwrap());
    same("where bool", &dev.where_select(&*gb, &*gx, &*gy).unwrap(), &CPU.where_select(&*cb, &*cx, &*cy).unwrap());
}

/// Windows with padding, strides, dilation, and a 1x1.
fn windows() -> Vec<Window2d> {
    vec![
        Window2d::new((3, 3), (1, 1), (1, 1)),
        Window2d::new((2, 2), (2, 2), (0, 0)),
        Window2d { kernel: (3, 2), stride: (2, 1), padding: (1, 0), dilation: (2, 1) },
        Window2d::new((1, 1), (1, 1), (0, 0)),
    ]
}

#[test]
fn im2col_col2im_and_pooling() {
    let Some(dev) = device() else { return };
    let dims = [2, 3, 7, 6];
    let mut x = data(dims.iter().product(), 31);
    x[5] = f32::NAN;
    x[40] = 7.0;
    x[41] = 7.0; // a tie: the first maximum wins
    let (cx, gx) = both(dev, &x);
    for win in windows() {
        let what = format!("{win:?}");
        let cols = CPU.im2col(&*cx, dims, &win).unwrap();
        same(&format!("im2col {what}"), &dev.im2col(&*gx, dims, &win).unwrap(), &cols);
        let cv = f32s(&cols);
        let (ccols, gcols) = both(dev, &cv.iter().map(|v| if v.is_nan() { 0.5 } else { *v }).collect::<Vec<_>>());
        same(
            &format!("col2im {what}"),
            &dev.col2im(&*gcols, dims, &win).unwrap(),
            &CPU.col2im(&*ccols, dims, &win).unwrap(),
        );
        if win.padding.0 * 2 > win.kernel.0 || win.padding.1 * 2 > win.kernel.1 {
            continue;
        }
        let (cv, ci) = CPU.max_pool2d(&*cx, dims, &win).unwrap();
        let (gv, gi) = dev.max_pool2d(&*gx, dims, &win).unwrap();
        same(&format!("max_pool2d {what}"), &gv, &cv);
        same(&format!("max_pool2d indices {what}"), &gi, &ci);
        let gout = data(cv.len(), 32);
        let (cg, gg) = both(dev, &gout);
        let want = CPU.max_pool2d_backward(&*cg, &*ci, dims, &win).unwrap();
        same(&format!("max_pool2d_backward {what}"), &dev.max_pool2d_backward(&*gg, &*gi, dims, &win).unwrap(), &want);
        for cip in [true, false] {
            let want = CPU.avg_pool2d(&*cx, dims, &win, cip).unwrap();
            close(
                &format!("avg_pool2d {what} {cip}"),
                &f32s(&dev.avg_pool2d(&*gx, dims, &win, cip).unwrap()),
                &f32s(&want),
                1e-6,
            );
            let want = CPU.avg_pool2d_backward(&*cg, dims, &win, cip).unwrap();
            let got = dev.avg_pool2d_backward(&*gg, dims, &win, cip).unwrap();
            close(&format!("avg_pool2d_backward {what} {cip}"), &f32s(&got), &f32s(&want), 1e-6);
        }
    }
}

#[test]
fn fused_primitives_are_optional_and_name_themselves_when_absent() {
    let Some(dev) = device() else { return };
    assert!(firebrand_tensor::backend::ALL_FUSED.iter().all(|&f| CPU.has_fused(f)));
    let (_, g) = both(dev, &[1.0, 2.0]);
    if !dev.has_fused(Fused::DepthwiseConv) {
        let win = Window2d::new((1, 1), (1, 1), (0, 0));
        let e = dev.depthwise_conv2d(&*g, &*g, None, [1, 1, 1, 2], 1, &win, None).unwrap_err().to_string();
        assert!(e.contains("depthwise_conv2d") && e.contains("wgpu:0"), "{e}");
    }
    // A CPU storage handed to the device backend is a device mismatch.
    let c = CPU.upload(CpuStorage::F32(vec![1.0])).unwrap();
    let l = Layout::contiguous(Shape::from(vec![1]));
    assert!(matches!(dev.unary(UnaryOp::Neg, &*c, &l), Err(firebrand_tensor::Error::DeviceMismatch { .. })));
}

#[test]
fn pooled_buffers_are_cleared_where_it_matters() {
    let Some(dev) = device() else { return };
    let (_, g) = both(dev, &vec![7.0; 1000]);
    let l = Layout::contiguous(Shape::from(vec![1000]));
    let src = data(10, 41);
    let (_, gs) = both(dev, &src);
    let index: Vec<i64> = (0..10).map(|i| (i * 37 % 100) as i64).collect();
    let gi = dev.upload(i64s(&index)).unwrap();
    let mut want = vec![0.0; 1000];
    for (j, &i) in index.iter().enumerate() {
        want[i as usize] += src[j];
    }
    for round in 0..20 {
        // A kernel's output of 7s (a pooled size class), freed, and a
        // scatter-add of the same size, which must start from zeros whether
        // or not it gets that buffer.
        drop(dev.unary(UnaryOp::Abs, &*g, &l).unwrap());
        let got = f32s(&dev.scatter_add(&*gs, 1, 1000, 1, &*gi).unwrap());
        close(&format!("scatter_add after a freed buffer, round {round}"), &got, &want, 1e-6);
    }
    dev.synchronize().unwrap();
    let stats = dev.memory().expect("tracked");
    assert!(stats.peak_bytes >= stats.live_bytes && stats.peak_bytes > 0);
}

#[test]
fn fused_layer_norm_and_its_backward() {
    let Some(dev) = device() else { return };
    assert!(dev.has_fused(Fused::LayerNorm));
    for (rows, cols) in [(1, 1), (3, 7), (5, 300), (70, 1000)] {
        let (x, w, b, g) = (data(rows * cols, 51), data(cols, 52), data(cols, 53), data(rows * cols, 54));
        let ((cx, gx), (cw, gw), (cb, gb), (cg, gg)) = (both(dev, &x), both(dev, &w), both(dev, &b), both(dev, &g));
        for affine in [false, true] {
            let what = format!("layer_norm {rows}x{cols} affine {affine}");
            let (wc, bc) = if affine { (Some(&*cw), Some(&*cb)) } else { (None, None) };
            let (wg, bg) = if affine { (Some(&*gw), Some(&*gb)) } else { (None, None) };
            let (y, st) = CPU.layer_norm(&*cx, wc, bc, rows, cols, 1e-5).unwrap();
            let (yg, stg) = dev.layer_norm(&*gx, wg, bg, rows, cols, 1e-5).unwrap();
            close(&what, &f32s(&yg), &f32s(&y), 1e-5);
            close(&format!("{what} stats"), &f32s(&stg), &f32s(&st), 1e-5);
            let (dx, dwb) = CPU.layer_norm_backward(&*cx, wc, &*st, &*cg, rows, cols).unwrap();
            let (dxg, dwbg) = dev.layer_norm_backward(&*gx, wg, &*stg, &*gg, rows, cols).unwrap();
            close(&format!("{what} dx"), &f32s(&dxg), &f32s(&dx), 1e-4);
            close(&format!("{what} dweight, dbias"), &f32s(&dwbg), &f32s(&dwb), 1e-4);
        }
    }
}

#[test]
fn fused_epilogues_and_their_backwards() {
    let Some(dev) = device() else { return };
    assert!(dev.has_fused(Fused::ConvEpilogue) && dev.has_fused(Fused::ChannelAffine));
    let acts = [None, Some(UnaryOp::Relu), Some(UnaryOp::Hardtanh(0.0, 6.0))];
    for (n, l, c) in [(1, 1, 1), (2, 37, 5), (3, 300, 7)] {
        let (yt, bias, g) = (data(n * l * c, 61), data(c, 62), data(n * l * c, 63));
        let ((cy, gy), (cb, gb), (cg, gg)) = (both(dev, &yt), both(dev, &bias), both(dev, &g));
        for act in acts {
            let what = format!("epilogue ({n}, {l}, {c}) {act:?}");
            for with_bias in [false, true] {
                let (bc, bg) = if with_bias { (Some(&*cb), Some(&*gb)) } else { (None, None) };
                let want = CPU.bias_act_to_nchw(&*cy, bc, n, l, c, act).unwrap();
                same(
                    &format!("{what} bias {with_bias}"),
                    &dev.bias_act_to_nchw(&*gy, bg, n, l, c, act).unwrap(),
                    &want,
                );
            }
            let y = CPU.bias_act_to_nchw(&*cy, Some(&*cb), n, l, c, act).unwrap();
            let (_, yd) = both(dev, &f32s(&y));
            let (dyt, db) = CPU.bias_act_to_nchw_backward(&*cg, &*y, n, l, c, act).unwrap();
            let (dyt_g, db_g) = dev.bias_act_to_nchw_backward(&*gg, &*yd, n, l, c, act).unwrap();
            same(&format!("{what} backward dyt"), &dyt_g, &dyt);
            close(&format!("{what} backward dbias"), &f32s(&db_g), &f32s(&db), 1e-5);
            // channel_affine on the same (N, C, L) data, every combination of vectors.
            let dims = [n, c, l];
            let (sc, sg) = both(dev, &data(c, 64));
            for (has_s, has_t) in [(false, false), (true, false), (false, true), (true, true)] {
                let s = (has_s.then_some(&*sc), has_s.then_some(&*sg));
                let t = (has_t.then_some(&*cb), has_t.then_some(&*gb));
                let what = format!("channel_affine {dims:?} {act:?} scale {has_s} shift {has_t}");
                let want = CPU.channel_affine(&*cy, s.0, t.0, dims, act).unwrap();
                let got = dev.channel_affine(&*gy, s.1, t.1, dims, act).unwrap();
                close(&what, &f32s(&got), &f32s(&want), 1e-6);
                let (_, yd) = both(dev, &f32s(&want));
                let need = [true, has_s, has_t];
                let (wx, ws, wt) = CPU.channel_affine_backward(&*cg, &*cy, &*want, s.0, dims, act, need).unwrap();
                let (gx, gs, gt) = dev.channel_affine_backward(&*gg, &*gy, &*yd, s.1, dims, act, need).unwrap();
                close(&format!("{what} dx"), &f32s(&gx.unwrap()), &f32s(&wx.unwrap()), 1e-6);
                if has_s {
                    close(&format!("{what} dscale"), &f32s(&gs.unwrap()), &f32s(&ws.unwrap()), 1e-5);
                }
                if has_t {
                    close(&format!("{what} dshift"), &f32s(&gt.unwrap()), &f32s(&wt.unwrap()), 1e-5);
                }
            }
        }
    }
}

#[test]
fn fused_lstm_cell_and_its_backward() {
    use firebrand_tensor::backend::Rows;
    let Some(dev) = device() else { return };
    assert!(dev.has_fused(Fused::LstmCell));
    for (b, h) in [(1, 1), (3, 5), (2, 300)] {
        // xw: step 1 of a (2, B, 4H) projection; c_prev: the c block of a (B, 6H) state.
        let (xw, hw, st0) = (data(2 * b * 4 * h, 71), data(b * 4 * h, 72), data(b * 6 * h, 73));
        let ((cx, gx), (ch, gh), (cs, gs)) = (both(dev, &xw), both(dev, &hw), both(dev, &st0));
        let (xw_at, c_at) = (Rows { offset: b * 4 * h, stride: 4 * h }, Rows { offset: 4 * h, stride: 6 * h });
        let what = format!("lstm_cell B {b} H {h}");
        let want = CPU.lstm_cell(&*cx, xw_at, &*ch, &*cs, c_at, b, h).unwrap();
        let got = dev.lstm_cell(&*gx, xw_at, &*gh, &*gs, c_at, b, h).unwrap();
        close(&what, &f32s(&got), &f32s(&want), 1e-6);
        // Backward: g_out rows of a (B, 2H) gradient, dc_next the dc_prev block of a (B, 5H) one.
        let (g, dhn, dcn) = (data(b * 2 * h, 74), data(b * h, 75), data(b * 5 * h, 76));
        let ((cg, gg), (cdh, gdh), (cdc, gdc)) = (both(dev, &g), both(dev, &dhn), both(dev, &dcn));
        let (g_at, dc_at) = (Rows { offset: 0, stride: 2 * h }, Rows { offset: 4 * h, stride: 5 * h });
        let (_, st) = both(dev, &f32s(&want));
        let want_b = CPU.lstm_cell_backward(&*want, &*cs, c_at, &*cg, g_at, &*cdh, &*cdc, dc_at, b, h).unwrap();
        let got_b = dev.lstm_cell_backward(&*st, &*gs, c_at, &*gg, g_at, &*gdh, &*gdc, dc_at, b, h).unwrap();
        close(&format!("{what} backward"), &f32s(&got_b), &f32s(&want_b), 1e-5);
    }
}

#[test]
fn fused_batch_norm_statistics_and_backward() {
    let Some(dev) = device() else { return };
    assert!(dev.has_fused(Fused::BatchNorm));
    for dims in [[1, 1, 1], [2, 3, 5], [4, 7, 300]] {
        let len = dims.iter().product();
        // A mean far from zero: the variance must not come from E[x²] − mean².
        let x: Vec<f32> = data(len, 81).iter().map(|v| v + 50.0).collect();
        let ((cx, gx), (cg, gg), (cw, gw)) = (both(dev, &x), both(dev, &data(len, 82)), both(dev, &data(dims[1], 83)));
        let st = CPU.batch_norm_stats(&*cx, dims).unwrap();
        close(
            &format!("batch_norm_stats {dims:?}"),
            &f32s(&dev.batch_norm_stats(&*gx, dims).unwrap()),
            &f32s(&st),
            1e-5,
        );
        // [mean | invstd] for the backward.
        let s = f32s(&st);
        let c = dims[1];
        let inv: Vec<f32> = (0..2 * c).map(|i| if i < c { s[i] } else { 1.0 / (s[i] + 1e-5).sqrt() }).collect();
        let (cs, gs) = both(dev, &inv);
        for act in [None, Some(UnaryOp::Relu), Some(UnaryOp::Hardtanh(0.0, 6.0))] {
            for weighted in [false, true] {
                let what = format!("batch_norm backward {dims:?} {act:?} weight {weighted}");
                let (wc, wg) = if weighted { (Some(&*cw), Some(&*gw)) } else { (None, None) };
                // The activation's output: anything in its range serves the test.
                let y: Vec<f32> = data(len, 84).iter().map(|v| act.map_or(*v, |a| a.eval(*v * 4.0))).collect();
                let (cy, gy) = both(dev, &y);
                let (ca, ga) = (act.map(|a| (a, &*cy)), act.map(|a| (a, &*gy)));
                let (dx, da) = CPU.batch_norm_backward(&*cg, &*cx, &*cs, wc, dims, ca).unwrap();
                let (dxg, dag) = dev.batch_norm_backward(&*gg, &*gx, &*gs, wg, dims, ga).unwrap();
                close(&format!("{what} dx"), &f32s(&dxg), &f32s(&dx), 1e-4);
                close(&format!("{what} dweight, dbias"), &f32s(&dag), &f32s(&da), 1e-4);
            }
        }
    }
}

#[test]
fn fused_depthwise_convolution_and_its_backward() {
    let Some(dev) = device() else { return };
    assert!(dev.has_fused(Fused::DepthwiseConv));
    let dims = [2, 3, 7, 6];
    let x = data(dims.iter().product(), 91);
    let (cx, gx) = both(dev, &x);
    let wins = [
        Window2d::new((3, 3), (1, 1), (1, 1)),
        Window2d::new((3, 3), (2, 2), (1, 1)),
        Window2d { kernel: (3, 2), stride: (1, 2), padding: (2, 0), dilation: (2, 1) },
    ];
    for win in wins {
        for m in [1, 2] {
            let (w, b) = (data(3 * m * win.kernel.0 * win.kernel.1, 92), data(3 * m, 93));
            let ((cw, gw), (cb, gb)) = (both(dev, &w), both(dev, &b));
            for act in [None, Some(UnaryOp::Hardtanh(0.0, 6.0))] {
                let what = format!("depthwise {win:?} M {m} {act:?}");
                let want = CPU.depthwise_conv2d(&*cx, &*cw, Some(&*cb), dims, m, &win, act).unwrap();
                let got = dev.depthwise_conv2d(&*gx, &*gw, Some(&*gb), dims, m, &win, act).unwrap();
                close(&what, &f32s(&got), &f32s(&want), 1e-5);
                let nobias = CPU.depthwise_conv2d(&*cx, &*cw, None, dims, m, &win, act).unwrap();
                close(
                    &format!("{what} no bias"),
                    &f32s(&dev.depthwise_conv2d(&*gx, &*gw, None, dims, m, &win, act).unwrap()),
                    &f32s(&nobias),
                    1e-5,
                );
            }
            let gout = data(want_len(&win, dims, m), 94);
            let (cg, gg) = both(dev, &gout);
            let (dx, dw) = CPU.depthwise_conv2d_backward(&*cg, &*cx, &*cw, dims, m, &win, [true, true]).unwrap();
            let (dxg, dwg) = dev.depthwise_conv2d_backward(&*gg, &*gx, &*gw, dims, m, &win, [true, true]).unwrap();
            close(&format!("depthwise {win:?} M {m} dx"), &f32s(&dxg.unwrap()), &f32s(&dx.unwrap()), 1e-5);
            close(&format!("depthwise {win:?} M {m} dw"), &f32s(&dwg.unwrap()), &f32s(&dw.unwrap()), 1e-5);
        }
    }
}

fn want_len(win: &Window2d, [n, c, h, w]: [usize; 4], m: usize) -> usize {
    let (ho, wo) = win.output_size(h, w).unwrap();
    n * c * m * ho * wo
}
