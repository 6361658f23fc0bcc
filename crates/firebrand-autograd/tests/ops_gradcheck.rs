//! A finite-difference gradient check for every differentiable op, including
//! broadcasting, non-contiguous (transposed / narrowed) inputs and odd sizes.

#![allow(clippy::cloned_ref_to_slice_refs)]

use firebrand_autograd::{GradcheckOptions, Tensor, gradcheck};
use firebrand_ops::unary::{ALL_UNARY_OPS, UnaryOp, needs_positive_input};

/// A deterministic leaf that requires grad; values stay away from kinks.
fn leaf(shape: &[usize], scale: f32, shift: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (0.37 * i as f32 + 0.11).sin() * scale + shift).collect();
    Tensor::from_vec(v, shape.to_vec()).requires_grad_(true)
}

/// A leaf of distinct values `step` apart (a shuffled grid shifted by `offset`),
/// for ops with kinks (max/min, clamp, relu, abs): no two values, and no value
/// and kink, are closer than the finite-difference stencil.
fn spaced(shape: &[usize], step: f32, offset: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let m = (7..).find(|&m| gcd(m, n.max(1)) == 1).unwrap();
    let v: Vec<f32> = (0..n).map(|i| ((i * m) % n) as f32 * step - (n / 2) as f32 * step + offset).collect();
    Tensor::from_vec(v, shape.to_vec()).requires_grad_(true)
}

fn check(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor) {
    if let Err(e) = gradcheck(f, inputs, GradcheckOptions::default()) {
        panic!("{name}: {e}");
    }
}

#[test]
fn unary_table() {
    for &op in ALL_UNARY_OPS {
        let x = if needs_positive_input(op) { leaf(&[3, 5], 0.8, 1.2) } else { spaced(&[3, 5], 0.1, 0.05) };
        // Contiguous and transposed inputs.
        check(op.name(), &[x.clone()], |t| t[0].unary(op));
        check(op.name(), &[x], |t| t[0].t().unary(op));
    }
    // Ops with kinks, away from them.
    check("clamp", &[spaced(&[7], 0.3, 0.05)], |t| t[0].clamp(-0.5, 0.5));
    check("abs", &[spaced(&[7], 0.3, 0.05)], |t| t[0].unary(UnaryOp::Abs));
}

#[test]
fn binary_with_broadcasting_and_views() {
    let shapes: &[(&[usize], &[usize])] =
        &[(&[3, 4], &[3, 4]), (&[3, 4], &[4]), (&[2, 1, 4], &[3, 1]), (&[1], &[2, 3]), (&[], &[5])];
    for &(sa, sb) in shapes {
        let a = leaf(sa, 1.0, 0.0);
        let b = leaf(sb, 0.5, 1.5); // positive: safe for div and pow
        check("add", &[a.clone(), b.clone()], |t| t[0].add(&t[1]));
        check("sub", &[a.clone(), b.clone()], |t| t[0].sub(&t[1]));
        check("mul", &[a.clone(), b.clone()], |t| t[0].mul(&t[1]));
        check("div", &[a.clone(), b.clone()], |t| t[0].div(&t[1]));
        let (sa_, sb_) = (spaced(sa, 0.2, 0.05), spaced(sb, 0.2, 0.0));
        check("maximum", &[sa_.clone(), sb_.clone()], |t| t[0].maximum(&t[1]));
        check("minimum", &[sa_, sb_], |t| t[0].minimum(&t[1]));
        let pa = leaf(sa, 0.5, 1.5);
        check("pow", &[pa, a.clone()], |t| t[0].pow(&t[1]));
    }
    // Non-contiguous operands: a transposed matrix against a narrowed one.
    let a = leaf(&[4, 3], 1.0, 0.0);
    let b = leaf(&[3, 6], 1.0, 2.0);
    check("mul-views", &[a, b], |t| t[0].t().mul(&t[1].narrow(1, 1, 4)));
    // Both transposed the same way: computed in memory order, output keeps the order.
    check("mul-both-transposed", &[leaf(&[4, 3], 1.0, 0.0), leaf(&[4, 3], 1.0, 0.5)], |t| t[0].t().mul(&t[1].t()));
    check("exp-permuted", &[leaf(&[2, 3, 4], 1.0, 0.0)], |t| t[0].permute(&[2, 0, 1]).exp().sum(&[1], false));
    // Same tensor on both sides.
    check("square-by-mul", &[leaf(&[5], 1.0, 0.0)], |t| t[0].mul(&t[0]));
    // Scalar operators.
    check("scalar-ops", &[leaf(&[2, 3], 1.0, 0.0)], |t| ((&t[0] * 3.0 - 1.0) / 2.0 + 0.5) * &t[0]);
}

#[test]
fn where_cond() {
    let cond = Tensor::from_vec(vec![1.0f32, 0.0, 1.0], [3]);
    check("where", &[leaf(&[2, 3], 1.0, 0.0), leaf(&[1], 1.0, 0.0)], |t| cond.where_cond(&t[0], &t[1]));
}

#[test]
fn reductions() {
    let x = spaced(&[3, 4, 5], 0.05, 0.0);
    for (dims, keep) in
        [(&[0isize][..], false), (&[1], true), (&[-1], false), (&[0, 2], true), (&[2, 0], false), (&[0, 1, 2], false)]
    {
        check("sum", &[x.clone()], |t| t[0].sum(dims, keep));
        check("mean", &[x.clone()], |t| t[0].mean(dims, keep));
        check("max", &[x.clone()], |t| t[0].max(dims, keep));
        check("min", &[x.clone()], |t| t[0].min(dims, keep));
        check("var", &[x.clone()], |t| t[0].var(dims, 1, keep));
        check("std", &[x.clone()], |t| t[0].std(dims, 0, keep));
    }
    check("sum-transposed", &[x.clone()], |t| t[0].permute(&[2, 0, 1]).sum(&[1], false));
    check("sum_all", &[x.clone()], |t| t[0].sum_all());
    check("mean_all-narrow", &[x], |t| t[0].narrow(2, 1, 3).mean_all());
    // Max with ties shares the gradient equally (checked by value: finite differences are not defined there).
    let tie = Tensor::from_vec(vec![1.0f32, 3.0, 3.0], [3]).requires_grad_(true);
    tie.max(&[0], false).backward();
    assert_eq!(tie.grad().unwrap().to_vec::<f32>(), vec![0.0, 0.5, 0.5]);
}

#[test]
fn softmax_family() {
    let x = leaf(&[2, 3, 5], 2.0, 0.0);
    for dim in [0isize, 1, -1] {
        check("softmax", &[x.clone()], |t| t[0].softmax(dim));
        check("log_softmax", &[x.clone()], |t| t[0].log_softmax(dim));
    }
    check("softmax-transposed", &[x], |t| t[0].transpose(0, 2).softmax(-1));
}

#[test]
fn matmul_shapes() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 4], &[4, 5]),
        (&[1, 1], &[1, 1]),
        (&[4], &[4, 3]),
        (&[3, 4], &[4]),
        (&[4], &[4]),
        (&[2, 3, 4], &[4, 2]),
        (&[2, 1, 3, 4], &[3, 4, 2]),
        (&[5, 13], &[13, 33]),
        // A right operand with 2x more rows than columns: its gradient is
        // computed transposed and copied back (both orientations are checked).
        (&[2, 12], &[12, 3]),
    ];
    for &(sa, sb) in cases {
        check("matmul", &[leaf(sa, 1.0, 0.0), leaf(sb, 0.7, 0.1)], |t| t[0].matmul(&t[1]));
    }
    // Transposed operands go to the gemm as strided views.
    check("matmul-transposed", &[leaf(&[4, 3], 1.0, 0.0), leaf(&[5, 4], 1.0, 0.0)], |t| t[0].t().matmul(&t[1].t()));
    // A Linear-style weight `W.t()` with 4x more outputs than inputs: its
    // gradient comes out of the other orientation, then in W's layout.
    check("matmul-wide-weight", &[leaf(&[2, 3], 1.0, 0.0), leaf(&[12, 3], 1.0, 0.0)], |t| t[0].matmul(&t[1].t()));
}

/// `linear` (fused bias on the CPU): with and without a bias, a batched
/// input, sizes of 1 and odd sizes, a transposed (non-contiguous) input and
/// weight; and the activation, which runs as its own op when gradients are
/// recorded.
#[test]
fn linear_shapes_and_views() {
    for (xs, n) in [(&[3usize, 4][..], 5usize), (&[1, 1], 1), (&[2, 3, 7], 33), (&[5], 2)] {
        let k = *xs.last().unwrap();
        let (x, w, b) = (leaf(xs, 1.0, 0.0), leaf(&[n, k], 0.7, 0.1), leaf(&[n], 0.5, 0.2));
        check("linear", &[x.clone(), w.clone(), b.clone()], |t| t[0].linear(&t[1], Some(&t[2]), None));
        check("linear-no-bias", &[x.clone(), w.clone()], |t| t[0].linear(&t[1], None, None));
        check("linear-gelu", &[x, w, b], |t| t[0].linear(&t[1], Some(&t[2]), Some(UnaryOp::Gelu)));
    }
    check("linear-views", &[leaf(&[4, 3], 1.0, 0.0), leaf(&[4, 5], 1.0, 0.0), leaf(&[5], 1.0, 0.0)], |t| {
        t[0].t().linear(&t[1].t(), Some(&t[2]), None)
    });
}

/// Without gradients the bias and activation are fused into the product:
/// the same values as the composite `matmul`, `add`, activation, on edge
/// sizes; bad shapes are errors naming the op and both shapes.
#[test]
fn linear_fused_equals_its_composite() {
    for (rows, k, n) in [(1, 1, 1), (7, 13, 33), (64, 96, 130), (300, 40, 17)] {
        let x = leaf(&[rows, k], 1.0, 0.0).detach();
        let w = leaf(&[n, k], 0.3, 0.0).detach();
        let b = leaf(&[n], 1.0, 0.1).detach();
        for act in [None, Some(UnaryOp::Gelu), Some(UnaryOp::Tanh), Some(UnaryOp::Relu), Some(UnaryOp::Softplus)] {
            for bias in [None, Some(&b)] {
                let got = firebrand_autograd::with_no_grad(|| x.linear(&w, bias, act)).to_vec::<f32>();
                let y = x.matmul(&w.t());
                let y = bias.map_or(y.clone(), |b| y.add(b));
                let want = act.map_or(y.clone(), |a| y.unary(a)).to_vec::<f32>();
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{rows}x{k}x{n} {act:?}: {g} vs {w}");
                }
            }
        }
    }
    let e = Tensor::zeros([2, 7]).try_linear(&Tensor::zeros([3, 10]), None, None).unwrap_err().to_string();
    assert!(e.contains("linear") && e.contains("[2, 7]") && e.contains("[3, 10]"), "{e}");
    let e = Tensor::zeros([2, 10]).try_linear(&Tensor::zeros([3, 10]), Some(&Tensor::zeros([4])), None);
    let e = e.unwrap_err().to_string();
    assert!(e.contains("linear") && e.contains("bias") && e.contains("[4]"), "{e}");
}

#[test]
fn views() {
    let x = leaf(&[2, 3, 4], 1.0, 0.0);
    let w = Tensor::from_vec((0..24).map(|i| i as f32 * 0.1).collect::<Vec<f32>>(), [24]);
    check("reshape", &[x.clone()], |t| t[0].reshape([4, 6]));
    check("reshape-copy", &[x.clone()], |t| t[0].transpose(0, 2).reshape([24]).mul(&w));
    check("flatten", &[x.clone()], |t| t[0].flatten(1, 2));
    check("permute", &[x.clone()], |t| t[0].permute(&[2, 0, 1]).contiguous().reshape([24]).mul(&w));
    check("narrow", &[x.clone()], |t| t[0].narrow(1, 1, 2));
    check("select", &[x.clone()], |t| t[0].select(2, 3));
    check("chunk", &[x.clone()], |t| t[0].chunk(2, 2)[1].mul(&t[0].chunk(2, 2)[0]));
    check("squeeze/unsqueeze", &[leaf(&[3, 1], 1.0, 0.0)], |t| t[0].squeeze(1).unsqueeze(0).unsqueeze(-1));
    check("broadcast_to", &[leaf(&[3, 1], 1.0, 0.0)], |t| t[0].broadcast_to([2, 3, 4]).mul(&w.reshape([2, 3, 4])));
    check("contiguous", &[leaf(&[3, 4], 1.0, 0.0)], |t| t[0].t().contiguous());
}

#[test]
fn indexing() {
    let x = leaf(&[4, 3], 1.0, 0.0);
    let idx = Tensor::from_vec(vec![2i64, 0, 2, 3], [4]);
    check("index_select", &[x.clone()], |t| t[0].index_select(0, &idx));
    check("index_select-dim1", &[x.clone()], |t| t[0].index_select(1, &Tensor::from_vec(vec![1i64, 1], [2])));
    check("index_add", &[x.clone(), leaf(&[4, 3], 0.5, 0.0)], |t| t[0].index_add(0, &idx, &t[1]));
    let gidx = Tensor::from_vec(vec![0i64, 2, 1, 1, 0, 0, 2, 2], [4, 2]);
    check("gather", &[x.clone()], |t| t[0].gather(1, &gidx));
    check("scatter_add", &[x.clone(), leaf(&[4, 2], 0.5, 0.0)], |t| t[0].scatter_add(1, &gidx, &t[1]));
    check("cat", &[x.clone(), leaf(&[4, 2], 1.0, 0.0)], |t| Tensor::cat(&[&t[0], &t[1], &t[0]], 1));
    check("stack", &[x.clone(), leaf(&[4, 3], 1.0, 0.0)], |t| Tensor::stack(&[&t[0], &t[1]], 1));
}

#[test]
fn gradcheck_catches_a_wrong_gradient() {
    // A deliberately wrong backward: detach half of the input's contribution.
    let x = leaf(&[4], 1.0, 0.5);
    let err = gradcheck(|t| t[0].mul(&t[0].detach()), &[x], GradcheckOptions::default()).unwrap_err();
    assert!(err.to_string().contains("gradcheck: input 0"), "{err}");
}

/// Whichever orientation computes a weight's gradient, it arrives in the
/// weight's own layout (the optimizers read it as one contiguous run).
#[test]
fn weight_gradients_come_back_in_the_weights_layout() {
    for (out, inp) in [(12, 3), (3, 12), (5, 5)] {
        let w = Tensor::randn([out, inp], 0.0, 1.0).requires_grad_(true); // (out, in), used as w.t()
        let x = Tensor::randn([7, inp], 0.0, 1.0);
        x.matmul(&w.t()).sum_all().backward();
        let g = w.grad().unwrap();
        assert!(g.is_contiguous(), "{out}x{inp}: grad layout");
        let want = Tensor::ones([7, out]).t().matmul(&x); // (out, in)
        assert_eq!(g.dims(), want.dims());
        for (a, b) in g.to_vec::<f32>().iter().zip(want.to_vec::<f32>()) {
            assert!((a - b).abs() < 1e-5, "{out}x{inp}: {a} vs {b}");
        }
    }
}
