//! `save_training_state` / `load_training_state`: a custom loop stopped,
//! saved and resumed in a fresh process-like setting ends bit-identical to
//! the uninterrupted run; bad files give errors naming the file and tensor.

use firebrand_autograd::{Tensor, manual_seed};
use firebrand_nn::{Activation, Linear, ModuleExt, Sequential};
use firebrand_optim::{AdamW, Optimizer, decay_matrices};
use firebrand_train::{load_training_state, save_training_state};

fn net() -> Sequential {
    manual_seed(1);
    Sequential::new().add(Linear::new(4, 8).with_activation(Activation::Relu)).add(Linear::new(8, 2))
}

fn step(n: &Sequential, opt: &mut dyn Optimizer, i: u64) {
    use firebrand_nn::Module;
    manual_seed(100 + i); // the batch is a function of the step
    let x = Tensor::randn([5, 4], 0.0, 1.0);
    let loss = n.forward(&x).square().mean_all();
    opt.zero_grad();
    loss.backward();
    opt.step();
}

fn optimizer(n: &Sequential) -> firebrand_optim::Adam {
    AdamW::with_options(n.named_parameters(), 1e-2, (0.9, 0.99), 1e-8, 0.1, &decay_matrices)
}

#[test]
fn resuming_equals_the_uninterrupted_run() {
    let a = net();
    let mut opt_a = optimizer(&a);
    (0..10).for_each(|i| step(&a, &mut opt_a, i));

    let path = std::env::temp_dir().join(format!("fb_training_state_{}.safetensors", std::process::id()));
    let b = net();
    let mut opt_b = optimizer(&b);
    (0..6).for_each(|i| step(&b, &mut opt_b, i));
    save_training_state(&path, &b, &opt_b, 6).unwrap();
    drop((b, opt_b));

    let c = net();
    let mut opt_c = optimizer(&c);
    let from = load_training_state(&path, &c, &mut opt_c).unwrap();
    assert_eq!(from, 6);
    (from..10).for_each(|i| step(&c, &mut opt_c, i));
    for ((name, p), (_, q)) in a.named_parameters().iter().zip(c.named_parameters()) {
        assert_eq!(p.to_vec::<f32>(), q.to_vec::<f32>(), "{name} differs after resuming");
    }

    // A checkpoint of another shape is refused, naming the tensor, and changes nothing.
    let other = Sequential::new().add(Linear::new(4, 3)).add(Linear::new(3, 2));
    let mut opt_o = optimizer(&other);
    let before = other.parameters()[0].to_vec::<f32>();
    let e = load_training_state(&path, &other, &mut opt_o).unwrap_err().to_string();
    assert!(e.contains("0.weight") && e.contains(&path.display().to_string()), "{e}");
    assert_eq!(other.parameters()[0].to_vec::<f32>(), before);
    // Plain weights (no step) are not a training checkpoint.
    firebrand_nn::save_weights(&a, &path).unwrap();
    let e = load_training_state(&path, &c, &mut opt_c).unwrap_err().to_string();
    assert!(e.contains("step"), "{e}");
    std::fs::remove_file(&path).unwrap();
}
