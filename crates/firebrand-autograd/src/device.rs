//! Device-wide calls: waiting for a device's queue, and its memory use.

use crate::tensor::backend_of;
use firebrand_tensor::backend::MemoryStats;
use firebrand_tensor::{Device, Result};

/// Waits until every op submitted to `device` has finished (PyTorch's
/// `torch.cuda.synchronize()`): time device work between two calls. Ops on
/// a device are queued and run while the host goes on; reading a result
/// (`to_vec`, `item`) waits for it anyway.
///
/// ```
/// use firebrand_autograd::{Device, synchronize};
/// synchronize(Device::Cpu).unwrap(); // the CPU computes eagerly
/// ```
///
/// A device checks indices as its kernels run, so an index op's
/// `IndexOutOfRange` reaches the host at the next synchronization: here as
/// an error, or at a readback as a panic naming it (as CUDA's device-side
/// asserts do in PyTorch).
///
/// # Errors
/// When the device is unavailable or was lost, or an index op since the
/// last synchronization met an index out of range (`IndexOutOfRange`).
pub fn synchronize(device: Device) -> Result<()> {
    backend_of(device, "synchronize")?.synchronize()
}

/// The bytes tensors hold on `device` now and at most since it opened (or
/// since [`reset_peak_memory`]); `None` for the CPU, which does not track
/// them (PyTorch's `torch.cuda.memory_allocated` / `max_memory_allocated`).
///
/// # Errors
/// When the device is unavailable.
pub fn memory_stats(device: Device) -> Result<Option<MemoryStats>> {
    Ok(backend_of(device, "memory_stats")?.memory())
}

/// Starts `device`'s peak memory again from what is held now.
///
/// # Errors
/// When the device is unavailable.
pub fn reset_peak_memory(device: Device) -> Result<()> {
    backend_of(device, "reset_peak_memory")?.reset_peak_memory();
    Ok(())
}
