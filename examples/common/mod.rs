//! What the examples share: where outputs go, the Shakespeare corpus, and
//! exiting with a message (each example uses some of them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub mod text;

/// The flags both Fashion-MNIST examples take (`#[command(flatten)]`).
#[derive(clap::Args)]
pub struct FashionArgs {
    /// Folder with the four Fashion-MNIST `*-ubyte.gz` files [default: $FIREBRAND_DATA, then the standard places].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Training epochs.
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Train on the first N training images only (a short run, e.g. on a
    /// CPU Vulkan driver) [default: all 60,000].
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArg,
}

/// `--device` and `--matmul-precision`, which every example takes (`#[command(flatten)]`).
#[derive(clap::Args)]
pub struct DeviceArg {
    /// Where to train and run: cpu, wgpu or wgpu:N (wgpu needs the `wgpu` feature).
    #[arg(long, default_value = "cpu")]
    pub device: firebrand::Device,
    /// How f32 matrix products compute on the CPU: highest (f32), or medium (bf16 operands on AMX tiles, f32 sums; as torch.set_float32_matmul_precision).
    #[arg(long, default_value = "highest")]
    pub matmul_precision: firebrand::MatmulPrecision,
}

impl DeviceArg {
    /// Sets the matmul precision and moves `module` to the chosen device, or exits with the reason.
    pub fn place(&self, module: &impl firebrand::nn::ModuleExt) -> firebrand::Device {
        firebrand::set_float32_matmul_precision(self.matmul_precision);
        module.to_device(self.device).unwrap_or_else(|e| fail(e));
        if !self.device.is_cpu() {
            println!("running on {}", self.device);
        }
        self.device
    }
}

/// The first `limit` examples of `d` (all without a limit).
pub fn limited(d: firebrand::data::TensorDataset, limit: Option<usize>) -> firebrand::data::TensorDataset {
    match limit {
        Some(n) if n < d.x.dims()[0] => {
            firebrand::data::TensorDataset { x: d.x.narrow(0, 0, n), y: d.y.narrow(0, 0, n) }
        }
        _ => d,
    }
}

/// Prints `error: msg` and exits with status 2 (clap's status for bad usage).
pub fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}

/// `--out DIR`, or `runs/<example>` by default: created, or exit with the reason.
pub fn out_dir(out: Option<&Path>, example: &str) -> PathBuf {
    let dir = out.map(Path::to_path_buf).unwrap_or_else(|| Path::new("runs").join(example));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| fail(format!("cannot create {}: {e}", dir.display())));
    dir
}

/// The Shakespeare corpus (`--text FILE`, else `shakespeare/shakespeare.txt`
/// under `$FIREBRAND_DATA` or the standard places): its path and text, or
/// exit with the reason.
pub fn shakespeare(text: Option<&Path>) -> (PathBuf, String) {
    firebrand::data::read_text("shakespeare", "shakespeare.txt", text).unwrap_or_else(|e| fail(e))
}

/// Writes the history plot to `dir/<name>_history.png` and says where.
pub fn plot_history(history: &firebrand::train::History, dir: &Path, name: &str) {
    let path = dir.join(format!("{name}_history.png"));
    match history.plot(&path) {
        Ok(()) => println!("history plot: {}", path.display()),
        Err(e) => eprintln!("warning: {e}"),
    }
}

/// Writes the confusion-matrix heatmap to `dir/<name>_confusion.png` and says where.
pub fn plot_confusion(metrics: &firebrand::train::ClassificationMetrics, dir: &Path, name: &str, classes: &[&str]) {
    let path = dir.join(format!("{name}_confusion.png"));
    match metrics.plot_confusion(&path, Some(classes)) {
        Ok(()) => println!("confusion matrix: {}", path.display()),
        Err(e) => eprintln!("warning: {e}"),
    }
}

/// The `--distributed` flag of the examples that train data-parallel.
#[derive(clap::Args)]
pub struct DistributedArg {
    /// Train data-parallel across the processes of an MPI job: launch with
    /// `mpirun -np N` (needs the `mpi` feature). The batch size is per process.
    #[arg(long)]
    pub distributed: bool,
}

/// This process's rank and the world size under `--distributed` (`(0, 1)`
/// without it), or exit with the reason.
pub fn distributed_rank(arg: &DistributedArg) -> (usize, usize) {
    if !arg.distributed {
        return (0, 1);
    }
    #[cfg(feature = "mpi")]
    {
        let g = firebrand::distributed::ProcessGroup::world().unwrap_or_else(|e| fail(e));
        if g.world_size() == 1 {
            eprintln!("warning: --distributed in a single process; launch with `mpirun -np N`");
        }
        (g.rank(), g.world_size())
    }
    #[cfg(not(feature = "mpi"))]
    fail("--distributed needs the `mpi` feature: cargo build --release --features mpi --examples")
}
