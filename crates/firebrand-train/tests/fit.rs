//! fit / evaluate / predict, early stopping, history export, and checkpoints
//! that resume exactly.

use firebrand_autograd::{Tensor, manual_seed};
use firebrand_data::{TensorDataset, digits};
use firebrand_nn::{Activation, Dropout, Linear, ModuleExt, Sequential};
use firebrand_optim::{Adam, Sgd};
use firebrand_train::{EarlyStopping, FitError, FitOptions, History, Loss, Model, NonFinite, Validation};

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
    assert!(csv.starts_with("epoch,loss,accuracy,val_loss,val_accuracy,train_seconds,lr,skipped_batches\n"));
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

/// The digits with one NaN pixel in example `row`.
fn digits_with_nan(row: usize) -> TensorDataset {
    let d = digits();
    let mut x = d.x.to_vec::<f32>();
    x[row * 64 + 5] = f32::NAN;
    TensorDataset::new(Tensor::from_vec(x, d.x.shape().clone()), d.y.clone()).unwrap()
}

fn in_order(epochs: usize) -> FitOptions {
    FitOptions { epochs, verbose: false, shuffle: false, ..Default::default() }
}

#[test]
fn a_nan_in_the_data_stops_fit_naming_epoch_batch_and_step() {
    let mut model = classifier(3);
    let err = model.fit(&digits_with_nan(100), &in_order(2)).unwrap_err();
    // Batches of 32 in order: example 100 is in batch 3, before the 4th step.
    match &err {
        FitError::NonFinite { epoch: 0, batch: 3, step: 3, what } => assert_eq!(what, "non-finite loss (NaN)"),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("non-finite loss (NaN) at epoch 0, batch 3, optimizer step 3"), "{err}");
    // The update the NaN would have spoiled was not made.
    assert!(model.net.parameters().iter().all(|p| p.to_vec::<f32>().iter().all(|v| v.is_finite())));
}

#[test]
fn skip_batch_counts_what_it_skipped_and_trains_on() {
    let mut model = classifier(3);
    let opts = FitOptions { non_finite: NonFinite::SkipBatch, ..in_order(2) };
    let h = model.fit(&digits_with_nan(100), &opts).unwrap();
    assert_eq!(h.epochs.iter().map(|e| e.skipped_batches).collect::<Vec<_>>(), [1, 1]);
    assert!(h.epochs.iter().all(|e| e.loss.is_finite()) && h.epochs[1].accuracy.unwrap() > 0.8, "{h:?}");
    // No checks: PyTorch's behaviour, a NaN loss reported and NaN weights.
    let mut model = classifier(3);
    let h = model.fit(&digits_with_nan(100), &FitOptions { non_finite: NonFinite::Ignore, ..in_order(1) }).unwrap();
    assert!(h.epochs[0].loss.is_nan());
}

#[test]
fn an_overflowing_gradient_names_the_parameter() {
    // y = w·x + b at w = b = 0 on x = 3e38: the loss is finite (1.0) but
    // d/dw = 2·(0 - 1)·3e38 overflows to -inf, while d/db = -2 is finite.
    let data = TensorDataset::new(Tensor::full(3e38, [8, 1]), Tensor::ones([8, 1])).unwrap();
    let linear = || {
        let l = Linear::new(1, 1);
        l.weight.copy_(&Tensor::zeros([1, 1])).unwrap();
        l.bias.as_ref().unwrap().copy_(&Tensor::zeros([1])).unwrap();
        Sequential::new().add(l)
    };
    let net = linear();
    let opt = Sgd::new(net.named_parameters(), 0.1);
    let mut model = Model::new(net, opt, Loss::Mse);
    let err = model.fit(&data, &in_order(1)).unwrap_err();
    assert!(
        matches!(&err, FitError::NonFinite { batch: 0, step: 0, what, .. } if what == "non-finite gradient (-inf) in parameter `0.weight`"),
        "{err}"
    );
    let net = linear();
    let opt = Sgd::new(net.named_parameters(), 0.1);
    let mut model = Model::new(net, opt, Loss::Mse);
    let opts = FitOptions { non_finite: NonFinite::SkipBatch, batch_size: 4, ..in_order(1) };
    let h = model.fit(&data, &opts).unwrap();
    assert_eq!(h.epochs[0].skipped_batches, 2);
    assert_eq!(model.net.named_parameters()[0].1.to_vec::<f32>(), [0.0], "no update was made");
    // Under detect_anomaly the op whose backward overflowed is named, with its call site.
    let net = linear();
    let opt = Sgd::new(net.named_parameters(), 0.1);
    let mut model = Model::new(net, opt, Loss::Mse);
    let err = model.fit(&data, &FitOptions { detect_anomaly: true, ..in_order(1) }).unwrap_err().to_string();
    assert!(err.contains("detect_anomaly: the gradient of `linear` is inf for its input 1 of shape [1, 1]"), "{err}");
    assert!(err.contains("forward call site"), "{err}");
}

#[test]
fn bad_targets_are_a_typed_error_naming_the_batch_and_the_value() {
    let d = digits();
    let mut y = d.y.to_vec::<i64>();
    y[70] = 12; // batch 2 of 32, position 6 in it
    let data = TensorDataset::new(d.x.clone(), Tensor::from_vec(y, [y_len(&d)])).unwrap();
    let mut model = classifier(4);
    let err = model.fit(&data, &in_order(1)).unwrap_err();
    assert!(matches!(err, FitError::Loss { epoch: 0, batch: 2, .. }), "{err:?}");
    assert!(
        err.to_string().contains(
            "batch 2 (epoch 0, from 0): cross_entropy: target 12 at sample [6] is out of bounds for 10 classes"
        ),
        "{err}"
    );
    // f32 labels where class indices belong.
    let floats = TensorDataset::new(d.x.clone(), d.y.to_dtype(firebrand_autograd::DType::F32)).unwrap();
    let err = model.fit(&floats, &in_order(1)).unwrap_err().to_string();
    assert!(err.contains("class indices must be i64"), "{err}");
}

fn y_len(d: &TensorDataset) -> usize {
    d.y.dims()[0]
}

#[test]
fn a_wrong_input_width_is_a_typed_error_naming_the_layer() {
    let d = digits(); // 64 features
    let mut model = classifier(5);
    let narrow = TensorDataset::new(d.x.narrow(1, 0, 60), d.y.clone()).unwrap();
    let err = model.fit(&narrow, &in_order(1)).unwrap_err();
    assert!(matches!(err, FitError::Forward { epoch: 0, batch: 0, validation: false, .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "Model::fit: the forward pass of training batch 0 (epoch 0, from 0): \
         Sequential[0] Linear(64 -> 32, relu): expected input (…, 64), got [32, 60]"
    );
    // Validation data of the wrong width: the error says it was validation.
    let opts = FitOptions { validation: Validation::data(narrow.clone()), ..in_order(1) };
    let err = model.fit(&d, &opts).unwrap_err();
    assert!(matches!(err, FitError::Forward { epoch: 0, batch: 0, validation: true, .. }), "{err:?}");
    assert!(err.to_string().contains("forward pass of validation batch 0"), "{err}");
    // The model is unharmed: it trains on right data afterwards.
    assert!(model.fit(&d, &in_order(1)).unwrap().epochs[0].loss.is_finite());
    // evaluate panics with the batch and the layer.
    let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.evaluate(&narrow, 512))).unwrap_err();
    let msg = e.downcast_ref::<String>().unwrap();
    assert!(msg.starts_with("Model::evaluate: the forward pass of batch 0: Sequential[0] Linear(64 -> 32"), "{msg}");
}

#[test]
fn bad_validation_targets_name_the_validation_batch() {
    let d = digits();
    let mut y = d.y.to_vec::<i64>();
    y[3] = -7;
    let bad = TensorDataset::new(d.x.clone(), Tensor::from_vec(y, [y_len(&d)])).unwrap();
    let mut model = classifier(6);
    let opts = FitOptions { validation: Validation::data(bad), ..in_order(1) };
    let err = model.fit(&d, &opts).unwrap_err();
    assert!(matches!(err, FitError::Loss { batch: 0, validation: true, .. }), "{err:?}");
    assert!(err.to_string().contains("the loss of validation batch 0"), "{err}");
}
