//! Firebrand's GPU device: the [`Backend`](firebrand_tensor::backend::Backend)
//! primitives as WGSL compute shaders on wgpu (Vulkan or GL).
//!
//! Users do not name this crate: with the facade's `wgpu` feature,
//! `Device::Wgpu(n)` is the n-th adapter of [`adapters`], opened and
//! registered the first time a tensor goes there (`Tensor::to_device`).
//! Each storage is a wgpu buffer from a pool by size class; each op records
//! one or a few compute dispatches into a pending command buffer, submitted
//! every 64 dispatches or when something is read back (`to_vec`, `item`,
//! `firebrand::synchronize`), never waited for per op.
//!
//! Every core primitive of the trait has a kernel here (strided copies,
//! dtype conversion, the unary table and its backward, broadcasting binary
//! ops, reductions, batched matmul, softmax, the index ops with a range
//! check, concat, where, im2col/col2im, pooling), and of the fused ones
//! layer norm, batch norm, the LSTM cell, the direct depthwise convolution,
//! the convolution epilogue, `channel_affine` and attention
//! (FlashAttention-2's tiling, forward and backward). The inference 1x1
//! convolution runs as its composite (`Backend::has_fused`). Nothing falls
//! back to the CPU.
//!
//! Storages hold `f32`, `i64`, `i32` and `bool`, on which the kernels
//! compute, and `f16`/`bf16` two to a word: stored, copied and converted on
//! the device (`to_dtype`), computed on after conversion to `f32`.
//!
//! ```no_run
//! for a in firebrand_wgpu::adapters() {
//!     println!("{}: {} ({}, {})", a.device, a.name, a.backend, a.device_type);
//! }
//! ```
#![warn(missing_docs)]

mod attention_ops;
mod backend;
mod fused_ops;
mod gpu;
mod index_ops;
mod kernels;
mod window_ops;

pub use backend::{WgpuBackend, WgpuStorage};
use firebrand_tensor::{Device, Result};
use std::sync::Mutex;

/// One adapter as [`adapters`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSummary {
    /// The device it is: `Device::Wgpu(n)`.
    pub device: Device,
    /// The adapter's name (`llvmpipe (LLVM 15.0.6, 256 bits)` for lavapipe).
    pub name: String,
    /// Vulkan or GL.
    pub backend: String,
    /// Discrete, integrated, virtual, CPU or other.
    pub device_type: String,
}

/// The adapters this process can use, in `Device::Wgpu(n)` order (Vulkan
/// first, discrete GPUs before integrated ones and CPU drivers).
pub fn adapters() -> Vec<AdapterSummary> {
    gpu::adapter_list()
        .iter()
        .enumerate()
        .map(|(n, a)| {
            let i = a.get_info();
            AdapterSummary {
                device: Device::Wgpu(n),
                name: i.name,
                backend: format!("{:?}", i.backend),
                device_type: format!("{:?}", i.device_type),
            }
        })
        .collect()
}

/// Opens adapter `n` and registers its backend for `Device::Wgpu(n)`
/// (once; later calls return at once).
///
/// # Errors
/// `DeviceUnavailable` when there is no adapter `n` (it names what was tried
/// and what to install) or the adapter refuses a device.
pub fn init(n: usize) -> Result<()> {
    static OPENED: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
    if opened.contains(&n) {
        return Ok(());
    }
    let gpu = gpu::Gpu::open(n)?;
    firebrand_tensor::backend::register_backend(Box::new(WgpuBackend { gpu }));
    opened.push(n);
    Ok(())
}
