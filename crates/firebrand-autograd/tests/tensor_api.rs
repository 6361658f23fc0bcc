//! The PyTorch-style tensor API: every op's values and gradients against
//! PyTorch (`reference/tensor_api_reference.json`, from
//! `reference/make_tensor_api.py`), a finite-difference gradcheck for each
//! differentiable one, dtypes and promotion, in-place rules, and the NaN/inf
//! table through every elementwise op and reduction.

use firebrand_autograd::{
    ConvOptions, DType, GradcheckOptions, PadMode, Tensor, TensorIndex, Window2d, gradcheck, no_grad,
};
use firebrand_ops::unary::UnaryOp;
use serde_json::Value;

fn reference() -> Value {
    serde_json::from_str(include_str!("reference/tensor_api_reference.json")).unwrap()
}

fn num(v: &Value) -> f64 {
    match v {
        Value::String(s) if s == "nan" => f64::NAN,
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        v => v.as_f64().unwrap(),
    }
}

fn nums(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(num).collect()
}

fn dims(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length ({got:?} vs {want:?})");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let same = (g.is_nan() && w.is_nan()) || g == w || (g - w).abs() <= tol * (1.0 + w.abs());
        assert!(same, "{what}[{i}]: got {g}, PyTorch {w}");
    }
}

fn leaf(shape: &[usize], scale: f32, shift: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (0.37 * i as f32 + 0.11).sin() * scale + shift).collect();
    Tensor::from_vec(v, shape.to_vec()).requires_grad_(true)
}

fn check(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor) {
    if let Err(e) = gradcheck(f, inputs, GradcheckOptions::default()) {
        panic!("{name}: {e}");
    }
}

/// An op under its PyTorch case name.
type NamedOp = (&'static str, Box<dyn Fn(&Tensor) -> Tensor>);

/// Every op with its PyTorch case name.
fn ops() -> Vec<NamedOp> {
    let mask = |x: &Tensor| leaf(&[2, 3], 1.0, 0.0).detach().gt(&Tensor::scalar(0.2)).to_device(x.device()).unwrap();
    let b3 = leaf(&[2, 4, 2], 0.5, 0.0).detach();
    let b4 = leaf(&[2, 4, 5], 0.3, 0.0).detach();
    vec![
        ("masked_fill", Box::new(move |x| x.masked_fill(&mask(x), -1.5))),
        ("masked_select", Box::new(move |x| x.masked_select(&mask(x)))),
        ("tril", Box::new(|x| x.tril(0))),
        ("triu_1", Box::new(|x| x.triu(1))),
        ("prod_dim1", Box::new(|x| x.prod(&[1], false))),
        ("logsumexp_dim0", Box::new(|x| x.logsumexp(&[0], false))),
        ("norm2_dim1", Box::new(|x| x.norm(2.0, &[1], false))),
        ("norm3_all", Box::new(|x| x.norm(3.0, &[], false))),
        ("sort_desc_dim1", Box::new(|x| x.sort(1, true).0)),
        ("topk2_dim0", Box::new(|x| x.topk(2, 0, true).0)),
        ("cumsum_dim1", Box::new(|x| x.cumsum(1))),
        ("flip_01", Box::new(|x| x.flip(&[0, 1]))),
        ("roll_2_dim1", Box::new(|x| x.roll(2, 1))),
        ("repeat_2_1_3", Box::new(|x| x.repeat(&[2, 1, 3]))),
        ("expand", Box::new(|x| x.expand(&[2, 3, 4]))),
        ("pad_1_2_0_1", Box::new(|x| x.pad(&[1, 2, 0, 1], 0.5))),
        ("index_1_m1", Box::new(|x| x.i((1.., -1, TensorIndex::step(0, None, 2))))),
        ("einsum_bij_bjk", Box::new(move |x| Tensor::einsum("bij,bjk->bik", &[x, &b3]))),
        ("einsum_ij_ji", Box::new(|x| Tensor::einsum("ij->ji", &[x]))),
        ("bmm", Box::new(move |x| x.bmm(&b4))),
        ("pad_reflect_2_1_1_2", Box::new(|x| x.pad_mode(&[2, 1, 1, 2], PadMode::Reflect))),
        ("pad_replicate_3_0_0_2", Box::new(|x| x.pad_mode(&[3, 0, 0, 2], PadMode::Replicate))),
        ("relu6", Box::new(|x| x.relu6())),
        ("hardtanh_m2_3", Box::new(|x| x.hardtanh(-2.0, 3.0))),
        ("hardswish", Box::new(|x| x.hardswish())),
        ("hardsigmoid", Box::new(|x| x.hardsigmoid())),
    ]
}

#[test]
fn values_and_gradients_match_pytorch() {
    let r = reference();
    for (name, f) in ops() {
        let c = &r["cases"][name];
        let x = Tensor::from_vec(nums(&c["x"]).iter().map(|&v| v as f32).collect::<Vec<_>>(), dims(&c["shape"]))
            .requires_grad_(true);
        let out = f(&x);
        assert_eq!(out.dims(), dims(&c["out_shape"]).as_slice(), "{name}: shape");
        close(&out.to_vec::<f64>(), &nums(&c["out"]), 1e-5, name);
        let w = Tensor::from_vec(nums(&c["w"]).iter().map(|&v| v as f32).collect::<Vec<_>>(), out.shape().clone());
        out.mul(&w).sum_all().backward();
        close(&x.grad().unwrap().to_vec::<f64>(), &nums(&c["grad"]), 1e-4, &format!("{name} grad"));
    }
    let c = &r["cases"]["sort_indices"];
    let x = Tensor::from_vec(nums(&c["x"]), dims(&c["shape"]));
    close(&x.argsort(1, true).to_vec::<f64>(), &nums(&c["indices"]), 0.0, "argsort");
    close(&Tensor::linspace(-1.0, 2.0, 7).to_vec::<f64>(), &nums(&r["cases"]["linspace"]["out"]), 1e-7, "linspace");
    // The hard activations exactly at their kinks, where PyTorch's gradient conventions decide.
    let k = &r["cases"]["kinks"];
    type Hard = (&'static str, fn(&Tensor) -> Tensor);
    let hard: [Hard; 4] = [
        ("relu6", |x| x.relu6()),
        ("hardtanh_m1_3", |x| x.hardtanh(-1.0, 3.0)),
        ("hardswish", |x| x.hardswish()),
        ("hardsigmoid", |x| x.hardsigmoid()),
    ];
    for (name, f) in hard {
        let x = Tensor::from_vec(nums(&k["x"]).iter().map(|&v| v as f32).collect::<Vec<_>>(), [6]).requires_grad_(true);
        let y = f(&x);
        close(&y.to_vec::<f64>(), &nums(&k[name]["out"]), 1e-6, &format!("{name} at kinks"));
        y.sum_all().backward();
        close(&x.grad().unwrap().to_vec::<f64>(), &nums(&k[name]["grad"]), 1e-6, &format!("{name} grad at kinks"));
    }
    let ints = Tensor::from_vec(vec![1i32, 2, 3, 4, 5, 6], [2, 3]).cumsum(1);
    assert_eq!(ints.dtype(), DType::I64);
    close(&ints.to_vec::<f64>(), &nums(&r["cases"]["cumsum_int"]["out"]), 0.0, "cumsum int");
}

#[test]
fn every_differentiable_op_passes_gradcheck() {
    let r = reference();
    for (name, f) in ops() {
        let shape = dims(&r["cases"][name]["shape"]);
        // prod and norm away from zero-crossings; the rest anywhere.
        let x = if name.starts_with("prod") || name.starts_with("norm") {
            leaf(&shape, 0.5, 1.2)
        } else {
            leaf(&shape, 1.0, 0.0)
        };
        check(name, &[x], |t| f(&t[0]));
    }
    // On transposed inputs too.
    let x = leaf(&[4, 3], 1.0, 0.0);
    check("sort of a transposed view", std::slice::from_ref(&x), |t| t[0].t().sort(-1, false).0);
    check("cumsum of a transposed view", std::slice::from_ref(&x), |t| t[0].t().cumsum(0));
    check("split", std::slice::from_ref(&x), |t| t[0].split(3, 1)[0].mul(&t[0].split(1, 0)[3]));
    check("view", std::slice::from_ref(&x), |t| t[0].view(&[2, -1]).square());
    check("to_dtype f64 and back", std::slice::from_ref(&x), |t| t[0].to_dtype(DType::F64).exp().to_dtype(DType::F32));
    // A product with an exact zero: the gradient is the product of the others.
    let z = Tensor::from_vec(vec![2.0f32, 0.0, 3.0], [3]).requires_grad_(true);
    z.prod(&[], false).backward();
    assert_eq!(z.grad().unwrap().to_vec::<f32>(), vec![0.0, 6.0, 0.0]);
}

#[test]
fn bad_arguments_are_errors_that_name_the_op() {
    let x = Tensor::zeros([2, 3]);
    assert!(x.try_topk(4, 1, true).unwrap_err().to_string().starts_with("topk"));
    assert!(x.try_view(&[4, -1]).unwrap_err().to_string().starts_with("view"));
    assert!(x.t().try_view(&[6]).is_err());
    assert!(x.try_i((0, 0, 0)).unwrap_err().to_string().starts_with("index"));
    assert!(x.try_i((2, ..)).is_err());
    assert!(x.try_pad(&[1], 0.0).is_err());
    assert!(x.try_split_with_sizes(&[1, 1], 1).is_err());
    assert!(x.try_bmm(&x).is_err());
    assert!(Tensor::try_einsum("ii->i", &[&Tensor::zeros([2, 2])]).is_err());
    assert!(Tensor::try_einsum("ij,jk->ik", &[&x, &Tensor::zeros([4, 2])]).is_err());
    assert!(x.try_masked_fill(&Tensor::ones([3, 3]), 0.0).is_err());
    assert!(x.try_norm(-1.0, &[], false).is_err());
    assert!(x.try_tril(0).is_ok() && Tensor::zeros([3]).try_tril(0).is_err());
}

#[test]
fn dtypes_compute_and_promote_like_pytorch() {
    let i = Tensor::from_vec(vec![1i64, 2, 3], [3]);
    let labels = Tensor::from_vec(vec![1i64, 3, 3], [3]);
    // argmax(..).eq(&labels) works and gives bool; its sum is i64.
    let logits = Tensor::from_vec(vec![0.1f32, 0.9, 0.7, 0.2, 0.0, 0.0, 0.1, 0.3, 0.2, 0.0, 0.1, 0.9], [3, 4]);
    let right = logits.argmax(1, false).eq(&labels);
    assert_eq!(right.dtype(), DType::Bool);
    assert_eq!(right.to_vec::<bool>(), vec![true, true, true]);
    assert_eq!(right.sum(&[], false).to_vec::<i64>(), vec![3]);
    // Integer arithmetic stays integer; true division and exp go to f32.
    assert_eq!((&i + &i).dtype(), DType::I64);
    assert_eq!((&i * 3.0).to_vec::<i64>(), vec![3, 6, 9]);
    assert_eq!((&i * 0.5).dtype(), DType::F32);
    assert_eq!(i.div(&i).dtype(), DType::F32);
    assert_eq!(i.exp().dtype(), DType::F32);
    assert_eq!(i.max_all().to_vec::<i64>(), vec![3]);
    assert_eq!(i.prod(&[], false).to_vec::<i64>(), vec![6]);
    let i32s = Tensor::from_vec(vec![1i32, -2], [2]);
    assert_eq!((&i32s + &Tensor::from_vec(vec![1u8, 2], [2])).dtype(), DType::I32);
    assert_eq!((&i32s + &Tensor::from_vec(vec![0.5f32, 0.5], [2])).to_vec::<f32>(), vec![1.5, -1.5]);
    assert_eq!(i32s.abs().to_vec::<i32>(), vec![1, 2]);
    // A 0-d tensor of the same category does not promote; a higher one does.
    let h = Tensor::from_vec(vec![1.0f32, 2.0], [2]).to_dtype(DType::F16);
    assert_eq!((&h + &Tensor::scalar(1.0)).dtype(), DType::F16);
    assert_eq!((&i32s + &Tensor::full_dtype(1.0, (), DType::F64)).dtype(), DType::F64);
    // f16 and bf16 compute by widening: matmul, softmax, conv-free ops.
    let hb = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]).to_dtype(DType::BF16);
    let p = hb.matmul(&hb).softmax(-1);
    assert_eq!(p.dtype(), DType::BF16);
    close(&p.sum(&[-1], false).to_vec::<f64>(), &[1.0, 1.0], 1e-2, "bf16 softmax rows");
    assert_eq!((&h + &hb.i(0)).dtype(), DType::F32); // f16 with bf16
    // f64 keeps its precision.
    let d = Tensor::full_dtype(1.0 + 1e-12, [1], DType::F64);
    assert!(d.sub(&Tensor::full_dtype(1.0, [1], DType::F64)).to_vec::<f64>()[0] > 0.0);
    // Float-to-int conversion truncates toward zero, only when asked for.
    let f = Tensor::from_vec(vec![-1.7f32, 2.9], [2]);
    assert_eq!(f.to_dtype(DType::I64).to_vec::<i64>(), vec![-1, 2]);
    assert!(f.try_to_vec::<i64>().is_err());
    // Gradients: only for floats, and they come back in the input's dtype.
    assert!(std::panic::catch_unwind(|| Tensor::from_vec(vec![1i64], [1]).requires_grad_(true)).is_err());
    let w = Tensor::from_vec(vec![1.5f32, -0.5], [2]).to_dtype(DType::F64).requires_grad_(true);
    w.mul(&i32s).sum_all().backward();
    assert_eq!(w.grad().unwrap().dtype(), DType::F64);
    assert_eq!(w.grad().unwrap().to_vec::<f64>(), vec![1.0, -2.0]);
    // where, masked ops and nonzero take bool.
    let m = f.gt(&Tensor::scalar(0.0));
    assert_eq!(m.where_cond(&f, &Tensor::scalar(0.0)).to_vec::<f32>(), vec![0.0, 2.9]);
    assert_eq!(m.nonzero().to_vec::<i64>(), vec![1]);
    assert!(m.any(&[], false).to_vec::<bool>()[0] && !m.all(&[], false).to_vec::<bool>()[0]);
    assert_eq!(m.logical_not().to_vec::<bool>(), vec![true, false]);
    assert_eq!(f.isnan().to_vec::<bool>(), vec![false, false]);
    // Every pair of dtypes converts.
    for &a in firebrand_tensor::ALL_DTYPES {
        for &b in firebrand_tensor::ALL_DTYPES {
            let t = Tensor::from_vec(vec![0.0f32, 1.0, 2.0], [3]).to_dtype(a).to_dtype(b);
            assert_eq!(t.dtype(), b);
            let want = if a == DType::Bool || b == DType::Bool { vec![0.0, 1.0, 1.0] } else { vec![0.0, 1.0, 2.0] };
            assert_eq!(t.to_vec::<f64>(), want, "{a} -> {b}");
        }
    }
}

#[test]
fn reductions_over_no_dims_reduce_everything() {
    let x = Tensor::from_vec(vec![1.0f32, 5.0, -2.0, 4.0], [2, 2]);
    assert_eq!(x.sum(&[], false).dims(), &[] as &[usize]);
    assert_eq!(x.sum(&[], false).item(), 8.0);
    assert_eq!(x.max(&[], false).item(), 5.0);
    assert_eq!(x.min(&[], true).dims(), &[1, 1]);
    assert_eq!(x.mean(&[], false).item(), 2.0);
    assert_eq!(x.max_all().item(), 5.0);
}

#[test]
fn in_place_ops_follow_pytorch_rules() {
    let mut x = Tensor::from_vec(vec![1.0f32, 2.0], [2]);
    x += 1.0;
    x *= &Tensor::from_vec(vec![2.0f32, 3.0], [2]);
    x.sub_(&Tensor::scalar(1.0)).unwrap();
    assert_eq!(x.to_vec::<f32>(), vec![3.0, 8.0]);
    x.clamp_(0.0, 5.0).unwrap();
    x.masked_fill_(&x.lt(&Tensor::scalar(4.0)), 0.0).unwrap();
    assert_eq!(x.to_vec::<f32>(), vec![0.0, 5.0]);
    // A float result cannot be written into an integer tensor.
    let i = Tensor::from_vec(vec![1i64, 2], [2]);
    assert!(i.add_(&Tensor::scalar(0.5)).unwrap_err().to_string().contains("can't be cast"));
    i.add_(&Tensor::from_vec(vec![1i64], [1])).unwrap();
    assert_eq!(i.to_vec::<i64>(), vec![2, 3]);
    // A leaf that requires grad: refused, except under no_grad (optimizer updates).
    let w = Tensor::ones([2]).requires_grad_(true);
    assert!(w.add_(&Tensor::ones([2])).unwrap_err().to_string().contains("requires grad"));
    {
        let _g = no_grad();
        w.add_(&Tensor::ones([2])).unwrap();
    }
    assert_eq!(w.to_vec::<f32>(), vec![2.0, 2.0]);
    // `loss += term` on a recorded result keeps the graph: both terms get gradients.
    let (a, b) = (Tensor::scalar(2.0).requires_grad_(true), Tensor::scalar(3.0).requires_grad_(true));
    let mut loss = a.mul(&a);
    loss += b.mul(&a);
    loss *= 2.0;
    loss.backward();
    assert_eq!(loss.item(), 2.0 * (4.0 + 6.0));
    assert_eq!((a.grad().unwrap().item(), b.grad().unwrap().item()), (2.0 * (4.0 + 3.0), 2.0 * 2.0));
    // A saved tensor modified in place: backward is an error, not a wrong gradient.
    let s = Tensor::from_vec(vec![3.0f32, 4.0], [2]);
    let y = w.mul(&s).sum_all();
    let v0 = s.version();
    s.add_(&Tensor::ones([2])).unwrap();
    assert_eq!(s.version(), v0 + 1);
    let e = y.try_backward().unwrap_err().to_string();
    assert!(e.contains("modified by an in-place operation") && e.contains("mul"), "{e}");
    // Views share the counter.
    let t = Tensor::zeros([2, 2]);
    let row = t.i(0);
    row.fill_(1.0).unwrap();
    assert_eq!(t.version(), row.version());
    assert_eq!(t.to_vec::<f32>(), vec![1.0, 1.0, 0.0, 0.0]);
}

/// PyTorch's float32 results for NaN, ±inf, 0 and ordinary values through
/// every unary op, every arithmetic binary op and every reduction.
#[test]
fn nan_and_inf_propagate_as_in_pytorch() {
    let r = reference();
    let t = &r["nan_table"];
    let input = Tensor::from_vec(nums(&t["input"]).iter().map(|&v| v as f32).collect::<Vec<_>>(), [6]);
    let unary: &[(&str, UnaryOp)] = &[
        ("neg", UnaryOp::Neg),
        ("abs", UnaryOp::Abs),
        ("exp", UnaryOp::Exp),
        ("log", UnaryOp::Log),
        ("sqrt", UnaryOp::Sqrt),
        ("rsqrt", UnaryOp::Rsqrt),
        ("recip", UnaryOp::Recip),
        ("square", UnaryOp::Square),
        ("tanh", UnaryOp::Tanh),
        ("sigmoid", UnaryOp::Sigmoid),
        ("relu", UnaryOp::Relu),
        ("gelu", UnaryOp::Gelu),
        ("gelu_tanh", UnaryOp::GeluTanh),
        ("silu", UnaryOp::Silu),
        ("softplus", UnaryOp::Softplus),
        ("sin", UnaryOp::Sin),
        ("cos", UnaryOp::Cos),
        ("powf", UnaryOp::Powf(2.5)),
        ("leaky_relu", UnaryOp::LeakyRelu(0.1)),
        ("clamp", UnaryOp::Clamp(-0.5, 0.7)),
        ("hardtanh", UnaryOp::Hardtanh(-0.5, 0.7)),
        ("hardswish", UnaryOp::Hardswish),
        ("hardsigmoid", UnaryOp::Hardsigmoid),
        ("affine", UnaryOp::Affine(-1.5, 0.25)),
    ];
    assert_eq!(unary.len(), firebrand_ops::unary::ALL_UNARY_OPS.len(), "every op of the table is in this test");
    for &(name, op) in unary {
        let mut want = nums(&t["unary"][name]);
        if name == "gelu" {
            // The one deliberate difference: PyTorch's CPU gelu gives NaN for
            // +inf; x·Φ(x) tends to +inf, which is what Firebrand returns.
            assert!(want[1].is_nan());
            want[1] = f64::INFINITY;
        }
        // The f32 kernels (contiguous and strided), and the f64 path.
        close(&input.unary(op).to_vec::<f64>(), &want, 1e-6, name);
        let strided = Tensor::stack(&[&input, &input], 1).i((.., 0));
        close(&strided.unary(op).to_vec::<f64>(), &want, 1e-6, &format!("{name} strided"));
        close(&input.to_dtype(DType::F64).unary(op).to_vec::<f64>(), &want, 1e-6, &format!("{name} f64"));
    }
    // The fused Linear + ReLU path and the conv epilogue keep a NaN too.
    let nan_x = Tensor::from_vec(vec![f32::NAN, 1.0], [1, 2]);
    assert!(nan_x.matmul(&Tensor::eye(2)).relu().to_vec::<f32>()[0].is_nan());
    let img = nan_x.reshape([1, 1, 1, 2]);
    let fused =
        img.try_conv2d_relu(&Tensor::ones([1, 1, 1, 1]), Some(&Tensor::zeros([1])), ConvOptions::default()).unwrap();
    assert!(fused.to_vec::<f32>()[0].is_nan(), "conv2d + relu epilogue");
    let other = Tensor::from_vec(nums(&t["other"]).iter().map(|&v| v as f32).collect::<Vec<_>>(), [6]);
    for name in ["add", "sub", "mul", "div", "pow", "maximum", "minimum"] {
        let got = match name {
            "add" => input.add(&other),
            "sub" => input.sub(&other),
            "mul" => input.mul(&other),
            "div" => input.div(&other),
            "pow" => input.pow(&other),
            "maximum" => input.maximum(&other),
            _ => input.minimum(&other),
        };
        close(&got.to_vec::<f64>(), &nums(&t["binary"][name]), 1e-6, name);
    }
    let rows = Tensor::from_vec(nums(&t["rows"]).iter().map(|&v| v as f32).collect::<Vec<_>>(), [2, 3]);
    for name in [
        "sum",
        "mean",
        "prod",
        "max",
        "min",
        "argmax",
        "argmin",
        "logsumexp",
        "softmax",
        "log_softmax",
        "cumsum",
        "max_pool",
    ] {
        let got = match name {
            "sum" => rows.sum(&[1], false),
            "mean" => rows.mean(&[1], false),
            "prod" => rows.prod(&[1], false),
            "max" => rows.max(&[1], false),
            "min" => rows.min(&[1], false),
            "argmax" => rows.argmax(1, false),
            "argmin" => rows.argmin(1, false),
            "logsumexp" => rows.logsumexp(&[1], false),
            "softmax" => rows.softmax(1),
            "log_softmax" => rows.log_softmax(1),
            "cumsum" => rows.cumsum(1),
            _ => rows.reshape([1, 2, 1, 3]).max_pool2d(Window2d::new((1, 3), (1, 3), (0, 0))).reshape([2]),
        };
        close(&got.to_vec::<f64>(), &nums(&t["reduce"][name]), 1e-6, name);
    }
}

#[test]
fn reflect_padding_needs_room() {
    let x = Tensor::ones([1, 3]);
    let e = x.try_pad_mode(&[3, 0], PadMode::Reflect).unwrap_err();
    assert!(e.to_string().contains("smaller than dim 1 of size 3"), "{e}");
    assert_eq!(x.pad_mode(&[5, 5], PadMode::Replicate).dims(), &[1, 13]);
    assert_eq!(x.pad_mode(&[1, 1], PadMode::Constant(2.0)).to_vec::<f32>(), vec![2.0, 1.0, 1.0, 1.0, 2.0]);
}

#[test]
fn stepped_ranges_are_views() {
    let x = Tensor::arange(0.0, 10.0, 1.0);
    let every_third = x.i(TensorIndex::step(1, None, 3)); // x[1::3]
    assert_eq!(every_third.to_vec::<f32>(), vec![1.0, 4.0, 7.0]);
    x.fill_(0.0).unwrap();
    assert_eq!(every_third.to_vec::<f32>(), vec![0.0; 3], "a view sees writes to its base");
    // On a transposed view, with a gradient back to the picked positions only.
    let m = Tensor::arange(0.0, 12.0, 1.0).reshape([3, 4]).requires_grad_(true);
    let y = m.t().i((TensorIndex::step(0, None, 2), 1..)); // m.T[::2, 1:]
    assert_eq!(y.to_vec::<f32>(), vec![4.0, 8.0, 6.0, 10.0]);
    y.sum_all().backward();
    assert_eq!(m.grad().unwrap().to_vec::<f32>(), vec![0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
    assert_eq!(Tensor::zeros([5]).i(TensorIndex::step(5, None, 2)).dims(), &[0]);
}
