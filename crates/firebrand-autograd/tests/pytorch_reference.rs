//! Values and gradients compared with PyTorch. The expected numbers are in
//! `reference/pytorch_reference.json`, written by `reference/make_reference.py`
//! (PyTorch in float64; we compute in f32, hence the tolerances).

use firebrand_autograd::Tensor;
use serde_json::Value;

fn cases() -> Value {
    let v: Value = serde_json::from_str(include_str!("reference/pytorch_reference.json")).unwrap();
    v["cases"].clone()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn dims(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: got {g}, PyTorch {w}");
    }
}

#[test]
fn matmul_2d_matches_pytorch() {
    let c = &cases()["matmul_2d"];
    let a = Tensor::from_vec(f32s(&c["a"]), dims(&c["a_shape"]));
    let b = Tensor::from_vec(f32s(&c["b"]), dims(&c["b_shape"]));
    close(&a.matmul(&b).to_vec(), &f32s(&c["out"]), 1e-5, "matmul");
}

#[test]
fn batched_broadcast_matmul_and_grads_match_pytorch() {
    let c = &cases()["matmul_batched"];
    let a = Tensor::from_vec(f32s(&c["a"]), dims(&c["a_shape"])).requires_grad_(true);
    let b = Tensor::from_vec(f32s(&c["b"]), dims(&c["b_shape"])).requires_grad_(true);
    let out = a.matmul(&b);
    assert_eq!(out.dims(), dims(&c["out_shape"]).as_slice());
    close(&out.to_vec(), &f32s(&c["out"]), 1e-5, "out");
    let w = Tensor::from_vec(f32s(&c["w"]), dims(&c["out_shape"]));
    out.mul(&w).sum_all().backward();
    close(&a.grad().unwrap().to_vec(), &f32s(&c["grad_a"]), 1e-5, "grad_a");
    close(&b.grad().unwrap().to_vec(), &f32s(&c["grad_b"]), 1e-5, "grad_b");
}

#[test]
fn softmax_and_log_softmax_match_pytorch() {
    for name in ["softmax", "log_softmax"] {
        let c = &cases()[name];
        let x = Tensor::from_vec(f32s(&c["x"]), dims(&c["shape"])).requires_grad_(true);
        let dim = c["dim"].as_i64().unwrap() as isize;
        let y = if name == "softmax" { x.softmax(dim) } else { x.log_softmax(dim) };
        close(&y.to_vec(), &f32s(&c["out"]), 1e-5, name);
        let w = Tensor::from_vec(f32s(&c["w"]), dims(&c["shape"]));
        y.mul(&w).sum_all().backward();
        close(&x.grad().unwrap().to_vec(), &f32s(&c["grad_x"]), 1e-5, name);
    }
}

#[test]
fn linear_log_softmax_nll_matches_pytorch() {
    let c = &cases()["linear_log_softmax_nll"];
    let x = Tensor::from_vec(f32s(&c["x"]), dims(&c["x_shape"]));
    let w = Tensor::from_vec(f32s(&c["w"]), dims(&c["w_shape"])).requires_grad_(true);
    let b = Tensor::from_vec(f32s(&c["b"]), [5]).requires_grad_(true);
    let target: Vec<i64> = c["target"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let target = Tensor::from_vec(target, [4, 1]);
    let logp = (x.matmul(&w) + &b).log_softmax(-1);
    close(&logp.to_vec(), &f32s(&c["logp"]), 1e-5, "logp");
    let loss = -logp.gather(1, &target).mean_all();
    close(&[loss.item()], &[c["loss"].as_f64().unwrap() as f32], 1e-5, "loss");
    loss.backward();
    close(&w.grad().unwrap().to_vec(), &f32s(&c["grad_w"]), 1e-5, "grad_w");
    close(&b.grad().unwrap().to_vec(), &f32s(&c["grad_b"]), 1e-5, "grad_b");
}

#[test]
fn activations_match_pytorch() {
    let c = &cases()["unary"];
    let x = Tensor::from_vec(f32s(&c["x"]), [7]);
    close(&x.gelu().to_vec(), &f32s(&c["gelu"]), 1e-6, "gelu");
    close(&x.gelu_tanh().to_vec(), &f32s(&c["gelu_tanh"]), 1e-6, "gelu_tanh");
    close(&x.silu().to_vec(), &f32s(&c["silu"]), 1e-6, "silu");
    close(&x.softplus().to_vec(), &f32s(&c["softplus"]), 1e-6, "softplus");
}

#[test]
fn var_and_std_match_pytorch() {
    let c = &cases()["var_std"];
    let x = Tensor::from_vec(f32s(&c["x"]), dims(&c["shape"]));
    close(&x.var(&[0], 1, false).to_vec(), &f32s(&c["var0"]), 1e-5, "var");
    close(&x.std(&[1], 0, false).to_vec(), &f32s(&c["std1_biased"]), 1e-5, "std");
}
