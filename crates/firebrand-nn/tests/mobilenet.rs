//! MobileNetV2 against torchvision's: the same `state_dict` names, and the
//! same logits when both models carry the same weights (set by a formula on
//! each side; `reference/make_mobilenet.py` wrote torchvision's outputs).

use firebrand_autograd::Tensor;
use firebrand_nn::models::MobileNetV2;
use firebrand_nn::{Module, ModuleExt};
use serde_json::Value;

fn reference() -> Value {
    serde_json::from_str(include_str!("reference/mobilenet_reference.json")).unwrap()
}

/// `sin(0.37 i + 0.11 + k)` over `n` elements, in f64 as the script computes it.
fn values(k: usize, n: usize) -> Vec<f64> {
    (0..n).map(|i| (0.37 * i as f64 + 0.11 + k as f64).sin()).collect()
}

/// The script's `formula`: what each tensor holds, by name and shape.
fn formula(name: &str, k: usize, dims: &[usize]) -> Vec<f32> {
    let v = values(k, dims.iter().product());
    let f = |g: &dyn Fn(f64) -> f64| v.iter().map(|&x| g(x) as f32).collect();
    if name.ends_with("running_mean") {
        f(&|x| 0.1 * x)
    } else if name.ends_with("running_var") {
        f(&|x| 1.0 + 0.25 * (x + 1.0))
    } else if dims.len() == 4 {
        let fan_in = (dims[1] * dims[2] * dims[3]) as f64;
        f(&|x| x * 2.0 / fan_in.sqrt())
    } else if dims.len() == 2 {
        let fan_in = dims[1] as f64;
        f(&|x| x / fan_in.sqrt())
    } else if name.ends_with("weight") {
        f(&|x| 1.0 + 0.1 * x)
    } else {
        f(&|x| 0.1 * x)
    }
}

#[test]
fn names_and_logits_match_torchvision() {
    let r = reference();
    let mut net = MobileNetV2::new(10);
    let state = net.state_dict();
    let mut ours: Vec<String> = state.iter().map(|(n, _)| n.clone()).collect();
    ours.sort();
    let theirs: Vec<String> = r["names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(ours, theirs, "state_dict names");
    for (k, name) in ours.iter().enumerate() {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let t = &state.iter().find(|(n, _)| n == name).unwrap().1;
        t.copy_(&Tensor::from_vec(formula(name, k, t.dims()), t.shape().clone())).unwrap();
    }
    net.eval();
    let x = Tensor::from_vec(values(0, 2 * 3 * 64 * 64).iter().map(|&v| v as f32).collect::<Vec<_>>(), [2, 3, 64, 64]);
    let logits = net.forward(&x).to_vec::<f32>();
    let want: Vec<f64> = r["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (a, b)) in logits.iter().zip(&want).enumerate() {
        assert!((*a as f64 - b).abs() <= 1e-4 * scale, "logit {i}: {a} vs torchvision {b}");
    }
    // Inference (evaluation, no graph) runs the batch one image at a time: the same logits.
    let split = firebrand_autograd::with_no_grad(|| net.forward(&x)).to_vec::<f32>();
    for (i, (a, b)) in split.iter().zip(&want).enumerate() {
        assert!((*a as f64 - b).abs() <= 1e-4 * scale, "inference logit {i}: {a} vs torchvision {b}");
    }
    let features = net.features.forward(&x).sum_all().item() as f64;
    let fs = r["features_sum"].as_f64().unwrap();
    assert!((features - fs).abs() <= 1e-4 * fs.abs().max(1.0), "features sum {features} vs {fs}");
}
