//! fit / evaluate / predict, early stopping, history export, and checkpoints
//! that resume exactly.

use firebrand_autograd::{Tensor, manual_seed};
use firebrand_data::{TensorDataset, digits};
use firebrand_nn::{Activation, Dropout, Linear, ModuleExt, Sequential};
use firebrand_optim::{Adam, Sgd};
use firebrand_train::{EarlyStopping, FitOptions, History, Loss, Model, Validation};

fn classifier(seed: u64) -> Model<Sequential> {
    manual_seed(seed);
    let net = Sequential::new()
        .add(Linear::new(64, 32).with_activation(Activation::Relu))
        .add(Dropout::new(0.2))
        .add(Linear::new(32, 10));
    let opt = Adam::new(net.named_parameters(), 5e-3);
    Model::new(net, opt, Loss::CrossEntropy { label_smoothing: 0.05 })
}

fn quiet(epochs: usize) -> FitOptions {
    FitOptions { epochs, verbose: false, validation: Validation::Split(0.1), ..Default::default() }
}

#[test]
fn trains_evaluates_and_predicts() {
    let (train, test) = digits().split(0.2, 1);
    let mut model = classifier(0);
    let h = model.fit(&train, &quiet(4)).unwrap();
    assert_eq!(h.epochs.len(), 4);
    assert!(h.epochs[3].loss < h.epochs[0].loss, "training loss falls");
    assert!(h.epochs.iter().all(|e| e.val_loss.is_some() && e.val_accuracy.is_some() && e.train_seconds > 0.0));
    let e = model.evaluate(&test, 100);
    let m = e.metrics.unwrap();
    assert!(m.accuracy > 0.85, "test accuracy {}", m.accuracy);
    assert_eq!(m.confusion.iter().flatten().sum::<usize>(), test.x.dims()[0]);
    let p = model.predict(&test.x, 50);
    assert_eq!(p.dims(), &[test.x.dims()[0], 10]);
    // predict equals the network's eval-mode forward
    let csv = h.to_csv();
    assert!(csv.starts_with("epoch,loss,accuracy,val_loss,val_accuracy,train_seconds,lr\n"));
    assert_eq!(csv.lines().count(), 5);
    assert_eq!(History::from_json(&h.to_json()).unwrap(), h);
    let path = std::env::temp_dir().join(format!("firebrand-history-{}.json", std::process::id()));
    h.write(&path).unwrap();
    assert_eq!(History::from_json(&std::fs::read_to_string(&path).unwrap()).unwrap(), h);
}

#[test]
fn regression_with_mse() {
    manual_seed(2);
    let x = Tensor::rand([256, 3], -1.0, 1.0);
    let w = Tensor::from_vec(vec![1.5f32, -2.0, 0.5], [3, 1]);
    let y = x.matmul(&w) + 0.25;
    let data = TensorDataset::new(x, y).unwrap();
    let net = Sequential::new().add(Linear::new(3, 1));
    let opt = Sgd::with_options(net.named_parameters(), 0.1, 0.9, 0.0, false, 0.0);
    let mut model = Model::new(net, opt, Loss::Mse);
    let h = model.fit(&data, &FitOptions { epochs: 30, verbose: false, ..Default::default() }).unwrap();
    assert!(h.epochs.last().unwrap().loss < 1e-4, "final mse {}", h.epochs.last().unwrap().loss);
    assert!(h.epochs[0].accuracy.is_none());
}

#[test]
fn early_stopping_restores_the_best_weights() {
    let (train, _) = digits().split(0.2, 1);
    let mut model = classifier(1);
    // A learning rate far too high makes validation loss worse quickly.
    model.optimizer_mut().unwrap().set_lr(0.5);
    let es = EarlyStopping::new(1).restore_best(true);
    let opts = FitOptions { early_stopping: Some(es), ..quiet(30) };
    let h = model.fit(&train, &opts).unwrap();
    assert!(h.epochs.len() < 30, "stopped early after {} epochs", h.epochs.len());
    let best = h.epochs.iter().map(|e| e.val_loss.unwrap()).fold(f32::INFINITY, f32::min);
    let (_, val) = train.split(0.1, 0);
    let now = model.evaluate(&val, 100).loss;
    assert!((now - best).abs() < 1e-4, "restored weights give the best val loss {best}, got {now}");
}

#[test]
fn checkpoints_resume_exactly() {
    let dir = std::env::temp_dir().join(format!("firebrand-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("run.safetensors");
    let (train, _) = digits().split(0.3, 2);

    let mut straight = classifier(7);
    let full = straight.fit(&train, &quiet(4)).unwrap();

    let mut first = classifier(7);
    let opts = FitOptions { checkpoint: Some(ckpt.clone()), ..quiet(2) };
    first.fit(&train, &opts).unwrap();
    // A fresh process would build the model with other random weights.
    let mut resumed = classifier(99);
    let opts = FitOptions { checkpoint: Some(ckpt.clone()), resume: true, ..quiet(4) };
    let h = resumed.fit(&train, &opts).unwrap();

    assert_eq!(h.epochs.len(), 4);
    for (a, b) in h.epochs.iter().zip(&full.epochs) {
        assert_eq!((a.loss, a.val_loss), (b.loss, b.val_loss), "epoch {}", a.epoch);
    }
    for (a, b) in resumed.net.parameters().iter().zip(straight.net.parameters()) {
        assert_eq!(a.to_vec::<f32>(), b.to_vec::<f32>());
    }
    // A checkpoint for another architecture is refused with the tensor's name.
    let mut other = Model::new(Sequential::new().add(Linear::new(64, 10)), Sgd::new(vec![], 0.1), Loss::CROSS_ENTROPY);
    let e = other.load_checkpoint(&ckpt).unwrap_err();
    assert!(e.to_string().contains("0.weight"), "{e}");
}

#[test]
fn gradient_accumulation_equals_one_larger_batch() {
    let x = Tensor::randn([8, 64], 0.0, 1.0);
    let y = Tensor::from_vec((0..8).map(|i| i % 10).collect::<Vec<i64>>(), [8]);
    let data = TensorDataset::new(x, y).unwrap();
    let run = |batch: usize, accumulate: usize| {
        manual_seed(3);
        let net = Sequential::new().add(Linear::new(64, 10));
        let opt = Sgd::new(net.named_parameters(), 0.5);
        let mut model = Model::new(net, opt, Loss::CROSS_ENTROPY);
        let opts = FitOptions {
            epochs: 1,
            batch_size: batch,
            accumulate,
            shuffle: false,
            verbose: false,
            ..Default::default()
        };
        model.fit(&data, &opts).unwrap();
        model.net.parameters().iter().flat_map(|p| p.to_vec::<f32>()).collect::<Vec<f32>>()
    };
    let (one_big, two_halves, four_quarters) = (run(8, 1), run(4, 2), run(2, 4));
    for (a, b) in one_big.iter().zip(&two_halves).chain(one_big.iter().zip(&four_quarters)) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    assert_ne!(one_big, run(4, 1), "without accumulation, two steps differ from one");
}
