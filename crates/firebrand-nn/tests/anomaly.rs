//! `detect_anomaly`: the first op to produce a NaN or inf, in the forward or
//! the backward pass, is named with the place in the code that called it;
//! with it off, NaN propagates as in PyTorch.

use firebrand_autograd::{Tensor, detect_anomaly, is_anomaly_enabled};
use firebrand_nn::{Linear, Module, Sequential};
use std::panic::{AssertUnwindSafe, catch_unwind};

fn layer() -> Sequential {
    let l = Linear::new(2, 2);
    l.weight.copy_(&Tensor::from_vec(vec![1.0f32, 0.0, 0.0, -1.0], [2, 2])).unwrap();
    l.bias.as_ref().unwrap().copy_(&Tensor::zeros([2])).unwrap();
    Sequential::new().add(l)
}

/// `log` of a layer's negative output: NaN in the forward pass.
fn log_of_negative(net: &Sequential) -> Tensor {
    net.forward(&Tensor::from_vec(vec![1.0f32, 2.0], [1, 2])).log().sum_all()
}

#[test]
fn the_forward_op_that_made_a_nan_is_named_with_its_call_site() {
    let net = layer();
    // Off (the default): NaN propagates, nothing is said.
    assert!(!is_anomaly_enabled());
    assert!(log_of_negative(&net).item().is_nan());
    let msg = {
        let _on = detect_anomaly();
        let e = catch_unwind(AssertUnwindSafe(|| drop(log_of_negative(&net)))).unwrap_err();
        e.downcast_ref::<String>().cloned().unwrap()
    };
    assert!(
        msg.starts_with("detect_anomaly: `log` produced NaN in its output of shape [1, 2] from inputs without it"),
        "{msg}"
    );
    // The call site is this file's function, with its line.
    assert!(msg.contains("log_of_negative") && msg.contains("tests/anomaly.rs:18"), "{msg}");
    assert!(!is_anomaly_enabled(), "the guard switched it off again");
}

#[test]
fn the_backward_op_that_made_an_inf_is_named_with_its_call_site() {
    let net = layer();
    // relu then sqrt: the forward is finite at 0, the gradient of sqrt there is not.
    let loss = || net.forward(&Tensor::from_vec(vec![0.0f32, 0.0], [1, 2])).relu().sqrt().sum_all();
    loss().backward(); // off: no error, an inf gradient
    let _on = detect_anomaly();
    let e = loss().try_backward().unwrap_err().to_string();
    assert!(e.contains("detect_anomaly: the gradient of `sqrt` is inf for its input 0 of shape [1, 2]"), "{e}");
    assert!(e.contains("forward call site") && e.contains("tests/anomaly.rs:"), "{e}");
    // Finite throughout: nothing to say.
    net.forward(&Tensor::ones([3, 2])).square().sum_all().try_backward().unwrap();
}
