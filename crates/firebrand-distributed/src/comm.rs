//! The communication thread: it initializes MPI, owns it (MPI's
//! `THREAD_FUNNELED`: every MPI call is made here), and runs the collectives
//! submitted to it one at a time, in submission order, while the training
//! thread goes on with backward. Every collective is preceded by an arrival
//! exchange (a 32-byte message to every peer) that checks that all ranks
//! reached the same collective and, when one does not within the timeout,
//! names it. MPI errors return codes (`MPI_ERRORS_RETURN`), never abort.

use crate::error::{DistributedError, Result};
use half::bf16;
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::Communicator;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TAG_ARRIVE: c_int = 0x7B01;
const TAG_RING: c_int = 0x7B02;

/// Data sent to and returned by a collective.
pub(crate) enum Payload {
    /// f32 values to sum, and a buffer of the same length for the result
    /// (both come back, to be reused: fresh 25 MB buffers cost page faults).
    F32Into(Vec<f32>, Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<u8>),
    Empty,
}

impl Payload {
    fn len(&self) -> usize {
        match self {
            Payload::F32Into(v, _) => v.len(),
            Payload::F64(v) => v.len(),
            Payload::Bytes(v) => v.len(),
            Payload::Empty => 0,
        }
    }
}

/// The collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Element-wise sum (f32 or f64 payload), the same result on every rank.
    Sum,
    /// Sum of an f32 payload sent as bf16 (a ring of sends), rounded to bf16.
    SumBf16,
    /// Rank `root`'s bytes to every rank.
    Broadcast { root: usize },
    /// Wait until every rank arrives.
    Barrier,
}

impl Kind {
    fn code(self) -> [u64; 2] {
        match self {
            Kind::Sum => [1, 0],
            Kind::SumBf16 => [2, 0],
            Kind::Broadcast { root } => [3, root as u64],
            Kind::Barrier => [4, 0],
        }
    }
    fn describe(code: [u64; 2], len: u64) -> String {
        match code {
            [1, _] => format!("an all-reduce of {len} values"),
            [2, _] => format!("a bf16 all-reduce of {len} values"),
            [3, root] => format!("a broadcast of {len} bytes from rank {root}"),
            [4, _] => "a barrier".into(),
            _ => format!("an unknown collective {code:?}"),
        }
    }
}

/// A collective for the thread, and where its result goes.
pub(crate) struct Job {
    pub(crate) kind: Kind,
    pub(crate) data: Payload,
    /// For error messages: `all-reduce of gradient bucket 0 (1.2 MB)`.
    pub(crate) what: String,
    pub(crate) reply: Sender<Result<Payload>>,
    /// Run on the thread when the collective completed (event recording).
    pub(crate) done: Option<Box<dyn FnOnce() + Send>>,
}

pub(crate) enum Msg {
    Job(Job),
    /// Finalize MPI (or abort the job when the group is broken) and end.
    Shutdown,
}

/// What the thread reports once MPI is up.
pub(crate) struct Started {
    pub(crate) rank: usize,
    pub(crate) size: usize,
    pub(crate) processor: String,
}

/// The thread's body: initialize, check in with every rank, then serve jobs.
pub(crate) fn run(
    rx: Receiver<Msg>,
    started: Sender<Result<Started>>,
    timeout_ms: Arc<AtomicU64>,
    broken: Arc<Mutex<Option<String>>>,
) {
    let Some((universe, _threading)) = mpi::initialize_with_threading(mpi::Threading::Funneled) else {
        let _ = started.send(Err(DistributedError::Startup("MPI was already initialized in this process".into())));
        return;
    };
    let world = universe.world();
    let comm = world.as_raw();
    // SAFETY: MPI is initialized; the communicator is the world's.
    unsafe { ffi::MPI_Comm_set_errhandler(comm, ffi::RSMPI_ERRORS_RETURN) };
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let processor = mpi::environment::processor_name().unwrap_or_else(|_| "?".into());
    let mut c = Comm { comm, rank, size, seq: 0, timeout_ms, leaked: Vec::new() };
    // Start-up check-in: every rank must answer within the timeout.
    match c.arrive(Kind::Barrier, 0, "the start-up check-in") {
        Ok(()) => {
            let _ = started.send(Ok(Started { rank, size, processor }));
        }
        Err(e) => {
            let _ = started.send(Err(DistributedError::Startup(e.to_string())));
            *broken.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        }
    }
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Job(job) => {
                let failed = broken.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let result = match failed {
                    Some(why) => Err(DistributedError::Broken(why)),
                    None => c.execute(job.kind, job.data, &job.what),
                };
                if let Err(e) = &result
                    && !matches!(e, DistributedError::Broken(_))
                {
                    *broken.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                }
                if result.is_ok()
                    && let Some(done) = job.done
                {
                    done();
                }
                let _ = job.reply.send(result);
            }
            Msg::Shutdown => break,
        }
    }
    if let Some(why) = broken.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        // Peers may be stuck in a collective with us, or gone: end the whole
        // job rather than wait in MPI_Finalize.
        eprint_line(&format!("rank {rank}: ending the MPI job (MPI_Abort): {why}"));
        // SAFETY: MPI is initialized; MPI_Abort does not return.
        unsafe { ffi::MPI_Abort(comm, 1) };
    }
    drop(universe); // MPI_Finalize
}

struct Comm {
    comm: ffi::MPI_Comm,
    rank: usize,
    size: usize,
    seq: u64,
    timeout_ms: Arc<AtomicU64>,
    /// Buffers of requests abandoned at a timeout: MPI may still write them.
    leaked: Vec<Box<dyn std::any::Any>>,
}

impl Comm {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    fn mpi_error(&self, what: &str, rc: c_int) -> DistributedError {
        let mut buf = vec![0u8; 512];
        let mut len: c_int = 0;
        // SAFETY: buf holds MPI_MAX_ERROR_STRING (256 in OpenMPI) bytes.
        unsafe { ffi::MPI_Error_string(rc, buf.as_mut_ptr().cast(), &mut len) };
        buf.truncate(len.max(0) as usize);
        DistributedError::Mpi {
            rank: self.rank,
            what: what.to_string(),
            message: String::from_utf8_lossy(&buf).into_owned(),
        }
    }

    fn check(&self, what: &str, rc: c_int) -> Result<()> {
        if rc == 0 { Ok(()) } else { Err(self.mpi_error(what, rc)) }
    }

    /// Posts a non-blocking send (`send`) of `count` elements of `dtype`
    /// from `buf` to `peer`, or a receive into `buf` from `peer`.
    ///
    /// # Safety
    /// `buf` must hold `count` elements and stay valid until the request completes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn post(
        &self,
        what: &str,
        send: bool,
        buf: *mut c_void,
        count: usize,
        dtype: ffi::MPI_Datatype,
        peer: usize,
        tag: c_int,
    ) -> Result<ffi::MPI_Request> {
        let mut r = unsafe { ffi::RSMPI_REQUEST_NULL };
        let (n, peer) = (count as c_int, peer as c_int);
        let rc = unsafe {
            if send {
                ffi::MPI_Isend(buf.cast_const(), n, dtype, peer, tag, self.comm, &mut r)
            } else {
                ffi::MPI_Irecv(buf, n, dtype, peer, tag, self.comm, &mut r)
            }
        };
        self.check(what, rc).map(|()| r)
    }

    /// Tests `reqs` until all complete or the timeout: `Err` lists the
    /// indices of those not complete.
    fn poll(&self, what: &str, reqs: &mut [ffi::MPI_Request]) -> Result<std::result::Result<(), Vec<usize>>> {
        let deadline = Instant::now() + self.timeout();
        let mut spins = 0u32;
        loop {
            let mut flag: c_int = 0;
            // SAFETY: the requests are valid or MPI_REQUEST_NULL.
            let rc = unsafe {
                ffi::MPI_Testall(reqs.len() as c_int, reqs.as_mut_ptr(), &mut flag, ffi::RSMPI_STATUSES_IGNORE)
            };
            self.check(what, rc)?;
            if flag != 0 {
                return Ok(Ok(()));
            }
            if Instant::now() >= deadline {
                let mut open = Vec::new();
                for (i, r) in reqs.iter_mut().enumerate() {
                    let mut done: c_int = 0;
                    // SAFETY: as above; a completed request becomes MPI_REQUEST_NULL.
                    unsafe { ffi::MPI_Test(r, &mut done, ffi::RSMPI_STATUS_IGNORE) };
                    if done == 0 {
                        open.push(i);
                    }
                }
                return Ok(Err(open));
            }
            spins += 1;
            if spins > 64 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Announces collective `self.seq` (kind and length) to every peer and
    /// waits for theirs: a barrier that names who did not come.
    fn arrive(&mut self, kind: Kind, len: usize, what: &str) -> Result<()> {
        let seq = self.seq;
        self.seq += 1;
        if self.size == 1 {
            return Ok(());
        }
        let code = kind.code();
        let send = Box::new([seq, code[0], code[1], len as u64]);
        let mut recv = Box::new(vec![[0u64; 4]; self.size]);
        let peers: Vec<usize> = (0..self.size).filter(|&p| p != self.rank).collect();
        let mut reqs = Vec::with_capacity(2 * peers.len());
        let u64t = unsafe { ffi::RSMPI_UINT64_T };
        for &p in &peers {
            // SAFETY: recv outlives the request (leaked on a timeout).
            reqs.push(unsafe { self.post(what, false, recv[p].as_mut_ptr().cast(), 4, u64t, p, TAG_ARRIVE)? });
        }
        for &p in &peers {
            // SAFETY: send outlives the request (leaked on a timeout).
            reqs.push(unsafe { self.post(what, true, send.as_ptr().cast_mut().cast(), 4, u64t, p, TAG_ARRIVE)? });
        }
        if let Err(open) = self.poll(what, &mut reqs)? {
            let missing: Vec<usize> = open.iter().filter(|&&i| i < peers.len()).map(|&i| peers[i]).collect();
            self.leaked.push(send);
            self.leaked.push(recv);
            return Err(if missing.is_empty() {
                DistributedError::Stalled {
                    rank: self.rank,
                    what: what.into(),
                    seq: Some(seq),
                    timeout: self.timeout(),
                }
            } else {
                DistributedError::Timeout { rank: self.rank, missing, what: what.into(), seq, timeout: self.timeout() }
            });
        }
        for &p in &peers {
            let h = recv[p];
            if h[0] != seq || [h[1], h[2]] != code || h[3] != len as u64 {
                return Err(DistributedError::Mismatch {
                    rank: self.rank,
                    other: p,
                    what: format!("{what}: {}", Kind::describe(code, len as u64)),
                    theirs: format!("{} (collective #{})", Kind::describe([h[1], h[2]], h[3]), h[0]),
                    seq,
                });
            }
        }
        Ok(())
    }

    fn execute(&mut self, kind: Kind, data: Payload, what: &str) -> Result<Payload> {
        self.arrive(kind, data.len(), what)?;
        let seq = self.seq - 1;
        if self.size == 1 {
            // The sum over one rank is its own values.
            return Ok(match data {
                Payload::F32Into(v, out) => Payload::F32Into(out, v),
                d => d,
            });
        }
        match (kind, data) {
            (Kind::Barrier, d) => Ok(d),
            (Kind::Sum, Payload::F32Into(v, mut out)) => {
                out.resize(v.len(), 0.0);
                self.all_reduce(&v, &mut out, unsafe { ffi::RSMPI_FLOAT }, what)?;
                Ok(Payload::F32Into(v, out))
            }
            (Kind::Sum, Payload::F64(v)) => {
                let mut out = vec![0.0; v.len()];
                self.all_reduce(&v, &mut out, unsafe { ffi::RSMPI_DOUBLE }, what)?;
                Ok(Payload::F64(out))
            }
            (Kind::SumBf16, Payload::F32Into(mut v, out)) => {
                self.ring_bf16(&mut v, what, seq)?;
                Ok(Payload::F32Into(out, v))
            }
            (Kind::Broadcast { root }, Payload::Bytes(mut v)) => {
                let r = self.chunked(what, seq, v.len(), |c, off, n, req| unsafe {
                    ffi::MPI_Ibcast(v[off..].as_mut_ptr().cast(), n, ffi::RSMPI_UINT8_T, root as c_int, c.comm, req)
                });
                if let Err(e) = r {
                    std::mem::forget(v); // MPI may still write it
                    return Err(e);
                }
                Ok(Payload::Bytes(v))
            }
            (k, _) => Err(DistributedError::Invalid(format!("{what}: {k:?} does not take this payload"))),
        }
    }

    /// A blocking `MPI_Allreduce` (Open MPI's tuned algorithms; its
    /// non-blocking one was 6x slower for 25 MB here). Every rank has just
    /// arrived, so it completes unless a rank dies during it; the waiting
    /// side then times out (`ProcessGroup::wait`).
    fn all_reduce<T>(&mut self, v: &[T], out: &mut [T], dtype: ffi::MPI_Datatype, what: &str) -> Result<()> {
        const PIECE: usize = 1 << 30;
        let mut off = 0;
        while off < v.len() {
            let n = (v.len() - off).min(PIECE);
            // SAFETY: both buffers hold `n` elements from `off`.
            let rc = unsafe {
                ffi::MPI_Allreduce(
                    v[off..].as_ptr().cast::<c_void>(),
                    out[off..].as_mut_ptr().cast(),
                    n as c_int,
                    dtype,
                    ffi::RSMPI_SUM,
                    self.comm,
                )
            };
            self.check(what, rc)?;
            off += n;
        }
        Ok(())
    }

    /// Runs `start(offset, count, &mut request)` over pieces of at most 2^30
    /// elements (MPI counts are `int`), each polled to completion.
    fn chunked(
        &mut self,
        what: &str,
        seq: u64,
        len: usize,
        mut start: impl FnMut(&Comm, usize, c_int, &mut ffi::MPI_Request) -> c_int,
    ) -> Result<()> {
        const PIECE: usize = 1 << 30;
        let mut off = 0;
        loop {
            let n = (len - off).min(PIECE);
            let mut req = unsafe { ffi::RSMPI_REQUEST_NULL };
            let rc = start(self, off, n as c_int, &mut req);
            self.check(what, rc)?;
            if self.poll(what, std::slice::from_mut(&mut req))?.is_err() {
                // The caller leaks its buffers: MPI may still use them.
                return Err(DistributedError::Stalled {
                    rank: self.rank,
                    what: what.into(),
                    seq: Some(seq),
                    timeout: self.timeout(),
                });
            }
            off += n;
            if off >= len {
                return Ok(());
            }
        }
    }

    /// Ring all-reduce (reduce-scatter, then all-gather) sending bf16: half
    /// the bytes of f32. Partial sums are added in f32 and rounded to bf16
    /// for each hop; the owner of each chunk rounds its result too, so every
    /// rank ends with the same values.
    fn ring_bf16(&mut self, data: &mut [f32], what: &str, seq: u64) -> Result<()> {
        use half::slice::HalfFloatSliceExt;
        let (w, r, n) = (self.size, self.rank, data.len());
        let bounds = |c: usize| (c * n / w, (c + 1) * n / w);
        let (right, left) = ((r + 1) % w, (r + w - 1) % w);
        let longest = (0..w).map(|c| bounds(c).1 - bounds(c).0).max().unwrap_or(0);
        // One send and one receive buffer for every hop (vectorized conversions).
        let mut send = Box::new(vec![bf16::ZERO; longest]);
        let mut recv = Box::new(vec![bf16::ZERO; longest]);
        let mut widened = vec![0.0f32; longest];
        for phase in 0..2 {
            for s in 0..w - 1 {
                let (sc, rc) = if phase == 0 {
                    ((r + w - s) % w, (r + 2 * w - s - 1) % w)
                } else {
                    ((r + 1 + w - s) % w, (r + w - s) % w)
                };
                let (s0, s1) = bounds(sc);
                let (r0, r1) = bounds(rc);
                send[..s1 - s0].convert_from_f32_slice(&data[s0..s1]);
                let (send_len, recv_len) = (s1 - s0, r1 - r0);
                let u16t = unsafe { ffi::RSMPI_UINT16_T };
                // SAFETY: the boxes outlive the requests (leaked on a timeout).
                let mut reqs = unsafe {
                    [
                        self.post(what, false, recv.as_mut_ptr().cast(), recv_len, u16t, left, TAG_RING)?,
                        self.post(what, true, send.as_mut_ptr().cast(), send_len, u16t, right, TAG_RING)?,
                    ]
                };
                if let Err(open) = self.poll(what, &mut reqs)? {
                    self.leaked.push(send);
                    self.leaked.push(recv);
                    let missing = if open.contains(&0) { vec![left] } else { vec![right] };
                    return Err(DistributedError::Timeout {
                        rank: self.rank,
                        missing,
                        what: what.into(),
                        seq,
                        timeout: self.timeout(),
                    });
                }
                let dst = &mut data[r0..r1];
                if phase == 0 {
                    recv[..recv_len].convert_to_f32_slice(&mut widened[..recv_len]);
                    dst.iter_mut().zip(&widened[..recv_len]).for_each(|(d, x)| *d += x);
                } else {
                    recv[..recv_len].convert_to_f32_slice(dst);
                }
            }
            if phase == 0 {
                let (o0, o1) = bounds((r + 1) % w);
                send[..o1 - o0].convert_from_f32_slice(&data[o0..o1]);
                send[..o1 - o0].convert_to_f32_slice(&mut data[o0..o1]);
            }
        }
        Ok(())
    }
}

/// Writes `line` and a newline to stderr in one `write`: `eprintln!` issues
/// one per formatted piece, and mpirun, which forwards each rank's stderr
/// in the chunks it reads, printed its own MPI_ABORT banner between them.
pub fn eprint_line(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(format!("{line}\n").as_bytes());
}
