//! `Model::fit` under mpirun: the same training as one process at twice the
//! batch; rank 0's checkpoint resumes bit-exactly at world size 2 and
//! continues at world size 1.

mod common;
use common::*;
use firebrand_autograd::manual_seed;
use firebrand_data::digits;
use firebrand_nn::{Linear, ModuleExt, ReLU, Sequential};
use firebrand_optim::Sgd;
use firebrand_train::{Distributed, FitOptions, History, Loss, Model, Validation};
use std::path::Path;

fn model(seed: u64) -> Model<Sequential> {
    manual_seed(seed);
    let net = Sequential::new().add(Linear::new(64, 32)).add(ReLU).add(Linear::new(32, 10));
    let opt = Sgd::with_options(net.named_parameters(), 0.05, 0.9, 0.0, false, 0.0);
    Model::new(net, opt, Loss::CROSS_ENTROPY)
}

fn fit(model: &mut Model<Sequential>, batch: usize, epochs: usize, ckpt: &Path, resume: bool) -> History {
    let opts = FitOptions {
        epochs,
        batch_size: batch,
        seed: 4,
        validation: Validation::Split(0.2),
        verbose: false,
        checkpoint: Some(ckpt.to_path_buf()),
        resume,
        ..Default::default()
    };
    model.fit(&digits(), &opts).unwrap()
}

#[test]
#[ignore = "a worker: run by the mpirun tests"]
fn worker_fit() {
    if !is_worker() {
        return;
    }
    let out = out_dir();
    let epochs: usize = std::env::var("FB_EPOCHS").unwrap().parse().unwrap();
    let resume = std::env::var_os("FB_RESUME").is_some();
    let rank: usize = std::env::var("OMPI_COMM_WORLD_RANK").unwrap().parse().unwrap();
    let mut m = model(10 + rank as u64); // rank 0's weights must win
    let h = fit(&mut m, 16, epochs, &out.join("ckpt.safetensors"), resume);
    write_f32(&out.join(format!("rank{rank}")), &flat_params(&m.net));
    std::fs::write(out.join(format!("history{rank}.json")), h.to_json()).unwrap();
}

fn launch(out: &Path, epochs: usize, resume: bool) {
    let e = epochs.to_string();
    let mut env = vec![("FB_EPOCHS", e.as_str())];
    if resume {
        env.push(("FB_RESUME", "1"));
    }
    let run = mpirun("worker_fit", 2, "self,vader", out, &[], &env);
    assert!(run.output.status.success(), "mpirun failed:\n{}", run.text);
}

fn results(out: &Path) -> (Vec<f32>, History) {
    let (p0, p1) = (read_f32(&out.join("rank0")), read_f32(&out.join("rank1")));
    assert_eq!(p0, p1, "the ranks' parameters differ");
    let h0 = std::fs::read_to_string(out.join("history0.json")).unwrap();
    let h1 = std::fs::read_to_string(out.join("history1.json")).unwrap();
    let (h0, h1) = (History::from_json(&h0).unwrap(), History::from_json(&h1).unwrap());
    for (a, b) in h0.epochs.iter().zip(&h1.epochs) {
        assert_eq!((a.loss, a.accuracy, a.val_loss, a.val_accuracy), (b.loss, b.accuracy, b.val_loss, b.val_accuracy));
    }
    (p0, h0)
}

#[test]
fn fit_on_two_ranks_matches_one_process_and_resumes_at_any_world_size() {
    let _one = exclusive();
    if !have_mpirun() {
        return;
    }
    // Uninterrupted: 2 epochs on 2 ranks at batch 16.
    let whole = fresh_dir("fit_whole");
    launch(&whole, 2, false);
    let (p2, h2) = results(&whole);

    // One process at batch 32, same seed and weights.
    let single = fresh_dir("fit_single");
    let mut m = model(10);
    let h1 = fit(&mut m, 32, 2, &single.join("ckpt.safetensors"), false);
    let d = max_diff(&p2, &flat_params(&m.net));
    assert!(d < 1e-5, "fit on 2 ranks × 16 vs 1 × 32: max |Δ| {d:e}");
    for (a, b) in h2.epochs.iter().zip(&h1.epochs) {
        assert!(
            (a.loss - b.loss).abs() < 1e-5 && (a.val_loss.unwrap() - b.val_loss.unwrap()).abs() < 1e-5,
            "{a:?} vs {b:?}"
        );
        assert!((a.accuracy.unwrap() - b.accuracy.unwrap()).abs() < 1e-6, "{a:?} vs {b:?}");
        assert!((a.val_accuracy.unwrap() - b.val_accuracy.unwrap()).abs() < 1e-6, "{a:?} vs {b:?}");
    }
    eprintln!(
        "fit: 2 ranks vs 1 process at twice the batch: max |Δ| {d:e}; epoch-2 loss {} vs {}",
        h2.epochs[1].loss, h1.epochs[1].loss
    );

    // Interrupted after epoch 1 (only rank 0 wrote the checkpoint), resumed at world size 2.
    let parts = fresh_dir("fit_parts");
    launch(&parts, 1, false);
    let ckpt = parts.join("ckpt.safetensors");
    let at_one = single.join("after_epoch_1.safetensors");
    std::fs::copy(&ckpt, &at_one).unwrap();
    launch(&parts, 2, true);
    let (p_resumed, h_resumed) = results(&parts);
    assert_eq!(p_resumed, p2, "resumed at world size 2 is not bit-exact");
    assert_eq!(h_resumed.epochs.len(), 2);
    assert_eq!(h_resumed.epochs[1].loss, h2.epochs[1].loss);

    // The same checkpoint resumed by one process at batch 32.
    let mut m = model(77);
    let h = fit(&mut m, 32, 2, &at_one, true);
    let d = max_diff(&flat_params(&m.net), &p2);
    assert!(d < 1e-5, "resumed at world size 1: max |Δ| {d:e}");
    assert_eq!(h.epochs[0].loss, h2.epochs[0].loss, "the resumed history starts with the checkpoint's");
}

#[test]
fn fit_with_distributed_off_trains_alone() {
    // Distributed::Off always trains alone; Auto outside a launcher too.
    let dir = fresh_dir("fit_off");
    let mut m = model(1);
    let opts = FitOptions { epochs: 1, verbose: false, distributed: Distributed::Off, ..Default::default() };
    assert!(m.fit(&digits(), &opts).is_ok());
    let _ = dir;
}
