//! Losses and `Linear` against PyTorch (float64 references from
//! `reference/make_reference.py`), and gradchecks of every loss.

use firebrand_autograd::{GradcheckOptions, Tensor, gradcheck};
use firebrand_nn::loss::{
    CrossEntropyLoss, Reduction, Target, binary_cross_entropy_with_logits, cross_entropy, mse_loss, nll_loss,
};
use firebrand_nn::{Linear, Module};
use serde_json::Value;

mod common;
use common::{cases, close_within, f32s};

fn close(got: &[f32], want: &[f32], what: &str) {
    close_within(got, want, what, 1e-5);
}

type LossFn = fn(&Tensor, &Inputs) -> Tensor;

struct Inputs {
    idx: Tensor,
    idx_ignore: Tensor,
    probs: Tensor,
    mse_target: Tensor,
    bce_target: Tensor,
}

fn inputs(c: &Value) -> (Tensor, Inputs) {
    let i = &c["inputs"];
    let ints = |k: &str| -> Vec<i64> { i[k].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect() };
    let logits = Tensor::from_vec(f32s(&i["logits"]), [4, 5]);
    let inputs = Inputs {
        idx: Tensor::from_vec(ints("idx"), [4]),
        idx_ignore: Tensor::from_vec(ints("idx_ignore"), [4]),
        probs: Tensor::from_vec(f32s(&i["probs"]), [4, 5]),
        mse_target: Tensor::from_vec(f32s(&i["mse_target"]), [4, 5]),
        bce_target: Tensor::from_vec(f32s(&i["bce_target"]), [4, 5]),
    };
    (logits, inputs)
}

const LOSSES: &[(&str, LossFn)] = &[
    ("ce_indices", |x, i| cross_entropy(x, Target::Indices(&i.idx), 0.0, Reduction::Mean).unwrap()),
    ("ce_smoothing", |x, i| cross_entropy(x, Target::Indices(&i.idx), 0.1, Reduction::Mean).unwrap()),
    ("ce_probs", |x, i| cross_entropy(x, Target::Probs(&i.probs), 0.0, Reduction::Mean).unwrap()),
    ("ce_probs_smoothing", |x, i| cross_entropy(x, Target::Probs(&i.probs), 0.2, Reduction::Mean).unwrap()),
    ("ce_sum", |x, i| cross_entropy(x, Target::Indices(&i.idx), 0.0, Reduction::Sum).unwrap()),
    ("nll", |x, i| nll_loss(&x.log_softmax(-1), &i.idx, Reduction::Mean).unwrap()),
    ("ce_ignore", |x, i| cross_entropy(x, Target::Indices(&i.idx_ignore), 0.0, Reduction::Mean).unwrap()),
    ("ce_ignore_smoothing", |x, i| cross_entropy(x, Target::Indices(&i.idx_ignore), 0.1, Reduction::Mean).unwrap()),
    ("ce_ignore_sum", |x, i| cross_entropy(x, Target::Indices(&i.idx_ignore), 0.0, Reduction::Sum).unwrap()),
    ("nll_ignore", |x, i| nll_loss(&x.log_softmax(-1), &i.idx_ignore, Reduction::Mean).unwrap()),
    ("mse", |x, i| mse_loss(x, &i.mse_target, Reduction::Mean).unwrap()),
    ("bce_logits", |x, i| binary_cross_entropy_with_logits(x, &i.bce_target, Reduction::Mean).unwrap()),
];

#[test]
fn losses_match_pytorch_values_and_gradients() {
    let c = cases();
    let (logits, inp) = inputs(&c);
    for (name, f) in LOSSES {
        let x = logits.detach().requires_grad_(true);
        let loss = f(&x, &inp);
        close(&[loss.item()], &[c[name]["loss"].as_f64().unwrap() as f32], name);
        loss.backward();
        close(&x.grad().unwrap().to_vec::<f32>(), &f32s(&c[name]["grad"]), name);
    }
}

#[test]
fn losses_pass_gradcheck() {
    let c = cases();
    let (logits, inp) = inputs(&c);
    for (name, f) in LOSSES {
        let x = logits.detach().requires_grad_(true);
        if let Err(e) = gradcheck(|t| f(&t[0], &inp), &[x], GradcheckOptions::default()) {
            panic!("{name}: {e}");
        }
    }
}

#[test]
fn linear_matches_pytorch() {
    let c = &cases()["linear"];
    let layer = Linear::new(6, 3);
    layer.weight.copy_(&Tensor::from_vec(f32s(&c["W"]), [3, 6])).unwrap();
    layer.bias.as_ref().unwrap().copy_(&Tensor::from_vec(f32s(&c["b"]), [3])).unwrap();
    let x = Tensor::from_vec(f32s(&c["x"]), [2, 6]).requires_grad_(true);
    let y = layer.forward(&x);
    close(&y.to_vec::<f32>(), &f32s(&c["y"]), "y");
    y.mul(&Tensor::from_vec(f32s(&c["wout"]), [2, 3])).sum_all().backward();
    close(&layer.weight.grad().unwrap().to_vec::<f32>(), &f32s(&c["gW"]), "grad W");
    close(&layer.bias.as_ref().unwrap().grad().unwrap().to_vec::<f32>(), &f32s(&c["gb"]), "grad b");
    close(&x.grad().unwrap().to_vec::<f32>(), &f32s(&c["gx"]), "grad x");
}

#[test]
fn loss_errors_name_the_problem() {
    let logits = Tensor::zeros([4, 5]);
    let bad = Tensor::from_vec(vec![0i64, 1, 2], [3]);
    let e = cross_entropy(&logits, Target::Indices(&bad), 0.0, Reduction::Mean).unwrap_err();
    assert_eq!(e.to_string(), "cross_entropy: shape mismatch between [4, 5] and [3]");
    // f32 labels where class indices belong: named as such, through both target kinds.
    let floats = Tensor::zeros([4]);
    let e = cross_entropy(&logits, Target::Indices(&floats), 0.0, Reduction::Mean).unwrap_err();
    assert!(e.to_string().contains("i64 class indices"), "{e}");
    let e = cross_entropy(&logits, Target::Probs(&floats), 0.0, Reduction::Mean).unwrap_err();
    assert!(e.to_string().contains("class indices must be i64") && e.to_string().contains("[4, 5]"), "{e}");
    // Out of range, above and below, with the value and where it is.
    for (v, pos) in [(5i64, 3usize), (-1, 2)] {
        let mut t = vec![0i64, 1, 2, 3];
        t[pos] = v;
        let e = cross_entropy(&logits, Target::Indices(&Tensor::from_vec(t, [4])), 0.0, Reduction::Mean).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cross_entropy: target {v} at sample [{pos}] is out of bounds for 5 classes (valid: 0..5, or the ignore_index -100)"
            )
        );
    }
    let e = nll_loss(&logits, &Tensor::from_vec(vec![0i64, 1, 9, 3], [4]), Reduction::Mean).unwrap_err();
    assert!(e.to_string().starts_with("nll_loss: target 9 at sample [2]"), "{e}");
    // Without an ignore index, -100 is out of range too.
    let ce = CrossEntropyLoss { ignore_index: None, ..Default::default() };
    let e = ce.compute(&logits, Target::Indices(&Tensor::from_vec(vec![0i64, -100, 0, 0], [4]))).unwrap_err();
    assert!(e.to_string().ends_with("(valid: 0..5)"), "{e}");
    // Sequences: (N, T, C) logits with (N, T) targets; positions are (n, t).
    let seq = Tensor::zeros([2, 3, 5]);
    let t = Tensor::from_vec(vec![0i64; 6], [2, 3]);
    let l = cross_entropy(&seq, Target::Indices(&t), 0.0, Reduction::None).unwrap();
    assert_eq!(l.dims(), &[2, 3]);
    assert!((l.to_vec::<f32>()[0] - 5f32.ln()).abs() < 1e-6);
    let t = Tensor::from_vec(vec![0i64, 0, 0, 0, 7, 0], [2, 3]);
    let e = cross_entropy(&seq, Target::Indices(&t), 0.0, Reduction::Mean).unwrap_err();
    assert!(e.to_string().contains("target 7 at sample [1, 1]"), "{e}");
    // Elementwise losses refuse shapes that would broadcast: (N, 1) vs (N,) is not (N, N).
    for f in [mse_loss, binary_cross_entropy_with_logits] {
        let e = f(&Tensor::zeros([4, 1]), &Tensor::zeros([4]), Reduction::Mean).unwrap_err();
        assert!(e.to_string().contains("input [4, 1] and target [4] have different shapes"), "{e}");
    }
}

#[test]
fn ignored_targets_add_no_loss_and_no_gradient() {
    let x =
        Tensor::from_vec((0..12).map(|i| (i as f32 * 0.7).sin()).collect::<Vec<_>>(), [2, 2, 3]).requires_grad_(true);
    let t = Tensor::from_vec(vec![2i64, -100, -100, 1], [2, 2]);
    let none = cross_entropy(&x, Target::Indices(&t), 0.0, Reduction::None).unwrap().to_vec::<f32>();
    assert_eq!((none[1], none[2]), (0.0, 0.0));
    let mean = cross_entropy(&x, Target::Indices(&t), 0.0, Reduction::Mean).unwrap();
    assert!((mean.item() - (none[0] + none[3]) / 2.0).abs() < 1e-6);
    mean.backward();
    let g = x.grad().unwrap().to_vec::<f32>();
    assert!(g[3..9].iter().all(|&v| v == 0.0) && g[..3].iter().any(|&v| v != 0.0));
    // Everything ignored: NaN, as in PyTorch.
    let all = Tensor::from_vec(vec![-100i64; 4], [2, 2]);
    assert!(cross_entropy(&x, Target::Indices(&all), 0.0, Reduction::Mean).unwrap().item().is_nan());
}
