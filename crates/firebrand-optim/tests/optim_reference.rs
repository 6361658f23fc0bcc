//! Five steps of every optimizer configuration against `torch.optim`
//! (references from `reference/make_reference.py`), and exact resumption from
//! saved state.

use firebrand_autograd::Tensor;
use firebrand_optim::{Adam, AdamW, Optimizer, RmsProp, Sgd, clip_grad_norm, clip_grad_value, decay_all};
use serde_json::Value;
use std::collections::BTreeMap;

fn reference() -> Value {
    serde_json::from_str(include_str!("reference/optim_reference.json")).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

struct Problem {
    a: Tensor,
    b: Tensor,
}

impl Problem {
    fn new(r: &Value) -> Self {
        Problem { a: Tensor::from_vec(f32s(&r["A"]), [3, 5]), b: Tensor::from_vec(f32s(&r["b"]), [3]) }
    }
    /// mean((A w + c - b)^2) + 0.05 sum(w^4) + 0.1 sum(c^2)
    fn loss(&self, w: &Tensor, c: &Tensor) -> Tensor {
        let r = self.a.matmul(w) + c - &self.b;
        r.square().mean_all() + w.powf(4.0).sum_all() * 0.05 + c.square().sum_all() * 0.1
    }
}

type Make = fn(Vec<(String, Tensor)>) -> Box<dyn Optimizer>;

const CONFIGS: &[(&str, Make)] = &[
    ("sgd", |p| Box::new(Sgd::new(p, 0.1))),
    ("sgd_momentum_dampening", |p| Box::new(Sgd::with_options(p, 0.05, 0.9, 0.1, false, 0.0))),
    ("sgd_nesterov_wd", |p| Box::new(Sgd::with_options(p, 0.05, 0.9, 0.0, true, 0.01))),
    ("adam", |p| Box::new(Adam::new(p, 0.01))),
    ("adam_wd", |p| Box::new(Adam::with_options(p, 0.01, (0.8, 0.95), 1e-6, 0.01))),
    ("adamw", |p| Box::new(AdamW::with_options(p, 0.01, (0.9, 0.999), 1e-8, 0.1, &decay_all))),
    ("rmsprop", |p| Box::new(RmsProp::new(p, 0.01))),
    ("rmsprop_centered_momentum_wd", |p| Box::new(RmsProp::with_options(p, 0.01, 0.9, 1e-8, 0.5, true, 0.01))),
];

fn params(r: &Value) -> (Tensor, Tensor) {
    (
        Tensor::from_vec(f32s(&r["w0"]), [5]).requires_grad_(true),
        Tensor::from_vec(f32s(&r["c0"]), [3]).requires_grad_(true),
    )
}

#[test]
fn every_optimizer_matches_torch_optim_for_five_steps() {
    let r = reference();
    let prob = Problem::new(&r);
    for (name, make) in CONFIGS {
        let (w, c) = params(&r);
        let mut opt = make(vec![("w".into(), w.clone()), ("c".into(), c.clone())]);
        for (step, want) in r["cases"][name].as_array().unwrap().iter().enumerate() {
            opt.zero_grad();
            prob.loss(&w, &c).backward();
            opt.step();
            for (got, key) in [(&w, "w"), (&c, "c")] {
                for (g, e) in got.to_vec::<f32>().iter().zip(f32s(&want[key])) {
                    assert!((g - e).abs() < 1e-5, "{name} step {step} {key}: {g} vs torch {e}");
                }
            }
        }
    }
}

#[test]
fn resuming_from_saved_state_is_exact() {
    let r = reference();
    let prob = Problem::new(&r);
    for (name, make) in CONFIGS {
        // Uninterrupted: 6 steps.
        let (w, c) = params(&r);
        let mut opt = make(vec![("w".into(), w.clone()), ("c".into(), c.clone())]);
        for _ in 0..6 {
            opt.zero_grad();
            prob.loss(&w, &c).backward();
            opt.step();
        }
        // Interrupted after 3: parameters and optimizer state carried to fresh objects.
        let (w2, c2) = params(&r);
        let mut first = make(vec![("w".into(), w2.clone()), ("c".into(), c2.clone())]);
        for _ in 0..3 {
            first.zero_grad();
            prob.loss(&w2, &c2).backward();
            first.step();
        }
        let state: BTreeMap<String, Tensor> = first.state().into_iter().collect();
        let w3 = Tensor::from_vec(w2.to_vec::<f32>(), [5]).requires_grad_(true);
        let c3 = Tensor::from_vec(c2.to_vec::<f32>(), [3]).requires_grad_(true);
        let mut second = make(vec![("w".into(), w3.clone()), ("c".into(), c3.clone())]);
        second.load_state(&state).unwrap();
        for _ in 0..3 {
            second.zero_grad();
            prob.loss(&w3, &c3).backward();
            second.step();
        }
        assert_eq!(w3.to_vec::<f32>(), w.to_vec::<f32>(), "{name}: w after resume");
        assert_eq!(c3.to_vec::<f32>(), c.to_vec::<f32>(), "{name}: c after resume");
        // Bad state is refused without touching the optimizer.
        let mut bad = state.clone();
        bad.remove("step");
        assert!(second.load_state(&bad).is_err(), "{name}");
    }
}

#[test]
fn state_shape_mismatch_is_named() {
    let w = Tensor::zeros([2]).requires_grad_(true);
    let mut opt = Adam::new(vec![("w".into(), w)], 0.1);
    let mut state: BTreeMap<String, Tensor> = opt.state().into_iter().collect();
    state.insert("w.exp_avg".into(), Tensor::zeros([3]));
    let e = opt.load_state(&state).unwrap_err();
    assert_eq!(e.to_string(), "optimizer state: \"w.exp_avg\" has shape [3] (f32), expected [2]");
}

#[test]
fn clipping() {
    let a = Tensor::from_vec(vec![3.0f32, 0.0], [2]).requires_grad_(true);
    let b = Tensor::from_vec(vec![0.0f32, 4.0], [2]).requires_grad_(true);
    (a.square().sum_all() * 0.5 + b.square().sum_all() * 0.5).backward(); // grads = values, norm 5
    let norm = clip_grad_norm(&[a.clone(), b.clone()], 1.0);
    assert!((norm - 5.0).abs() < 1e-6);
    let ga = a.grad().unwrap().to_vec::<f32>();
    let gb = b.grad().unwrap().to_vec::<f32>();
    assert!((ga[0] - 0.6).abs() < 1e-5 && (gb[1] - 0.8).abs() < 1e-5);
    // Below the limit nothing changes.
    assert!((clip_grad_norm(&[a.clone(), b.clone()], 10.0) - 1.0).abs() < 1e-5);
    clip_grad_value(&[a.clone(), b.clone()], 0.7);
    assert_eq!(b.grad().unwrap().to_vec::<f32>(), vec![0.0, 0.7]);
}
