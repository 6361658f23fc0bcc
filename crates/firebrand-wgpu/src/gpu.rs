//! One opened adapter: its device and queue, the compiled pipelines, and
//! buffer allocation, upload, dispatch and readback.

use firebrand_tensor::{Device, Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use wgpu::util::DeviceExt;

/// Threads per workgroup of the one-dimensional kernels.
pub(crate) const WG: u32 = 256;
/// Outputs per thread of the elementwise kernels.
pub(crate) const PER_THREAD: u32 = 4;
/// Most workgroups along one dispatch dimension (WebGPU's guaranteed limit;
/// the kernels index rows by `wid.x + wid.y · 65535`).
const MAX_GROUPS: u32 = 65_535;
/// Bytes of freed tensor buffers the pool keeps for reuse, at most.
const POOL_MAX_BYTES: u64 = 512 << 20;
/// Dispatches recorded into one command buffer before it is submitted
/// (readbacks and `synchronize` submit what is pending first).
const FLUSH_EVERY: usize = 64;
/// How every tensor buffer may be used.
const STORAGE_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

/// The process's wgpu instance (Vulkan and GL backends).
pub(crate) fn instance() -> &'static wgpu::Instance {
    static INSTANCE: OnceLock<wgpu::Instance> = OnceLock::new();
    INSTANCE.get_or_init(|| {
        wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN | wgpu::Backends::GL,
            ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
        })
    })
}

/// The adapters in the order `Device::Wgpu(n)` numbers them.
pub(crate) fn adapter_list() -> &'static [wgpu::Adapter] {
    static ADAPTERS: OnceLock<Vec<wgpu::Adapter>> = OnceLock::new();
    ADAPTERS.get_or_init(|| {
        let mut all = pollster::block_on(instance().enumerate_adapters(wgpu::Backends::VULKAN | wgpu::Backends::GL));
        // Vulkan before GL, discrete GPUs first: the fastest adapter is wgpu:0.
        let rank = |a: &wgpu::Adapter| {
            let i = a.get_info();
            let kind = match i.device_type {
                wgpu::DeviceType::DiscreteGpu => 0,
                wgpu::DeviceType::IntegratedGpu => 1,
                wgpu::DeviceType::VirtualGpu => 2,
                wgpu::DeviceType::Cpu => 3,
                wgpu::DeviceType::Other => 4,
            };
            (i.backend != wgpu::Backend::Vulkan, kind)
        };
        all.sort_by_key(rank);
        all
    })
}

/// An opened adapter.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) index: usize,
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    /// Bytes in tensors' buffers now, and the most at once.
    live: AtomicU64,
    peak: AtomicU64,
    /// Freed tensor buffers by size class, and their bytes.
    pool: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    pooled: AtomicU64,
    /// Dispatches recorded but not yet submitted, with the bind groups (and
    /// so the buffers) they use, kept alive until the submission.
    pending: Mutex<Option<(wgpu::CommandEncoder, Vec<wgpu::BindGroup>)>>,
    /// The index kernels' range check, shared by all of them: `[set, low,
    /// high, size, op]` of the first bad index since the last readback.
    index_flag: wgpu::Buffer,
    /// Whether an index kernel was recorded since the flag was last read.
    index_recorded: AtomicBool,
}

/// The ops of the index kernels by the code they record in the range
/// check's flag (the last word of their params).
pub(crate) const INDEX_OPS: [&str; 5] = ["an index op", "index_select", "gather", "index_add", "scatter_add"];

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wgpu:{} ({})", self.index, self.info.name)
    }
}

impl Gpu {
    /// Opens adapter `index`.
    pub(crate) fn open(index: usize) -> Result<Arc<Gpu>> {
        let device = Device::Wgpu(index);
        let adapters = adapter_list();
        let Some(adapter) = adapters.get(index) else {
            return Err(Error::DeviceUnavailable {
                op: "wgpu",
                device,
                msg: format!(
                    "{} wgpu adapter(s) found (Vulkan and GL were tried); install a Vulkan driver \
                     (Debian: `apt-get install mesa-vulkan-drivers` gives lavapipe, a CPU one)",
                    adapters.len()
                ),
            });
        };
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("firebrand"),
            required_limits: wgpu::Limits {
                max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
                max_buffer_size: limits.max_buffer_size,
                max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage.min(8),
                ..wgpu::Limits::downlevel_defaults()
            },
            ..Default::default()
        };
        let (dev, queue) = pollster::block_on(adapter.request_device(&desc)).map_err(|e| Error::DeviceUnavailable {
            op: "wgpu",
            device,
            msg: format!("request_device: {e}"),
        })?;
        let index_flag = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("index range check"),
            size: 20,
            usage: STORAGE_USAGE,
            mapped_at_creation: false,
        });
        Ok(Arc::new(Gpu {
            device: dev,
            queue,
            info: adapter.get_info(),
            index,
            pipelines: Mutex::default(),
            live: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            pool: Mutex::default(),
            pooled: AtomicU64::new(0),
            pending: Mutex::default(),
            index_flag,
            index_recorded: AtomicBool::new(false),
        }))
    }

    /// The device this adapter is.
    pub(crate) fn id(&self) -> Device {
        Device::Wgpu(self.index)
    }

    /// `make()`'s buffer, or a typed error naming `what` and the device when
    /// the device ran out of memory making it.
    fn out_of_memory_checked(
        &self,
        op: &'static str,
        what: impl FnOnce() -> String,
        make: impl FnOnce() -> wgpu::Buffer,
    ) -> Result<wgpu::Buffer> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buf = make();
        match pollster::block_on(scope.pop()) {
            Some(e) => Err(Error::msg(op, format!("{}: out of device memory {}: {e}", self.id(), what()))),
            None => Ok(buf),
        }
    }

    /// Counts `bytes` of a tensor's buffer as held (until [`Gpu::release`]).
    pub(crate) fn hold(&self, bytes: u64) {
        let now = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    /// A tensor's buffer of `bytes` was dropped.
    pub(crate) fn release(&self, bytes: u64) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Live and peak bytes of tensors.
    pub(crate) fn memory(&self) -> (u64, u64) {
        (self.live.load(Ordering::Relaxed), self.peak.load(Ordering::Relaxed))
    }

    /// The peak starts again from the live bytes.
    pub(crate) fn reset_peak(&self) {
        self.peak.store(self.live.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// The size class of a request: rounded up to an eighth of its power of
    /// two (at least 256 bytes), so a reused buffer wastes at most 12.5%.
    fn class_of(bytes: u64) -> u64 {
        let step = (bytes.max(4).next_power_of_two() / 8).max(256);
        bytes.max(4).next_multiple_of(step)
    }

    /// A tensor's buffer of at least `bytes`: a freed one of its size class
    /// from the pool, or a new one. With `zeroed`, a reused buffer is
    /// cleared first (in order with the recorded work; new ones start at
    /// zero). Buffers freed while recorded work still reads them are safe
    /// to reuse: the device runs work in the order it was recorded.
    pub(crate) fn take_buffer(&self, bytes: u64, zeroed: bool, op: &'static str) -> Result<wgpu::Buffer> {
        let class = Gpu::class_of(bytes);
        let reused = self.pool.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&class).and_then(Vec::pop);
        let Some(buf) = reused else {
            return self.alloc(class, op).or_else(|e| {
                // Out of memory: give the pool's buffers back and try once more.
                self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
                self.pooled.store(0, Ordering::Relaxed);
                self.alloc(class, op).map_err(|_| e)
            });
        };
        self.pooled.fetch_sub(class, Ordering::Relaxed);
        if zeroed {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let (enc, _) =
                pending.get_or_insert_with(|| (self.device.create_command_encoder(&Default::default()), Vec::new()));
            enc.clear_buffer(&buf, 0, None);
        }
        Ok(buf)
    }

    /// A freed tensor buffer: kept for reuse if it is of a size class and
    /// the pool has room, else released.
    pub(crate) fn recycle(&self, buf: wgpu::Buffer) {
        let size = buf.size();
        if Gpu::class_of(size) != size || self.pooled.load(Ordering::Relaxed) + size > POOL_MAX_BYTES {
            return;
        }
        self.pooled.fetch_add(size, Ordering::Relaxed);
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).entry(size).or_default().push(buf);
    }

    /// Submits the recorded dispatches. The lock is held through the
    /// submission, so that submissions keep the order of recording across
    /// threads.
    pub(crate) fn flush(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((enc, _)) = pending.take() {
            self.queue.submit([enc.finish()]);
        }
    }

    /// Waits for the queue (after submitting what is recorded), then
    /// returns the first index error an index kernel recorded since the last
    /// readback, if any.
    pub(crate) fn wait(&self) -> Result<()> {
        self.flush();
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::msg("synchronize", format!("{}: {e}", self.id())))?;
        if self.index_recorded.swap(false, Ordering::AcqRel) {
            let flag = self.read_raw(&[(&self.index_flag, 5)]).pop().expect("one buffer read");
            if let Some(e) = self.index_error(&flag) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// The range check's buffer, for an index kernel about to be recorded.
    pub(crate) fn index_flag(&self) -> &wgpu::Buffer {
        self.index_recorded.store(true, Ordering::Release);
        &self.index_flag
    }

    /// The error in a read range-check flag, if it is set; the flag is
    /// cleared (recorded, in order) for the kernels after.
    fn index_error(&self, flag: &[u32]) -> Option<Error> {
        if flag[0] == 0 {
            return None;
        }
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let (enc, _) =
                pending.get_or_insert_with(|| (self.device.create_command_encoder(&Default::default()), Vec::new()));
            enc.clear_buffer(&self.index_flag, 0, None);
        }
        let index = (flag[1] as u64 | (flag[2] as u64) << 32) as i64;
        let op = INDEX_OPS.get(flag[4] as usize).copied().unwrap_or(INDEX_OPS[0]);
        Some(Error::IndexOutOfRange { op, index, size: flag[3] as usize })
    }

    /// The largest buffer a kernel can bind, in bytes.
    pub(crate) fn max_buffer_bytes(&self) -> u64 {
        let l = self.device.limits();
        l.max_buffer_size.min(l.max_storage_buffer_binding_size)
    }

    /// A new storage buffer of `bytes` (at least 4), or a typed error when
    /// it is larger than a kernel can bind or the device is out of memory.
    pub(crate) fn alloc(&self, bytes: u64, op: &'static str) -> Result<wgpu::Buffer> {
        let size = bytes.max(4).next_multiple_of(4);
        self.check_size(size, op)?;
        self.out_of_memory_checked(
            op,
            || format!("allocating {size} bytes"),
            || {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size,
                    usage: STORAGE_USAGE,
                    mapped_at_creation: false,
                })
            },
        )
    }

    fn check_size(&self, size: u64, op: &'static str) -> Result<()> {
        let max = self.max_buffer_bytes();
        if size > max {
            return Err(Error::msg(
                op,
                format!("{}: a buffer of {size} bytes is larger than the {max} bytes a kernel can bind", self.id()),
            ));
        }
        Ok(())
    }

    /// A storage buffer holding `words`.
    pub(crate) fn upload_words(&self, words: &[u32], op: &'static str) -> Result<wgpu::Buffer> {
        if words.is_empty() {
            return self.alloc(4, op);
        }
        self.check_size(words.len() as u64 * 4, op)?;
        self.out_of_memory_checked(
            op,
            || format!("uploading {} words", words.len()),
            || {
                self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: None,
                    contents: bytemuck::cast_slice(words),
                    usage: STORAGE_USAGE,
                })
            },
        )
    }

    /// The first `words` 32-bit words of `buf`, read back (waits for the
    /// queue). An index error recorded since the last readback is reported
    /// here, as a panic naming it: the device checks indices as it runs, so
    /// an index op's error reaches the host at the next readback (as with
    /// CUDA's device-side asserts); `firebrand::synchronize` returns it as
    /// an error instead.
    pub(crate) fn read_words(&self, buf: &wgpu::Buffer, words: usize) -> Vec<u32> {
        if !self.index_recorded.swap(false, Ordering::AcqRel) {
            return self.read_raw(&[(buf, words)]).pop().expect("one buffer read");
        }
        // The flag comes back in the same submission.
        let mut both = self.read_raw(&[(buf, words), (&self.index_flag, 5)]);
        let flag = both.pop().expect("two buffers read");
        if let Some(e) = self.index_error(&flag) {
            panic!(
                "{e} (recorded on {} by an earlier op: the device reports index errors at the next \
                 readback; `firebrand::synchronize()` returns them as errors)",
                self.id()
            );
        }
        both.pop().expect("two buffers read")
    }

    /// The first words of each buffer, read back in one submission after
    /// everything recorded (waits for the queue).
    fn read_raw(&self, reads: &[(&wgpu::Buffer, usize)]) -> Vec<Vec<u32>> {
        let total: usize = reads.iter().map(|r| r.1).sum();
        if total == 0 {
            return reads.iter().map(|_| Vec::new()).collect();
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: (total * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            // The copies go after everything recorded, in the same submission.
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let (mut enc, _) =
                pending.take().unwrap_or_else(|| (self.device.create_command_encoder(&Default::default()), Vec::new()));
            let mut at = 0;
            for &(buf, words) in reads {
                if words > 0 {
                    enc.copy_buffer_to_buffer(buf, 0, &staging, at, (words * 4) as u64);
                }
                at += (words * 4) as u64;
            }
            self.queue.submit([enc.finish()]);
        }
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).expect("wgpu: device lost while reading back");
        rx.recv().expect("wgpu: map callback").expect("wgpu: mapping the readback buffer");
        let all = bytemuck::cast_slice::<u8, u32>(&slice.get_mapped_range().expect("wgpu: the mapped readback range"))
            .to_vec();
        staging.unmap();
        let mut at = 0;
        reads
            .iter()
            .map(|&(_, words)| {
                at += words;
                all[at - words..at].to_vec()
            })
            .collect()
    }

    /// The pipeline of the WGSL `source` (entry point `main`), compiled once.
    fn pipeline(&self, source: &str) -> Arc<wgpu::ComputePipeline> {
        let mut cache = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(source) {
            return p.clone();
        }
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: None,
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let p = Arc::new(self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        }));
        cache.insert(source.to_string(), p.clone());
        p
    }

    /// Runs `source` over `groups` workgroups (`[x, y, z]`) with `buffers`
    /// bound at 0, 1, … of group 0: recorded into the pending command
    /// buffer, which is submitted every [`FLUSH_EVERY`] dispatches (or at a
    /// readback), never waited for here.
    pub(crate) fn dispatch(&self, source: &str, buffers: &[&wgpu::Buffer], groups: [u32; 3]) {
        if groups.contains(&0) {
            return;
        }
        let pipeline = self.pipeline(source);
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect();
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &entries,
        });
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (enc, binds) =
            pending.get_or_insert_with(|| (self.device.create_command_encoder(&Default::default()), Vec::new()));
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        binds.push(bind);
        if binds.len() >= FLUSH_EVERY
            && let Some((enc, _)) = pending.take()
        {
            self.queue.submit([enc.finish()]);
        }
    }

    /// Workgroups for `n` threads of [`WG`] each, spread over x and y so that
    /// neither passes the limit; kernels index `gid.x + gid.y · nwg.x · WG`.
    pub(crate) fn groups_1d(n: usize) -> [u32; 3] {
        Gpu::spread(n.div_ceil((WG * PER_THREAD) as usize) as u32)
    }

    /// `groups` workgroups spread over x and y so that neither passes the limit.
    pub(crate) fn spread(groups: u32) -> [u32; 3] {
        if groups <= MAX_GROUPS { [groups, 1, 1] } else { [MAX_GROUPS, groups.div_ceil(MAX_GROUPS), 1] }
    }
}
