//! Every wgpu kernel against the CPU backend's on awkward shapes: size 1,
//! odd sizes, more elements than one workgroup, transposed and broadcast
//! (stride 0) views, NaN and infinities, and matmul depths beyond one tile.
//! Tolerances are scaled by the largest magnitude of the expected values.
//!
//! Without an adapter the tests say so and pass, except under `CI=true`,
//! where a missing adapter fails (CI installs Mesa's lavapipe).

use firebrand_ops::CPU;
use firebrand_tensor::backend::{Backend, Storage};
use firebrand_tensor::op::{ALL_UNARY_OPS, BinaryOp, ReduceOp, UnaryOp};
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
fn batched_matmul_on_strided_operands() {
    let Some(dev) = device() else { return };
    for (batch, m, k, n) in [(1, 1, 1, 1), (1, 17, 33, 19), (3, 5, 40, 2), (2, 64, 16, 48)] {
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

#[test]
fn a_primitive_without_a_kernel_is_an_error_naming_it_and_the_device() {
    let Some(dev) = device() else { return };
    let (_, g) = both(dev, &[1.0, 2.0]);
    let e = dev.where_select(&*g, &*g, &*g).unwrap_err().to_string();
    assert!(e.contains("where_select") && e.contains("wgpu:0"), "{e}");
    // A CPU storage handed to the device backend is a device mismatch.
    let c = CPU.upload(CpuStorage::F32(vec![1.0])).unwrap();
    let l = Layout::contiguous(Shape::from(vec![1]));
    assert!(matches!(dev.unary(UnaryOp::Neg, &*c, &l), Err(firebrand_tensor::Error::DeviceMismatch { .. })));
}
