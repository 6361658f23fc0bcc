//! Modules, Sequential, summary(), initializers, and safetensors weights
//! (round trip, corrupt and truncated files, name/shape mismatches).

use firebrand_autograd::{Tensor, manual_seed};
use firebrand_nn::serialize::{load_tensors, save_tensors};
use firebrand_nn::{
    Activation, Dropout, Flatten, Init, Linear, Module, ModuleExt, ReLU, Sequential, WeightsError, load_weights,
    save_weights,
};
use std::path::PathBuf;

fn mlp() -> Sequential {
    Sequential::new().add(Linear::new(784, 128)).add(ReLU).add(Dropout::new(0.2)).add(Linear::new(128, 10))
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("firebrand-nn-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn names_counts_and_modes() {
    let mut model = mlp();
    let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["0.weight", "0.bias", "3.weight", "3.bias"]);
    assert_eq!(model.num_parameters(), 784 * 128 + 128 + 128 * 10 + 10);
    // Dropout is active in training and the identity in eval mode.
    let x = Tensor::ones([64, 784]);
    manual_seed(1);
    let h = Sequential::new().add(Dropout::new(0.5)).forward(&x);
    let zeros = h.to_vec::<f32>().iter().filter(|&&v| v == 0.0).count() as f32 / h.elem_count() as f32;
    assert!((zeros - 0.5).abs() < 0.02, "dropped fraction {zeros}");
    assert!(h.to_vec::<f32>().iter().all(|&v| v == 0.0 || v == 2.0), "kept values are scaled by 1/(1-p)");
    model.eval();
    let a = model.forward(&x);
    let b = model.forward(&x);
    assert_eq!(a.to_vec::<f32>(), b.to_vec::<f32>(), "eval mode is deterministic");
    model.train();
    assert_ne!(model.forward(&x).to_vec::<f32>(), model.forward(&x).to_vec::<f32>());
    assert_eq!(Flatten.forward(&Tensor::zeros([2, 3, 4])).dims(), &[2, 12]);
}

#[test]
fn summary_is_a_keras_style_table() {
    let s = mlp().summary(&[784]);
    assert!(s.contains("0: Linear(784 -> 128)"), "{s}");
    assert!(s.contains("(None, 128)") && s.contains("(None, 10)"), "{s}");
    assert!(s.contains("100,480") && s.contains("1,290"), "{s}");
    assert!(s.contains("Total params: 101,770"), "{s}");
    assert!(s.contains("Trainable params: 101,770"), "{s}");
    let dense = Sequential::new().add(Linear::new(3, 2).with_activation(Activation::Relu));
    assert!(dense.summary(&[3]).contains("Linear(3 -> 2, relu)"));
}

#[test]
fn initializers_have_the_right_spread() {
    manual_seed(3);
    let w = Init::KaimingUniform.tensor([256, 400], 400, 256).to_vec::<f32>();
    let bound = (6.0f32 / 400.0).sqrt();
    assert!(w.iter().all(|v| v.abs() <= bound));
    let var = w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
    assert!((var - 2.0 / 400.0).abs() < 2e-4, "Kaiming variance {var}");
    let x = Init::XavierNormal.tensor([300, 300], 300, 300).to_vec::<f32>();
    let var = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    assert!((var - 2.0 / 600.0).abs() < 2e-4, "Xavier variance {var}");
    manual_seed(3);
    assert_eq!(Init::KaimingUniform.tensor([256, 400], 400, 256).to_vec::<f32>(), w, "a seed reproduces");
}

#[test]
fn weights_round_trip_and_overwrite_in_place() {
    manual_seed(0);
    let a = mlp();
    let path = tmp("mlp.safetensors");
    save_weights(&a, &path).unwrap();
    manual_seed(1);
    let b = mlp();
    assert_ne!(a.parameters()[0].to_vec::<f32>(), b.parameters()[0].to_vec::<f32>());
    let before = b.parameters()[0].clone();
    load_weights(&b, &path, true).unwrap();
    for (pa, pb) in a.parameters().iter().zip(b.parameters()) {
        assert_eq!(pa.to_vec::<f32>(), pb.to_vec::<f32>());
    }
    assert_eq!(before.to_vec::<f32>(), a.parameters()[0].to_vec::<f32>(), "loaded into the same tensors");
    // No temporary files left beside it.
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty());
    // i64 tensors round-trip too.
    let p = tmp("mixed.safetensors");
    save_tensors(&p, &[("step".into(), Tensor::from_vec(vec![7i64], [1]))]).unwrap();
    assert_eq!(load_tensors(&p).unwrap()["step"].to_vec::<i64>(), vec![7]);
}

#[test]
fn bad_files_are_clear_errors() {
    let model = mlp();
    let path = tmp("good.safetensors");
    save_weights(&model, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();

    let truncated = tmp("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_weights(&model, &truncated, true).unwrap_err();
    assert!(matches!(e, WeightsError::Format { .. }), "{e}");
    assert!(e.to_string().contains("truncated.safetensors"), "{e}");

    let corrupt = tmp("corrupt.safetensors");
    let mut c = bytes.clone();
    c[8..16].copy_from_slice(b"not json");
    std::fs::write(&corrupt, &c).unwrap();
    assert!(matches!(load_weights(&model, &corrupt, true), Err(WeightsError::Format { .. })));

    let missing = tmp("does-not-exist.safetensors");
    assert!(matches!(load_weights(&model, &missing, true), Err(WeightsError::Io { .. })));

    // Shape mismatch names the tensor and both shapes; nothing is copied.
    let other = Sequential::new().add(Linear::new(784, 64)).add(ReLU).add(Dropout::new(0.2)).add(Linear::new(64, 10));
    let before = other.parameters()[0].to_vec::<f32>();
    let e = load_weights(&other, &path, true).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}: tensor \"0.weight\" has shape [128, 784], the model expects [64, 784]", path.display())
    );
    assert_eq!(other.parameters()[0].to_vec::<f32>(), before);

    // A model with a new head: strict fails, non-strict reports.
    let bigger = Sequential::new()
        .add(Linear::new(784, 128))
        .add(ReLU)
        .add(Dropout::new(0.2))
        .add(Linear::new(128, 10))
        .add(Linear::new(10, 2));
    assert!(matches!(load_weights(&bigger, &path, true), Err(WeightsError::Missing { .. })));
    let report = load_weights(&bigger, &path, false).unwrap();
    assert_eq!(report.missing, vec!["4.weight", "4.bias"]);
    let smaller = Sequential::new().add(Linear::new(784, 128));
    assert!(matches!(load_weights(&smaller, &path, true), Err(WeightsError::Unexpected { .. })));
    assert_eq!(load_weights(&smaller, &path, false).unwrap().unexpected, vec!["3.bias", "3.weight"]);
}
