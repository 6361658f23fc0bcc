//! The callback machinery and the callbacks built on it: LR schedules (per
//! step, per epoch, reduce on plateau), gradient clipping, the CSV logger,
//! best-model checkpointing and early stopping; `fit` on a user's own
//! `Dataset` and on a `DataLoader`; the errors `fit` returns before it starts.

use firebrand_autograd::{Tensor, manual_seed};
use firebrand_data::{DataLoader, Dataset, TensorDataset, digits};
use firebrand_nn::{Activation, Linear, ModuleExt, Sequential, load_weights};
use firebrand_optim::{Sgd, StepLr};
use firebrand_train::{
    BatchLogs, Callback, CsvLogger, EarlyStopping, EpochRecord, FitError, FitOptions, GradientClipping, Loss,
    LrScheduler, Model, ModelCheckpoint, Monitor, ReduceLrOnPlateau, TrainContext, Validation,
};

fn mlp(seed: u64, lr: f32) -> Model<Sequential> {
    manual_seed(seed);
    let net = Sequential::new().add(Linear::new(64, 32).with_activation(Activation::Relu)).add(Linear::new(32, 10));
    let opt = Sgd::with_options(net.named_parameters(), lr, 0.9, 0.0, false, 0.0);
    Model::new(net, opt, Loss::CROSS_ENTROPY)
}

fn quiet(epochs: usize) -> FitOptions {
    FitOptions { epochs, batch_size: 64, verbose: false, ..Default::default() }
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("firebrand-callbacks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Records every hook call, and the learning rate and gradient norm seen before each step.
#[derive(Default)]
struct Recorder {
    calls: Vec<String>,
    lrs: Vec<f32>,
    norms: Vec<f32>,
}

impl Callback for Recorder {
    fn on_train_begin(&mut self, _: &mut TrainContext) -> Result<(), FitError> {
        self.calls.push("train_begin".into());
        Ok(())
    }
    fn on_epoch_begin(&mut self, ctx: &mut TrainContext) -> Result<(), FitError> {
        self.calls.push(format!("epoch_begin {}", ctx.epoch));
        Ok(())
    }
    fn on_batch_begin(&mut self, batch: usize, _: &mut TrainContext) -> Result<(), FitError> {
        self.calls.push(format!("batch_begin {batch}"));
        Ok(())
    }
    fn on_before_step(&mut self, ctx: &mut TrainContext) -> Result<(), FitError> {
        self.calls.push(format!("before_step {}", ctx.step));
        self.lrs.push(ctx.optimizer.lr());
        let sq: f32 = ctx.net.parameters().iter().map(|p| p.grad().unwrap().square().sum_all().item()).sum();
        self.norms.push(sq.sqrt());
        Ok(())
    }
    fn on_batch_end(&mut self, logs: &BatchLogs, _: &mut TrainContext) -> Result<(), FitError> {
        self.calls.push(format!("batch_end {} {}", logs.batch, logs.size));
        Ok(())
    }
    fn on_epoch_end(&mut self, logs: &EpochRecord, ctx: &mut TrainContext) -> Result<(), FitError> {
        assert_eq!(ctx.history.epochs.last().unwrap(), logs);
        self.calls.push(format!("epoch_end {}", logs.epoch));
        Ok(())
    }
    fn on_train_end(&mut self, _: &mut TrainContext) -> Result<(), FitError> {
        self.calls.push("train_end".into());
        Ok(())
    }
}

#[test]
fn hooks_run_in_order() {
    let data = digits().subset(&(0..10).collect::<Vec<_>>());
    let mut model = mlp(0, 0.01);
    let mut rec = Recorder::default();
    let opts = FitOptions { epochs: 2, batch_size: 4, shuffle: false, accumulate: 2, ..quiet(2) };
    model.fit_with(&data, &opts, &mut [&mut rec]).unwrap();
    // 10 examples in batches of 4, 4, 2; steps after batches 1 and 2 (the last).
    let epoch = |e: usize, s0: usize| {
        vec![
            format!("epoch_begin {e}"),
            "batch_begin 0".into(),
            "batch_end 0 4".into(),
            "batch_begin 1".into(),
            format!("before_step {s0}"),
            "batch_end 1 4".into(),
            "batch_begin 2".into(),
            format!("before_step {}", s0 + 1),
            "batch_end 2 2".into(),
            format!("epoch_end {e}"),
        ]
    };
    let mut want = vec!["train_begin".to_string()];
    want.extend(epoch(0, 0));
    want.extend(epoch(1, 2));
    want.push("train_end".into());
    assert_eq!(rec.calls, want);
}

/// 64 points of y = 2x + 1 on [0, 1), computed on demand: a user's own data set.
#[derive(Clone)]
struct Line;

impl Dataset for Line {
    fn len(&self) -> usize {
        64
    }
    fn get(&self, i: usize) -> (Tensor, Tensor) {
        let x = i as f32 / 64.0;
        (Tensor::from_vec(vec![x], [1]), Tensor::from_vec(vec![2.0 * x + 1.0], [1]))
    }
}

#[test]
fn fits_a_users_own_dataset_with_a_schedule_and_clipping_through_callbacks() {
    manual_seed(0);
    let net = Linear::new(1, 1);
    let opt = Sgd::with_options(net.named_parameters(), 0.5, 0.9, 0.0, false, 0.0);
    let mut model = Model::new(net, opt, Loss::Mse);
    let schedule = StepLr { base: 0.5, step_size: 40, gamma: 0.5 };
    let mut sched = LrScheduler::per_step(schedule);
    let mut clip = GradientClipping::norm(0.5);
    let mut rec = Recorder::default();
    let opts = FitOptions { epochs: 60, batch_size: 16, verbose: false, ..Default::default() };
    // The recorder runs after the scheduler and the clipper, so it sees their work.
    let h = model.fit_with(&Line, &opts, &mut [&mut sched, &mut clip, &mut rec]).unwrap();
    assert_eq!(rec.lrs.len(), 240);
    for (t, lr) in rec.lrs.iter().enumerate() {
        assert_eq!(*lr, schedule.base * 0.5f32.powi((t / 40) as i32), "step {t}");
    }
    assert!(
        rec.norms.iter().all(|&n| n <= 0.5 + 1e-4),
        "clipped norms: max {:?}",
        rec.norms.iter().cloned().fold(0.0, f32::max)
    );
    assert!(clip.last_norm().is_some());
    assert!(rec.norms[0] > 0.49, "the first gradients are large, so clipping is active");
    assert!(h.epochs.last().unwrap().loss < 1e-4, "final mse {}", h.epochs.last().unwrap().loss);
    assert!(
        (model.net.weight.item() - 2.0).abs() < 0.01 && (model.net.bias.as_ref().unwrap().item() - 1.0).abs() < 0.01
    );
}

#[test]
fn clipping_as_an_option_matches_the_callback() {
    let data = digits().subset(&(0..256).collect::<Vec<_>>());
    let run = |by_option: bool| {
        let mut model = mlp(4, 0.5);
        if by_option {
            model.fit(&data, &FitOptions { clip_grad_norm: Some(0.1), ..quiet(2) }).unwrap();
        } else {
            let mut clip = GradientClipping::norm(0.1);
            model.fit_with(&data, &quiet(2), &mut [&mut clip]).unwrap();
        }
        model.net.parameters().iter().flat_map(|p| p.to_vec::<f32>()).collect::<Vec<f32>>()
    };
    let unclipped = {
        let mut model = mlp(4, 0.5);
        model.fit(&data, &quiet(2)).unwrap();
        model.net.parameters().iter().flat_map(|p| p.to_vec::<f32>()).collect::<Vec<f32>>()
    };
    assert_eq!(run(true), run(false));
    assert_ne!(run(true), unclipped);
}

#[test]
fn fits_from_a_dataloader() {
    let (train, test) = digits().split(0.2, 0);
    let mut model = mlp(1, 0.05);
    let loader = DataLoader::new(train.clone(), 32).shuffle(5);
    let h = model.fit(loader.clone(), &FitOptions { validation: Validation::data(test.clone()), ..quiet(5) }).unwrap();
    assert!(h.epochs[4].val_accuracy.unwrap() > 0.85, "{:?}", h.epochs[4]);
    assert!(model.evaluate(DataLoader::new(test.clone(), 100), 0).metrics.unwrap().accuracy > 0.85);
    let e = model.fit(loader, &FitOptions { validation: Validation::Split(0.1), ..quiet(1) }).unwrap_err();
    assert!(e.to_string().contains("random_split"), "{e}");
}

#[test]
fn fit_refuses_bad_data_and_options_before_it_starts() {
    let empty = TensorDataset::new(Tensor::zeros([0, 64]), Tensor::from_vec(Vec::<i64>::new(), [0])).unwrap();
    let mut model = mlp(0, 0.1);
    assert!(matches!(model.fit(&empty, &quiet(1)), Err(FitError::EmptyDataset)));
    let data = digits();
    let e = model.fit(&data, &FitOptions { batch_size: 0, ..quiet(1) }).unwrap_err();
    assert!(e.to_string().contains("batch_size"), "{e}");
    for f in [0.0, 1.0, -0.5, 1.5, f32::NAN] {
        let e = model.fit(&data, &FitOptions { validation: Validation::Split(f), ..quiet(1) }).unwrap_err();
        assert!(matches!(e, FitError::InvalidOption { option: "validation", .. }), "{f}: {e}");
    }
    let mut inference = Model::for_inference(Linear::new(64, 10), Loss::CROSS_ENTROPY);
    assert!(matches!(inference.fit(&data, &quiet(1)), Err(FitError::NoOptimizer)));
    // ... but it evaluates and predicts.
    assert_eq!(inference.predict(&data.x, 500).dims(), &[1797, 10]);
}

#[test]
fn per_epoch_schedule_and_reduce_on_plateau() {
    let data = digits().subset(&(0..128).collect::<Vec<_>>());
    let mut model = mlp(0, 0.1);
    let mut sched = LrScheduler::per_epoch(StepLr { base: 0.1, step_size: 2, gamma: 0.1 });
    let h = model.fit_with(&data, &quiet(5), &mut [&mut sched]).unwrap();
    let lrs: Vec<f32> = h.epochs.iter().map(|e| e.lr).collect();
    assert_eq!(lrs, [0.1, 0.1, 0.1 * 0.1, 0.1 * 0.1, 0.1 * 0.1 * 0.1]);

    // A rate far too high: the loss stops improving, and the rate is halved each time.
    let mut model = mlp(0, 20.0);
    let mut plateau = ReduceLrOnPlateau::new(1).monitor(Monitor::Loss).factor(0.5).min_lr(1.0);
    let h = model.fit_with(&data, &quiet(12), &mut [&mut plateau]).unwrap();
    let lrs: Vec<f32> = h.epochs.iter().map(|e| e.lr).collect();
    assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "{lrs:?}");
    assert!(lrs[11] < 20.0 && lrs.iter().all(|&l| l >= 1.0), "{lrs:?}");
    // Every drop follows an epoch that did not improve on the best so far.
    let mut best = f32::INFINITY;
    for (i, e) in h.epochs.iter().enumerate() {
        if i + 1 < lrs.len() && lrs[i + 1] < lrs[i] {
            assert!(e.loss >= best, "epoch {i} improved ({} < {best}) yet the rate dropped", e.loss);
        }
        best = best.min(e.loss);
    }
}

#[test]
fn csv_logger_and_best_checkpoint() {
    let (train, val) = digits().split(0.3, 1);
    let mut model = mlp(2, 0.05);
    let (csv, best) = (temp("log.csv"), temp("best.safetensors"));
    let mut logger = CsvLogger::new(&csv);
    let mut checkpoint = ModelCheckpoint::new(&best).monitor(Monitor::ValAccuracy);
    let opts = FitOptions { validation: Validation::data(val.clone()), ..quiet(6) };
    let h = model.fit_with(&train, &opts, &mut [&mut logger, &mut checkpoint]).unwrap();
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), h.to_csv());
    // The file holds the weights of the epoch with the best validation accuracy.
    let best_epoch = checkpoint.best_epoch().unwrap();
    let best_acc = h.epochs.iter().map(|e| e.val_accuracy.unwrap()).fold(0.0, f32::max);
    assert_eq!(h.epochs[best_epoch].val_accuracy.unwrap(), best_acc);
    let restored = mlp(9, 0.05);
    load_weights(&restored.net, &best, true).unwrap();
    let mut restored = Model::for_inference(restored.net, Loss::CROSS_ENTROPY);
    let acc = restored.evaluate(&val, 100).metrics.unwrap().accuracy;
    assert!((acc - best_acc).abs() < 1e-6, "restored {acc}, best {best_acc}");
    // A monitor with nothing to watch is an error naming the callback.
    let mut checkpoint = ModelCheckpoint::new(&best).monitor(Monitor::ValAccuracy);
    let e = model.fit_with(&train, &quiet(1), &mut [&mut checkpoint]).unwrap_err();
    assert!(e.to_string().contains("ModelCheckpoint") && e.to_string().contains("val_accuracy"), "{e}");
}

#[test]
fn early_stopping_is_a_callback_too() {
    let (train, val) = digits().split(0.3, 1);
    let mut model = mlp(1, 2.0);
    let mut es = EarlyStopping::new(1).restore_best(true);
    let opts = FitOptions { validation: Validation::data(val.clone()), ..quiet(30) };
    let h = model.fit_with(&train, &opts, &mut [&mut es]).unwrap();
    assert_eq!(es.stopped_at(), Some(h.epochs.len() - 1));
    let best = h.epochs.iter().map(|e| e.val_loss.unwrap()).fold(f32::INFINITY, f32::min);
    let now = model.evaluate(&val, 100).loss;
    assert!((now - best).abs() < 1e-4, "restored weights give the best val loss {best}, got {now}");
}
