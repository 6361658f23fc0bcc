//! `save_training_state` / `load_training_state`: a custom loop stopped,
//! saved and resumed in a fresh process-like setting ends bit-identical to
//! the uninterrupted run; bad files give errors naming the file and tensor.

use firebrand_autograd::{Tensor, manual_seed};
use firebrand_nn::WeightsError;
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
    // Plain weights (no version) are not a training checkpoint.
    firebrand_nn::save_weights(&a, &path).unwrap();
    let e = load_training_state(&path, &c, &mut opt_c).unwrap_err();
    assert!(matches!(e, WeightsError::Version { .. }), "{e:?}");
    assert!(
        e.to_string().contains("an older checkpoint (or plain weights): it has no checkpoint format version"),
        "{e}"
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn corrupted_and_newer_checkpoints_are_refused_saying_which() {
    let a = net();
    let opt = optimizer(&a);
    let path = std::env::temp_dir().join(format!("fb_training_state_bad_{}.safetensors", std::process::id()));
    save_training_state(&path, &a, &opt, 3).unwrap();
    let good = std::fs::read(&path).unwrap();
    // One flipped bit in the last tensor's bytes: the checksum tells.
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 0x10;
    std::fs::write(&path, &bad).unwrap();
    let c = net();
    let mut opt_c = optimizer(&c);
    let before = c.parameters()[0].to_vec::<f32>();
    let e = load_training_state(&path, &c, &mut opt_c).unwrap_err();
    assert!(matches!(e, WeightsError::Checksum { .. }), "{e:?}");
    assert!(e.to_string().contains("corrupted: the checksum of its tensors is"), "{e}");
    assert_eq!(c.parameters()[0].to_vec::<f32>(), before, "nothing changed");
    // A version this build does not know.
    let key = b"\"version\":\"1\"";
    let at = good.windows(key.len()).position(|w| w == key).expect("the version in the header");
    let mut newer = good.clone();
    newer[at + key.len() - 2] = b'7';
    std::fs::write(&path, &newer).unwrap();
    let e = load_training_state(&path, &c, &mut opt_c).unwrap_err().to_string();
    assert!(e.ends_with("checkpoint format version 7; this build reads checkpoint format version 1"), "{e}");
    // Truncated: not safetensors any more.
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    assert!(matches!(load_training_state(&path, &c, &mut opt_c), Err(WeightsError::Format { .. })));
    std::fs::remove_file(&path).unwrap();
}
