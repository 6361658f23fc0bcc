//! Losses and `Linear` against PyTorch (float64 references from
//! `reference/make_reference.py`), and gradchecks of every loss.

use firebrand_autograd::{GradcheckOptions, Tensor, gradcheck};
use firebrand_nn::loss::{Reduction, Target, binary_cross_entropy_with_logits, cross_entropy, mse_loss, nll_loss};
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
    probs: Tensor,
    mse_target: Tensor,
    bce_target: Tensor,
}

fn inputs(c: &Value) -> (Tensor, Inputs) {
    let i = &c["inputs"];
    let idx: Vec<i64> = i["idx"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let logits = Tensor::from_vec(f32s(&i["logits"]), [4, 5]);
    let inputs = Inputs {
        idx: Tensor::from_vec(idx, [4]),
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
    assert_eq!(e.to_string(), "nll_loss: shape mismatch between [4, 5] and [3]");
    let floats = Tensor::zeros([4]);
    assert!(cross_entropy(&logits, Target::Indices(&floats), 0.0, Reduction::Mean).is_err());
    let out_of_range = Tensor::from_vec(vec![0i64, 1, 2, 5], [4]);
    assert!(cross_entropy(&logits, Target::Indices(&out_of_range), 0.0, Reduction::Mean).is_err());
    // Sequences: (N, T, C) logits with (N, T) targets.
    let seq = Tensor::zeros([2, 3, 5]);
    let t = Tensor::from_vec(vec![0i64; 6], [2, 3]);
    let l = cross_entropy(&seq, Target::Indices(&t), 0.0, Reduction::None).unwrap();
    assert_eq!(l.dims(), &[2, 3]);
    assert!((l.to_vec::<f32>()[0] - 5f32.ln()).abs() < 1e-6);
}
