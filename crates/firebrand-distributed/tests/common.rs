//! Launching this test binary's own worker tests under `mpirun`.
//!
//! A parent test runs `mpirun -np N <this test binary> --exact <worker>
//! --include-ignored` with `FIREBRAND_MPI_WORKER=1`; the worker (an ignored
//! test that does nothing outside `mpirun`) writes its results under
//! `FIREBRAND_MPI_OUT`, and the parent checks them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Whether this process is a worker started by [`mpirun`].
pub fn is_worker() -> bool {
    std::env::var_os("FIREBRAND_MPI_WORKER").is_some()
}

/// This worker's process group, or `None` outside `mpirun` (the worker then does nothing).
pub fn worker_group() -> Option<firebrand_distributed::ProcessGroup> {
    is_worker().then(|| firebrand_distributed::ProcessGroup::world().unwrap())
}

/// The worker's output folder.
pub fn out_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("FIREBRAND_MPI_OUT").expect("set by the parent"))
}

/// Held for a whole parent test: the tests of a binary run in parallel, and
/// a job sharing two cores with another test's job or reference training
/// would only measure that load (the overlap test's order depends on the
/// ranks keeping pace).
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// `mpirun` is there; when not, a CI run fails and a local one is told why it skips.
pub fn have_mpirun() -> bool {
    let ok = Command::new("mpirun").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        let msg = "mpirun not found: install Open MPI (apt-get install libopenmpi-dev openmpi-bin) to run the multi-process tests";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
    }
    ok
}

/// A fresh folder for one launch.
pub fn fresh_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fb_mpi_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The result of one launch.
pub struct Run {
    pub output: Output,
    pub elapsed: Duration,
    pub text: String,
}

/// Runs worker test `worker` on `np` ranks (`btl`: Open MPI's transports,
/// e.g. `self,vader` for shared memory or `self,tcp`), with `env`.
pub fn mpirun(worker: &str, np: usize, btl: &str, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "-np", &np.to_string(), "--mca", "btl", btl]);
    // Loopback only: no interface discovery on the machine's other networks.
    cmd.args(["--mca", "btl_tcp_if_include", "lo", "--mca", "oob_tcp_if_include", "lo"]);
    cmd.args(extra);
    cmd.arg(exe).args(["--exact", worker, "--include-ignored", "--nocapture", "--test-threads", "1"]);
    cmd.env("FIREBRAND_MPI_WORKER", "1").env("FIREBRAND_MPI_OUT", out).env("RAYON_NUM_THREADS", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let t0 = Instant::now();
    let output = cmd.output().expect("mpirun starts");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Run { output, elapsed: t0.elapsed(), text }
}

/// Writes `v` as little-endian f32.
pub fn write_f32(path: &Path, v: &[f32]) {
    std::fs::write(path, v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

/// Reads what [`write_f32`] wrote.
pub fn read_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// All parameters of `m`, flattened, in order.
pub fn flat_params(m: &impl firebrand_nn::ModuleExt) -> Vec<f32> {
    m.named_parameters().iter().flat_map(|(_, p)| p.to_vec::<f32>()).collect()
}

/// The largest absolute difference.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
