//! Parallel loops in which the calling thread takes part.
//!
//! A rayon parallel iterator started from a thread outside the pool (the
//! user's `main`, typically) hands its work to the pool and blocks until a
//! worker wakes it again: on this VM that hand-off costs tens of microseconds
//! per op, which measured as a 20–35% loss on a 256³ gemm. [`par_for`] instead
//! lets the caller run tasks itself while helper threads pick up the rest.
//! The helpers are our own (one fewer than rayon's pool size) and, like an
//! OpenMP runtime, spin for a while after each loop before they sleep: a
//! training step runs dozens of short parallel ops back to back, and waking
//! a sleeping thread for each cost more than some of the ops themselves
//! (measured on the CNN training step). Inside rayon's pool, or on a helper,
//! loops are ordinary rayon loops or serial.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Elementwise work below this many elements stays on the calling thread:
/// waking the pool costs more than it saves.
pub const PAR_MIN_ELEMS: usize = 1 << 15;

/// Number of threads parallel kernels use (rayon's pool size).
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}

type TaskFn = dyn Fn(usize) + Sync;

struct Shared {
    next: AtomicUsize,
    done: AtomicUsize,
    ntasks: usize,
    /// Tasks taken per grab of `next`: many tiny tasks would otherwise spend
    /// more time bouncing the counter's cache line between cores than working.
    chunk: usize,
    /// Helpers that may be using `f` right now.
    active: AtomicUsize,
    /// Set by the caller once every task is done; helpers starting later leave `f` alone.
    closed: AtomicBool,
    panicked: AtomicBool,
    /// The caller's closure with its lifetime erased; valid while `closed` is
    /// false or `active` is non-zero (the caller waits for both before returning).
    f: *const TaskFn,
}

// SAFETY: `f` is only dereferenced under the protocol described on the field;
// the closure itself is `Sync`.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

fn run_tasks(s: &Shared, f: &(dyn Fn(usize) + Sync + '_)) {
    loop {
        let t0 = s.next.fetch_add(s.chunk, SeqCst);
        if t0 >= s.ntasks {
            break;
        }
        let t1 = (t0 + s.chunk).min(s.ntasks);
        if catch_unwind(AssertUnwindSafe(|| (t0..t1).for_each(f))).is_err() {
            s.panicked.store(true, SeqCst);
        }
        s.done.fetch_add(t1 - t0, SeqCst);
    }
}

/// How long an idle helper keeps polling for the next loop before it sleeps.
const HELPER_SPIN: Duration = Duration::from_millis(2);

/// The helper threads and the loop they are offered.
struct Helpers {
    /// The current loop, replaced by each `par_for`.
    job: Mutex<Option<Arc<Shared>>>,
    /// Bumped whenever `job` is replaced.
    seq: AtomicUsize,
    /// Helpers asleep on `wake`.
    sleeping: Mutex<usize>,
    wake: Condvar,
    count: usize,
}

thread_local! {
    static IS_HELPER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Set while the calling thread runs a loop's tasks: a loop inside a task
    /// runs serially (the other threads are busy with the outer loop already).
    static IN_LOOP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn helpers() -> &'static Helpers {
    static H: OnceLock<&'static Helpers> = OnceLock::new();
    H.get_or_init(|| {
        let count = num_threads().saturating_sub(1);
        let h: &'static Helpers = Box::leak(Box::new(Helpers {
            job: Mutex::new(None),
            seq: AtomicUsize::new(0),
            sleeping: Mutex::new(0),
            wake: Condvar::new(),
            count,
        }));
        for i in 0..count {
            std::thread::Builder::new()
                .name(format!("firebrand-helper-{i}"))
                .spawn(move || helper_loop(h))
                .expect("spawning a helper thread");
        }
        h
    })
}

fn helper_loop(h: &'static Helpers) {
    IS_HELPER.with(|c| c.set(true));
    let mut seen = 0;
    loop {
        // Poll for a new loop, then sleep until one is posted.
        let start = Instant::now();
        let mut spins = 0u32;
        while h.seq.load(SeqCst) == seen {
            spins += 1;
            if spins.is_multiple_of(64) && start.elapsed() > HELPER_SPIN {
                let mut sleeping = h.sleeping.lock().unwrap_or_else(|e| e.into_inner());
                *sleeping += 1;
                while h.seq.load(SeqCst) == seen {
                    sleeping = h.wake.wait(sleeping).unwrap_or_else(|e| e.into_inner());
                }
                *sleeping -= 1;
                break;
            }
            std::hint::spin_loop();
        }
        seen = h.seq.load(SeqCst);
        let job = h.job.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(s) = job {
            s.active.fetch_add(1, SeqCst);
            if !s.closed.load(SeqCst) {
                // SAFETY: `active` was raised before `closed` was seen false, so the
                // caller is still waiting and `f` is alive.
                run_tasks(&s, unsafe { &*s.f });
            }
            s.active.fetch_sub(1, SeqCst);
        }
    }
}

fn wait_until(cond: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !cond() {
        if spins < 2000 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
}

/// Runs `f(0) .. f(ntasks - 1)`, in parallel when the pool has more than one
/// thread; the calling thread runs tasks too. Returns when all are done.
///
/// # Panics
/// If a task panicked (after all tasks have finished).
pub fn par_for(ntasks: usize, f: impl Fn(usize) + Sync) {
    let threads = num_threads();
    if ntasks <= 1 || threads <= 1 {
        (0..ntasks).for_each(f);
        return;
    }
    if rayon::current_thread_index().is_some() {
        // Inside the pool, work stealing already lets this thread take part.
        use rayon::prelude::*;
        (0..ntasks).into_par_iter().for_each(&f);
        return;
    }
    if IS_HELPER.with(|c| c.get()) || IN_LOOP.with(|c| c.get()) {
        // A loop inside a task: the other threads are busy already.
        (0..ntasks).for_each(f);
        return;
    }
    let h = helpers();
    if h.count == 0 {
        (0..ntasks).for_each(f);
        return;
    }
    let f_ref: &(dyn Fn(usize) + Sync + '_) = &f;
    // SAFETY: only the lifetime is erased; see `Shared::f` for why it stays valid.
    let f_ptr: *const TaskFn =
        unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const TaskFn>(f_ref) };
    let shared = Arc::new(Shared {
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        ntasks,
        // About eight grabs per thread keep the load balanced.
        chunk: (ntasks / (threads * 8)).max(1),
        active: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        panicked: AtomicBool::new(false),
        f: f_ptr,
    });
    // Offer the loop to the helpers (a later loop replaces it; one that is
    // closed is left alone), waking those asleep.
    *h.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&shared));
    h.seq.fetch_add(1, SeqCst);
    if *h.sleeping.lock().unwrap_or_else(|e| e.into_inner()) > 0 {
        h.wake.notify_all();
    }
    IN_LOOP.with(|c| c.set(true));
    run_tasks(&shared, f_ref);
    IN_LOOP.with(|c| c.set(false));
    wait_until(|| shared.done.load(SeqCst) >= ntasks);
    shared.closed.store(true, SeqCst);
    wait_until(|| shared.active.load(SeqCst) == 0);
    // Drop the helpers' reference so the closure's captures are not kept.
    let mut job = h.job.lock().unwrap_or_else(|e| e.into_inner());
    if job.as_ref().is_some_and(|j| Arc::ptr_eq(j, &shared)) {
        *job = None;
    }
    if shared.panicked.load(SeqCst) {
        panic!("a parallel task panicked");
    }
}

/// Runs `f(0) .. f(ntasks - 1)` on the pool's workers with rayon's own
/// scheduling (the caller waits). For long loops, where the hand-off latency
/// is negligible and a worker that wakes late would unbalance [`par_for`]'s
/// dynamic split: measured on a 1024³ gemm, 436 GFLOP/s this way against 300
/// with the caller taking part.
pub fn par_for_long(ntasks: usize, f: impl Fn(usize) + Sync + Send) {
    par_for(ntasks, f)
}

/// A raw pointer that parallel tasks may share: the base of a buffer whose
/// disjoint parts the tasks write. Every use states why the parts are disjoint.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: used only to hand disjoint parts of one buffer to parallel tasks.
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    // A method (not a field access) so closures capture the whole Send wrapper.
    pub(crate) fn get(&self) -> *mut T {
        self.0
    }
}

/// Calls `f(index, chunk)` for consecutive chunks of `chunk_len` elements of
/// `out` (the last may be shorter), in parallel through [`par_for`].
pub fn par_chunks_mut<T: Send>(out: &mut [T], chunk_len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let chunk_len = chunk_len.max(1);
    let n = out.len();
    let ptr = SendPtr(out.as_mut_ptr());
    par_for(n.div_ceil(chunk_len), |c| {
        let start = c * chunk_len;
        let len = chunk_len.min(n - start);
        // SAFETY: chunks are disjoint and inside `out`, which outlives the loop.
        let chunk = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(start), len) };
        f(c, chunk)
    });
}

/// Splits `out` into row-aligned chunks and runs `f(first_row, chunk)` on each,
/// in parallel when `rows * row_len` is large enough.
pub fn for_rows<T: Send>(out: &mut [T], row_len: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    let row_len = row_len.max(1);
    let rows = out.len() / row_len;
    let threads = num_threads();
    if out.len() < PAR_MIN_ELEMS || threads == 1 || rows < 2 {
        f(0, out);
        return;
    }
    let rows_per = rows.div_ceil(threads * 4).max(PAR_MIN_ELEMS / (4 * row_len)).max(1);
    par_chunks_mut(out, rows_per * row_len, |i, chunk| f(i * rows_per, chunk));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_from_outside_and_inside_the_pool() {
        for n in [0, 1, 2, 3, 17, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            par_for(n, |t| {
                hits[t].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "n = {n}");
            rayon::scope(|_| {
                par_for(n, |t| {
                    hits[t].fetch_add(1, SeqCst);
                })
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 2), "n = {n}, inside the pool");
        }
    }

    #[test]
    fn chunks_are_disjoint_and_complete() {
        let mut v = vec![0usize; 100_003];
        par_chunks_mut(&mut v, 1000, |c, chunk| chunk.iter_mut().enumerate().for_each(|(i, x)| *x = c * 1000 + i));
        assert!(v.iter().enumerate().all(|(i, &x)| x == i));
    }

    #[test]
    fn a_loop_inside_a_task_runs_every_inner_task_once() {
        let hits: Vec<AtomicUsize> = (0..4 * 50).map(|_| AtomicUsize::new(0)).collect();
        par_for(4, |o| {
            par_for(50, |i| {
                hits[o * 50 + i].fetch_add(1, SeqCst);
            })
        });
        assert!(hits.iter().all(|h| h.load(SeqCst) == 1));
        // The flag is cleared afterwards: a later top-level loop still runs.
        let n = AtomicUsize::new(0);
        par_for(10, |_| {
            n.fetch_add(1, SeqCst);
        });
        assert_eq!(n.load(SeqCst), 10);
    }

    #[test]
    fn a_panicking_task_panics_the_caller_after_the_others_finish() {
        let finished = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            par_for(8, |t| {
                if t == 3 {
                    panic!("task 3");
                }
                finished.fetch_add(1, SeqCst);
            })
        }));
        assert!(r.is_err());
        assert_eq!(finished.load(SeqCst), 7);
    }
}
