//! `ProcessGroup`: this process's place among the ranks of an MPI job, and
//! the collectives on tensors.

use crate::comm::{self, Job, Kind, Msg, Payload};
use crate::error::{DistributedError, Result};
use firebrand_autograd::{DType, Tensor, with_no_grad};
use firebrand_data::launched_world_size;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// The default collective timeout: long enough for a rank that evaluates
/// or writes a checkpoint while the others wait.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// The ranks of the MPI job this process belongs to (`MPI_COMM_WORLD`), and
/// collectives over them.
///
/// MPI runs on a communication thread of its own (started by
/// [`ProcessGroup::world`]); the collectives here submit to it and wait, and
/// [`GradReducer`](crate::GradReducer) submits without waiting, so that
/// gradients travel while backward goes on. Collectives run in the order
/// they are submitted, which must be the same on every rank.
///
/// Every collective has a timeout ([`ProcessGroup::set_timeout`], default
/// [`DEFAULT_TIMEOUT`] or `FIREBRAND_DIST_TIMEOUT` seconds): a rank that
/// died or stalls is named in a [`DistributedError::Timeout`], and the
/// group is then broken (later collectives fail at once, and the job is
/// aborted at exit instead of waiting in `MPI_Finalize`).
///
/// Without `mpirun` the world is this process alone, and every collective
/// returns its input.
#[derive(Clone)]
pub struct ProcessGroup {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Mutex<Sender<Msg>>,
    rank: usize,
    size: usize,
    processor: String,
    timeout_ms: Arc<AtomicU64>,
    broken: Arc<Mutex<Option<String>>>,
}

static WORLD: OnceLock<Result<ProcessGroup>> = OnceLock::new();
static THREAD: Mutex<Option<JoinHandle<()>>> = Mutex::new(None);

fn env_timeout() -> Duration {
    std::env::var("FIREBRAND_DIST_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs_f64)
}

extern "C" fn shutdown_at_exit() {
    if STUCK.load(Ordering::SeqCst) {
        // mpirun sees the non-zero status and ends the other ranks.
        // SAFETY: ends the process now, without running more exit handlers.
        unsafe { libc::_exit(1) };
    }
    if let Some(Ok(g)) = WORLD.get() {
        let _ = g.inner.tx.lock().unwrap_or_else(|e| e.into_inner()).send(Msg::Shutdown);
        if let Some(h) = THREAD.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl ProcessGroup {
    /// This process's group: MPI is initialized on the first call (on the
    /// communication thread) and every rank checks in with the others
    /// within the timeout; later calls return the same group.
    ///
    /// ```
    /// let g = firebrand_distributed::ProcessGroup::world().unwrap();
    /// if firebrand_distributed::launched_world_size().is_none() {
    ///     assert_eq!((g.rank(), g.world_size()), (0, 1)); // not under mpirun
    /// }
    /// ```
    ///
    /// # Errors
    /// [`DistributedError::Startup`] when MPI does not start within the
    /// timeout, or a rank does not check in (it is named).
    pub fn world() -> Result<ProcessGroup> {
        WORLD.get_or_init(start).clone()
    }

    /// This process's rank, `0..world_size()`.
    pub fn rank(&self) -> usize {
        self.inner.rank
    }

    /// The number of processes.
    pub fn world_size(&self) -> usize {
        self.inner.size
    }

    /// Whether this is rank 0, the one that logs and writes checkpoints.
    pub fn is_main(&self) -> bool {
        self.inner.rank == 0
    }

    /// The host this rank runs on (`MPI_Get_processor_name`).
    pub fn processor_name(&self) -> &str {
        &self.inner.processor
    }

    /// The timeout every collective waits for the other ranks.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.inner.timeout_ms.load(Ordering::Relaxed))
    }

    /// Sets the collective timeout (for this process; set the same on all).
    pub fn set_timeout(&self, timeout: Duration) {
        self.inner.timeout_ms.store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// The error that broke the group, when one did.
    pub fn broken(&self) -> Option<String> {
        self.inner.broken.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Submits a collective; the receiver gets its result.
    pub(crate) fn submit(
        &self,
        kind: Kind,
        data: Payload,
        what: String,
        done: Option<Box<dyn FnOnce() + Send>>,
    ) -> Receiver<Result<Payload>> {
        let (reply, rx) = channel();
        let job = Job { kind, data, what, reply, done };
        if let Err(std::sync::mpsc::SendError(Msg::Job(job))) =
            self.inner.tx.lock().unwrap_or_else(|e| e.into_inner()).send(Msg::Job(job))
        {
            let _ = job.reply.send(Err(DistributedError::Broken("the communication thread has ended".into())));
        }
        rx
    }

    fn run(&self, kind: Kind, data: Payload, what: String) -> Result<Payload> {
        let rx = self.submit(kind, data, what.clone(), None);
        self.wait(rx, &what)
    }

    /// The result of a submitted collective, or an error when it has not
    /// come within two timeouts (its arrival check has one; the blocking
    /// all-reduce after it hangs only if a rank dies during it). The group
    /// is then broken, and at exit the process ends at once instead of
    /// joining the stuck communication thread.
    pub(crate) fn wait(&self, rx: Receiver<Result<Payload>>, what: &str) -> Result<Payload> {
        let limit = 2 * self.timeout();
        match rx.recv_timeout(limit) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let e = DistributedError::Stalled { rank: self.rank(), what: what.into(), seq: None, timeout: limit };
                *self.inner.broken.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                STUCK.store(true, Ordering::SeqCst);
                Err(e)
            }
            Err(_) => Err(DistributedError::Broken("the communication thread has ended".into())),
        }
    }

    /// Sums `values` over all ranks, in place (f64: metrics and counts).
    ///
    /// # Errors
    /// A [`DistributedError`] naming the rank that did not arrive.
    pub fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()> {
        match self.run(Kind::Sum, Payload::F64(values.to_vec()), format!("an all-reduce of {} f64", values.len()))? {
            Payload::F64(v) => values.copy_from_slice(&v),
            _ => unreachable!("a sum returns its payload's type"),
        }
        Ok(())
    }

    /// Replaces `t` by the element-wise sum (or mean) of it over all ranks,
    /// in place (PyTorch's `dist.all_reduce`). Any float dtype and device;
    /// summed in f32.
    ///
    /// # Errors
    /// An integer tensor, or a [`DistributedError`] naming the rank.
    pub fn all_reduce_(&self, t: &Tensor, op: ReduceOp) -> Result<()> {
        if !t.dtype().is_float() {
            return Err(DistributedError::Invalid(format!(
                "all_reduce_: a {:?} tensor; only float tensors are summed",
                t.dtype()
            )));
        }
        let v = t.to_dtype(DType::F32).to_vec::<f32>();
        let what = format!("an all-reduce of a tensor of shape {:?}", t.dims());
        let Payload::F32Into(_, mut sum) = self.run(Kind::Sum, Payload::F32Into(v, Vec::new()), what)? else {
            unreachable!("a sum returns its buffers")
        };
        if op == ReduceOp::Mean {
            let w = self.world_size() as f32;
            sum.iter_mut().for_each(|x| *x /= w);
        }
        let src = Tensor::from_vec(sum, t.dims().to_vec());
        with_no_grad(|| t.copy_(&src)).map_err(|e| DistributedError::Invalid(format!("all_reduce_: {e}")))
    }

    /// Replaces every tensor by rank `root`'s values (PyTorch's
    /// `dist.broadcast`), all in one message. Float tensors travel as f32,
    /// integer ones as i64.
    ///
    /// # Errors
    /// `root` outside the world, or a [`DistributedError`] naming the rank.
    pub fn broadcast_(&self, tensors: &[Tensor], root: usize, what: &str) -> Result<()> {
        if root >= self.world_size() {
            return Err(DistributedError::Invalid(format!(
                "broadcast_: root {root} in a world of {}",
                self.world_size()
            )));
        }
        let mut bytes = Vec::new();
        for t in tensors {
            if t.dtype().is_float() {
                bytes.extend(t.to_dtype(DType::F32).to_vec::<f32>().iter().flat_map(|x| x.to_le_bytes()));
            } else {
                bytes.extend(t.to_dtype(DType::I64).to_vec::<i64>().iter().flat_map(|x| x.to_le_bytes()));
            }
        }
        let what = format!("a broadcast of {what} ({:.1} MB) from rank {root}", bytes.len() as f64 / 1e6);
        let Payload::Bytes(bytes) = self.run(Kind::Broadcast { root }, Payload::Bytes(bytes), what)? else {
            unreachable!()
        };
        if self.rank() == root {
            return Ok(());
        }
        let mut off = 0;
        for t in tensors {
            let n = t.elem_count();
            let size = n * if t.dtype().is_float() { 4 } else { 8 };
            let chunk = &bytes[off..off + size];
            let src = if t.dtype().is_float() {
                let v: Vec<f32> = chunk.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
                Tensor::from_vec(v, t.dims().to_vec())
            } else {
                let v: Vec<i64> = chunk.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
                Tensor::from_vec(v, t.dims().to_vec())
            };
            off += chunk.len();
            with_no_grad(|| t.copy_(&src)).map_err(|e| DistributedError::Invalid(format!("broadcast_: {e}")))?;
        }
        Ok(())
    }

    /// Waits until every rank arrives (and names those that do not).
    ///
    /// # Errors
    /// A [`DistributedError`] naming the rank.
    pub fn barrier(&self) -> Result<()> {
        self.run(Kind::Barrier, Payload::Empty, "a barrier".into()).map(|_| ())
    }
}

/// How [`ProcessGroup::all_reduce_`] combines the ranks' tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// The element-wise sum.
    Sum,
    /// The element-wise mean.
    Mean,
}

/// The communication thread is stuck inside MPI: exit without joining it.
static STUCK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn start() -> Result<ProcessGroup> {
    let timeout = env_timeout();
    let timeout_ms = Arc::new(AtomicU64::new(timeout.as_millis() as u64));
    let broken = Arc::new(Mutex::new(None));
    let (tx, rx) = channel();
    let (started_tx, started_rx) = channel();
    let (t, b) = (Arc::clone(&timeout_ms), Arc::clone(&broken));
    let handle = std::thread::Builder::new()
        .name("firebrand-mpi".into())
        .spawn(move || comm::run(rx, started_tx, t, b))
        .map_err(|e| DistributedError::Startup(format!("cannot start the communication thread: {e}")))?;
    // MPI_Init itself waits for the other ranks' launch; bound that too.
    let started = match started_rx.recv_timeout(timeout + Duration::from_secs(5)) {
        Ok(r) => r?,
        Err(_) => {
            return Err(DistributedError::Startup(format!(
                "MPI did not start within {timeout:?}{}: the other ranks are not reachable",
                launched_world_size().map(|n| format!(" (launched as one of {n} processes)")).unwrap_or_default()
            )));
        }
    };
    *THREAD.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    // SAFETY: registers a plain extern "C" function.
    unsafe { libc::atexit(shutdown_at_exit) };
    Ok(ProcessGroup {
        inner: Arc::new(Inner {
            tx: Mutex::new(tx),
            rank: started.rank,
            size: started.size,
            processor: started.processor,
            timeout_ms,
            broken,
        }),
    })
}
