//! Every optimizer's tensor-op rule (the path for parameters on a device or
//! of another dtype) against its host loop: the same parameters in `f64`
//! (updated by tensor ops) and in `f32` (updated in place) stay together
//! over several steps, and the state exported from either loads into the other.

use firebrand_autograd::{DType, Tensor};
use firebrand_optim::{Adam, AdamW, Optimizer, RmsProp, Sgd, clip_grad_norm, clip_grad_value};

type Make = fn(Vec<(String, Tensor)>) -> Box<dyn Optimizer>;

fn optimizers() -> Vec<(&'static str, Make)> {
    vec![
        ("sgd", |p| Box::new(Sgd::new(p, 0.1))),
        ("sgd momentum nesterov wd", |p| Box::new(Sgd::with_options(p, 0.05, 0.9, 0.0, true, 0.01))),
        ("sgd momentum dampening", |p| Box::new(Sgd::with_options(p, 0.05, 0.8, 0.3, false, 0.0))),
        ("adam wd", |p| Box::new(Adam::with_options(p, 0.01, (0.9, 0.999), 1e-8, 0.01))),
        ("adamw", |p| Box::new(AdamW::new(p, 0.01))),
        ("rmsprop centered momentum", |p| Box::new(RmsProp::with_options(p, 0.01, 0.9, 1e-8, 0.5, true, 0.01))),
        ("rmsprop", |p| Box::new(RmsProp::new(p, 0.01))),
    ]
}

fn loss(p: &Tensor, x: &Tensor) -> Tensor {
    p.matmul(x).tanh().square().sum_all()
}

#[test]
fn tensor_rules_follow_the_host_loops() {
    let init = Tensor::randn([3, 4], 0.0, 1.0);
    let x = Tensor::randn([4, 5], 0.0, 1.0);
    for (name, make) in optimizers() {
        let p32 = init.detach_copy().requires_grad_(true);
        let p64 = init.to_dtype(DType::F64).requires_grad_(true);
        let mut o32 = make(vec![("w".into(), p32.clone())]);
        let mut o64 = make(vec![("w".into(), p64.clone())]);
        for _ in 0..6 {
            for (p, o, xx) in [(&p32, &mut o32, x.clone()), (&p64, &mut o64, x.to_dtype(DType::F64))] {
                o.zero_grad();
                loss(p, &xx).backward();
                clip_grad_value(std::slice::from_ref(p), 0.8);
                o.step();
            }
        }
        let (a, b) = (p32.to_vec::<f32>(), p64.to_vec::<f64>());
        for (i, (u, v)) in a.iter().zip(&b).enumerate() {
            assert!((*u as f64 - v).abs() < 1e-5, "{name}[{i}]: host {u} vs tensor ops {v}");
        }
        // The tensor path's state exports like the host's.
        let (s32, s64) = (o32.state(), o64.state());
        assert_eq!(s32.len(), s64.len(), "{name}");
        for ((n1, t1), (n2, t2)) in s32.iter().zip(&s64) {
            assert_eq!(n1, n2);
            let d = t1.to_dtype(DType::F64).sub(&t2.to_dtype(DType::F64)).abs().max_all().item();
            assert!(d < 1e-5, "{name} state {n1}: {d}");
        }
    }
}

#[test]
fn clip_grad_norm_in_tensor_ops_matches_the_host() {
    let w = Tensor::from_vec(vec![3.0f64, 4.0], [2]).requires_grad_(true);
    w.square().sum_all().affine(0.5, 0.0).backward();
    assert!((clip_grad_norm(std::slice::from_ref(&w), 1.0) - 5.0).abs() < 1e-5);
    let g = w.grad().unwrap().to_vec::<f64>();
    assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5, "{g:?}");
}
