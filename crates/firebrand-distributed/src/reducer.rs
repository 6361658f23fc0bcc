//! `GradReducer`: averages gradients across ranks in buckets, each sent as
//! soon as backward has produced it (PyTorch's DDP `Reducer`).

use crate::ProcessGroup;
use crate::comm::{Kind, Payload};
use crate::error::{DistributedError, Result};
use firebrand_autograd::{DType, HookHandle, Tensor, register_backward_end_hook};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

/// Options of [`GradReducer`] and
/// [`DistributedDataParallel`](crate::DistributedDataParallel).
#[derive(Debug, Clone, PartialEq)]
pub struct DdpOptions {
    /// Gradient bytes (as f32) per bucket, in MB (PyTorch's
    /// `bucket_cap_mb`, 25). Smaller buckets start sending earlier in
    /// backward but pay a latency (and an arrival check) each.
    pub bucket_cap_mb: f64,
    /// The first bucket's size in MB (PyTorch's 1 MB): the last layers'
    /// gradients start travelling soon after backward begins.
    pub first_bucket_mb: f64,
    /// Send gradients as bf16, halving the traffic (PyTorch's
    /// `bf16_compress_hook`): a ring all-reduce of point-to-point sends,
    /// partial sums added in f32 and rounded to bf16 on every hop. The
    /// averaged gradient has bf16 precision (about 3 significant digits).
    pub bf16: bool,
    /// Broadcast buffers (BatchNorm's running statistics) from rank 0 at
    /// every forward in training mode, as PyTorch does
    /// ([`DistributedDataParallel`](crate::DistributedDataParallel) only).
    pub broadcast_buffers: bool,
    /// Record [`Event`]s (for tests and tracing).
    pub record_events: bool,
}

impl Default for DdpOptions {
    fn default() -> Self {
        DdpOptions {
            bucket_cap_mb: 25.0,
            first_bucket_mb: 1.0,
            bf16: false,
            broadcast_buffers: true,
            record_events: false,
        }
    }
}

/// What the reducer did, in the order it happened (with
/// [`DdpOptions::record_events`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Backward accumulated parameter `param`'s gradient (an index into the
    /// reducer's parameters).
    GradReady {
        /// The parameter.
        param: usize,
    },
    /// Bucket `bucket`'s all-reduce was submitted.
    BucketLaunched {
        /// The bucket.
        bucket: usize,
    },
    /// Bucket `bucket`'s all-reduce completed (recorded by the
    /// communication thread).
    BucketReduced {
        /// The bucket.
        bucket: usize,
    },
    /// Backward ended: the reducer waits for the buckets still travelling.
    BackwardEnd,
}

/// Averages the gradients of a set of parameters across the ranks of a
/// [`ProcessGroup`] during every backward pass.
///
/// The parameters are split, in reverse order (the order backward produces
/// them), into buckets of about [`DdpOptions::bucket_cap_mb`] (the first
/// one [`DdpOptions::first_bucket_mb`]). A hook on
/// each parameter notes when backward has accumulated its gradient; when a
/// bucket is complete it is packed and handed to the communication thread,
/// which all-reduces it while backward goes on with the earlier layers.
/// Buckets are sent in bucket order on every rank. At the end of backward
/// the reducer waits for the rest and writes every parameter's gradient
/// back as the mean over the ranks. A parameter that got no gradient in
/// this pass (unused) counts as zeros.
///
/// Errors (a rank that died or stalls) come back as the error of
/// [`Tensor::try_backward`] (the panic of [`Tensor::backward`]).
pub struct GradReducer {
    shared: Arc<Shared>,
    _hooks: Vec<HookHandle>,
}

struct Shared {
    group: ProcessGroup,
    params: Vec<Tensor>,
    buckets: Vec<Vec<usize>>,
    bucket_of: Vec<usize>,
    bf16: bool,
    sync: AtomicBool,
    record: bool,
    state: Mutex<State>,
    events: Arc<Mutex<Vec<Event>>>,
}

#[derive(Default)]
struct State {
    ready: Vec<bool>,
    count: Vec<usize>,
    next: usize,
    pending: Vec<(usize, Receiver<Result<Payload>>)>,
    active: bool,
    /// Each bucket's send and result buffers, kept between steps.
    buffers: Vec<Option<(Vec<f32>, Vec<f32>)>>,
}

impl GradReducer {
    /// A reducer over `params` (named; names appear in errors), attached now.
    ///
    /// # Errors
    /// A parameter that is not a leaf requiring grad, or a non-float one.
    pub fn new(group: &ProcessGroup, params: Vec<(String, Tensor)>, opts: &DdpOptions) -> Result<GradReducer> {
        // f32 elements per bucket.
        let elems = |mb: f64| (mb * 1e6 / 4.0).max(1.0) as usize;
        let (cap, first_cap) = (elems(opts.bucket_cap_mb), elems(opts.first_bucket_mb.min(opts.bucket_cap_mb)));
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        let (mut current, mut filled) = (Vec::new(), 0usize);
        for i in (0..params.len()).rev() {
            let n = params[i].1.elem_count();
            let limit = if buckets.is_empty() { first_cap } else { cap };
            if !current.is_empty() && filled + n > limit {
                buckets.push(std::mem::take(&mut current));
                filled = 0;
            }
            current.push(i);
            filled += n;
        }
        if !current.is_empty() {
            buckets.push(current);
        }
        let mut bucket_of = vec![0; params.len()];
        for (b, members) in buckets.iter().enumerate() {
            members.iter().for_each(|&i| bucket_of[i] = b);
        }
        for (name, p) in &params {
            if !p.dtype().is_float() {
                return Err(DistributedError::Invalid(format!("GradReducer: parameter `{name}` is {:?}", p.dtype())));
            }
        }
        let state = State {
            ready: vec![false; params.len()],
            count: vec![0; buckets.len()],
            buffers: (0..buckets.len()).map(|_| None).collect(),
            ..State::default()
        };
        let shared = Arc::new(Shared {
            group: group.clone(),
            params: params.iter().map(|(_, p)| p.clone()).collect(),
            buckets,
            bucket_of,
            bf16: opts.bf16,
            sync: AtomicBool::new(true),
            record: opts.record_events,
            state: Mutex::new(state),
            events: Arc::new(Mutex::new(Vec::new())),
        });
        let mut hooks = Vec::with_capacity(params.len() + 1);
        for (i, (name, p)) in params.iter().enumerate() {
            let s = Arc::downgrade(&shared);
            let h = p
                .try_register_post_accumulate_grad_hook(move |_| {
                    if let Some(s) = s.upgrade() {
                        s.grad_ready(i);
                    }
                })
                .map_err(|e| DistributedError::Invalid(format!("GradReducer: parameter `{name}`: {e}")))?;
            hooks.push(h);
        }
        let s = Arc::downgrade(&shared);
        hooks.push(register_backward_end_hook(move || match s.upgrade() {
            Some(s) => s.finish().map_err(Into::into),
            None => Ok(()),
        }));
        Ok(GradReducer { shared, _hooks: hooks })
    }

    /// The buckets, as indices into the parameters (bucket 0 holds the last ones).
    pub fn buckets(&self) -> &[Vec<usize>] {
        &self.shared.buckets
    }

    /// Turns gradient averaging off (`false`: gradients accumulate locally,
    /// as in [`DistributedDataParallel::no_sync`](crate::DistributedDataParallel::no_sync)) or back on.
    pub fn set_sync(&self, on: bool) {
        self.shared.sync.store(on, Ordering::SeqCst);
    }

    /// Whether gradients are averaged in the next backward.
    pub fn is_sync(&self) -> bool {
        self.shared.sync.load(Ordering::SeqCst)
    }

    /// The events recorded so far (and clears them).
    pub fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut *self.shared.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The process group.
    pub fn group(&self) -> &ProcessGroup {
        &self.shared.group
    }
}

impl Shared {
    fn event(&self, e: Event) {
        if self.record {
            self.events.lock().unwrap_or_else(|e| e.into_inner()).push(e);
        }
    }

    fn grad_ready(&self, i: usize) {
        if !self.sync.load(Ordering::SeqCst) {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.ready[i] {
            return;
        }
        st.ready[i] = true;
        st.active = true;
        st.count[self.bucket_of[i]] += 1;
        self.event(Event::GradReady { param: i });
        self.launch_ready(&mut st);
    }

    /// Submits every complete bucket from the next one in order.
    fn launch_ready(&self, st: &mut State) {
        while st.next < self.buckets.len() && st.count[st.next] == self.buckets[st.next].len() {
            let b = st.next;
            let members = &self.buckets[b];
            let len: usize = members.iter().map(|&i| self.params[i].elem_count()).sum();
            let (mut flat, out) = st.buffers[b].take().unwrap_or_else(|| (vec![0.0; len], vec![0.0; len]));
            let mut off = 0;
            for &i in members {
                let p = &self.params[i];
                let n = p.elem_count();
                let dst = &mut flat[off..off + n];
                match p.grad() {
                    Some(g) if g.dtype() == DType::F32 => {
                        g.with_f32_slice(|s| dst.copy_from_slice(s)).expect("f32");
                    }
                    Some(g) => dst.copy_from_slice(&g.to_dtype(DType::F32).to_vec::<f32>()),
                    None => dst.fill(0.0),
                }
                off += n;
            }
            let what = format!("the all-reduce of gradient bucket {b} ({:.2} MB)", flat.len() as f64 * 4e-6);
            let done: Option<Box<dyn FnOnce() + Send>> = self.record.then(|| {
                let ev = Arc::clone(&self.events);
                Box::new(move || ev.lock().unwrap_or_else(|e| e.into_inner()).push(Event::BucketReduced { bucket: b }))
                    as Box<dyn FnOnce() + Send>
            });
            let kind = if self.bf16 { Kind::SumBf16 } else { Kind::Sum };
            let rx = self.group.submit(kind, Payload::F32Into(flat, out), what, done);
            self.event(Event::BucketLaunched { bucket: b });
            st.pending.push((b, rx));
            st.next += 1;
        }
    }

    /// End of backward: sends what is left, waits, writes the means back.
    fn finish(&self) -> Result<()> {
        if !self.sync.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !st.active {
            return Ok(());
        }
        self.event(Event::BackwardEnd);
        for i in 0..self.params.len() {
            if !st.ready[i] {
                st.ready[i] = true;
                st.count[self.bucket_of[i]] += 1;
            }
        }
        self.launch_ready(&mut st);
        let pending = std::mem::take(&mut st.pending);
        st.ready.iter_mut().for_each(|r| *r = false);
        st.count.iter_mut().for_each(|c| *c = 0);
        (st.next, st.active) = (0, false);
        drop(st);
        let inv = 1.0 / self.group.world_size() as f32;
        for (b, rx) in pending {
            let Payload::F32Into(send, sum) = self.group.wait(rx, &format!("the all-reduce of gradient bucket {b}"))?
            else {
                unreachable!("a bucket's sum returns its buffers")
            };
            let mut off = 0;
            for &i in &self.buckets[b] {
                let p = &self.params[i];
                let n = p.elem_count();
                let src = &sum[off..off + n];
                off += n;
                // In place into the gradient's own buffer when it can be.
                let written = p.grad().filter(|g| g.dtype() == DType::F32 && g.device().is_cpu()).is_some_and(|g| {
                    g.update_f32("gradient all-reduce", |d| d.iter_mut().zip(src).for_each(|(d, s)| *d = s * inv))
                        .is_ok()
                });
                if !written {
                    let mean: Vec<f32> = src.iter().map(|x| x * inv).collect();
                    let g = Tensor::from_vec(mean, p.dims().to_vec()).to_dtype(p.dtype());
                    let g = g
                        .to_device(p.device())
                        .map_err(|e| DistributedError::Invalid(format!("gradient write-back: {e}")))?;
                    p.set_grad(Some(g));
                }
            }
            self.state.lock().unwrap_or_else(|e| e.into_inner()).buffers[b] = Some((send, sum));
        }
        Ok(())
    }
}
