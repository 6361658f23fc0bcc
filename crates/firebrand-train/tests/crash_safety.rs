//! Nothing is lost: a training process killed with SIGKILL at random moments
//! while it writes checkpoints always leaves a complete newest checkpoint,
//! and resuming from it is bit-exact; a full disk (simulated with
//! `RLIMIT_FSIZE`) gives a typed error and leaves the previous checkpoint
//! intact. The child processes are this test binary, re-run on the ignored
//! `child_process` entry with `FB_CRASH_CHILD` saying what to do.

use firebrand_autograd::manual_seed;
use firebrand_data::{TensorDataset, digits};
use firebrand_nn::{Activation, Linear, ModuleExt, Sequential, WeightsError};
use firebrand_optim::Adam;
use firebrand_train::{FitOptions, Loss, Model, save_training_state};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn model(hidden: usize) -> Model<Sequential> {
    manual_seed(11);
    let net =
        Sequential::new().add(Linear::new(64, hidden).with_activation(Activation::Relu)).add(Linear::new(hidden, 10));
    let opt = Adam::new(net.named_parameters(), 1e-3);
    Model::new(net, opt, Loss::CROSS_ENTROPY)
}

fn data() -> TensorDataset {
    digits().subset(&(0..64).collect::<Vec<_>>())
}

fn options(epochs: usize, checkpoint: Option<&Path>) -> FitOptions {
    FitOptions {
        epochs,
        batch_size: 64,
        verbose: false,
        checkpoint: checkpoint.map(Path::to_path_buf),
        resume: checkpoint.is_some(),
        ..Default::default()
    }
}

// About 2 MB of weights and Adam moments per checkpoint, against one batch of
// training per epoch: most of the child's time goes to writing checkpoints.
const HIDDEN: usize = 2048;

/// The child's side; does nothing unless `FB_CRASH_CHILD` is set.
#[test]
#[ignore = "run by the crash tests as a child process"]
fn child_process() {
    let Ok(task) = std::env::var("FB_CRASH_CHILD") else { return };
    if let Some(path) = task.strip_prefix("train:") {
        // Trains "forever", resuming from and writing a checkpoint every epoch.
        let mut m = model(HIDDEN);
        m.fit(&data(), &options(1_000_000, Some(Path::new(path)))).unwrap();
    } else if let Some(path) = task.strip_prefix("save-big:") {
        let m = model(4096); // about 3.4 MB: over the file-size limit
        match save_training_state(path, &m.net, m.optimizer.as_deref().unwrap(), 1) {
            Err(e @ WeightsError::Io { .. }) => {
                println!("SAVE FAILED: {e}");
                std::process::exit(3)
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }
}

fn child(task: String) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--ignored", "--exact", "child_process", "--nocapture"]).env("FB_CRASH_CHILD", task);
    c
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("firebrand-crash-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn weights(m: &Model<Sequential>) -> Vec<Vec<u32>> {
    m.net.parameters().iter().map(|p| p.to_vec::<f32>().iter().map(|v| v.to_bits()).collect()).collect()
}

#[test]
fn sigkill_during_checkpoints_leaves_a_complete_one_that_resumes_bit_exactly() {
    let d = dir("kill");
    let ckpt = d.join("run.safetensors");
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut epochs_seen = Vec::new();
    for round in 0..20 {
        let mut c =
            child(format!("train:{}", ckpt.display())).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // The first round waits long enough for a first checkpoint.
        let ms = if round == 0 { 1500 } else { 30 + rng % 300 };
        std::thread::sleep(Duration::from_millis(ms));
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        // The newest checkpoint on disk is complete: it loads.
        let mut m = model(HIDDEN);
        let history = m.load_checkpoint(&ckpt).unwrap_or_else(|e| panic!("round {round}: {e}"));
        epochs_seen.push(history.epochs.len());
    }
    assert!(epochs_seen.windows(2).all(|w| w[1] >= w[0]), "resumed runs never went back: {epochs_seen:?}");
    let k = *epochs_seen.last().unwrap();
    assert!(k > 0, "{epochs_seen:?}");
    let temps = |d: &std::path::Path| {
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".tmp-"))
            .count()
    };
    let stale = temps(&d);
    // Resuming from the last checkpoint for one more epoch equals an
    // uninterrupted run of k + 1 epochs, bit for bit.
    let mut resumed = model(HIDDEN);
    resumed.fit(&data(), &options(k + 1, Some(&ckpt))).unwrap();
    let mut straight = model(HIDDEN);
    straight.fit(&data(), &options(k + 1, None)).unwrap();
    assert_eq!(weights(&resumed), weights(&straight), "after {k} + 1 epochs ({epochs_seen:?})");
    // The next successful write removed the temp files the killed writers left.
    assert_eq!(temps(&d), 0, "stale temp files remain ({stale} before the resumed run)");
    println!(
        "checkpoint epochs after each kill: {epochs_seen:?}; {stale} temp files of killed writers left before the resumed run"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_full_disk_is_a_typed_error_and_the_previous_checkpoint_stays() {
    let d = dir("fsize");
    let ckpt = d.join("run.safetensors");
    let small = model(32);
    save_training_state(&ckpt, &small.net, small.optimizer.as_deref().unwrap(), 5).unwrap();
    let before = std::fs::read(&ckpt).unwrap();
    // `ulimit -f` caps files at 2000 blocks (1 MB or less); SIGXFSZ is ignored,
    // so the write fails with EFBIG instead of killing the process.
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 2000 && trap '' XFSZ && exec \"$0\" --ignored --exact child_process --nocapture")
        .arg(&exe)
        .env("FB_CRASH_CHILD", format!("save-big:{}", ckpt.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("SAVE FAILED") && stdout.contains("run.safetensors") && stdout.contains("File too large"),
        "{stdout}"
    );
    assert_eq!(std::fs::read(&ckpt).unwrap(), before, "the previous checkpoint is untouched");
    let m = model(32);
    let mut opt = Adam::new(m.net.named_parameters(), 1e-3);
    assert_eq!(firebrand_train::load_training_state(&ckpt, &m.net, &mut opt).unwrap(), 5);
    let left: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "the failed write's temporary file is removed: {left:?}");
    std::fs::remove_dir_all(&d).unwrap();
}
