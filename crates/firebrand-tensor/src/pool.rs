//! A cache of large `f32` buffers.
//!
//! Freshly `mmap`ed memory costs a page fault per 4 KiB on first touch, and
//! glibc returns large blocks to the OS on free, so a training step that
//! allocates a few megabytes per op spends most of its time in the kernel
//! (measured: a 1024x2048 softmax took 8.2 ms with plain allocation, 2.8 ms
//! with memory kept; see `docs/benchmarks.md`). Buffers of at least
//! [`POOL_MIN_LEN`] elements are therefore recycled: dropping a [`CpuStorage`](crate::CpuStorage)
//! returns its buffer here, and kernels take their outputs from here.
//!
//! Requests match on exact capacity: training and inference loops repeat
//! their sizes, and taking larger buffers measured slower (MobileNetV2
//! inference lost 4% to the tails it then had to fill). What matters is
//! keeping enough: MobileNetV2's training step holds about 180 buffers of
//! one size at once and hundreds of sizes in all, so the pool keeps up to
//! [`PER_SIZE_MAX`] buffers of a size and [`POOL_MAX_BYTES`] in all (it was
//! 32 and 2 GiB, and that step spent a third of its time faulting fresh
//! pages). Kernels return their scratch copies here too. [`clear_pool`]
//! empties it (PyTorch's `empty_cache`).

use std::collections::HashMap;
use std::sync::Mutex;

/// Buffers shorter than this go straight to the allocator.
pub const POOL_MIN_LEN: usize = 1 << 14;
/// The pool keeps at most this many bytes; beyond it, freed buffers are released.
pub const POOL_MAX_BYTES: usize = 1 << 34;
/// At most this many idle buffers of one size (MobileNetV2's training step
/// holds about 180 of one size at once).
pub const PER_SIZE_MAX: usize = 256;

/// Idle buffers by capacity.
struct Pool {
    bufs: HashMap<usize, Vec<Vec<f32>>>,
    bytes: usize,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

fn with_pool<R>(f: impl FnOnce(&mut Pool) -> R) -> R {
    let mut g = POOL.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(|| Pool { bufs: HashMap::new(), bytes: 0 }))
}

/// A buffer of `len` elements whose contents are unspecified (every element
/// is some valid `f32`, stale or zero): for kernels that overwrite all of it.
pub fn take_f32(len: usize) -> Vec<f32> {
    if len >= POOL_MIN_LEN {
        let hit = with_pool(|p| {
            let v = p.bufs.get_mut(&len)?.pop()?;
            p.bytes -= len * 4;
            Some(v)
        });
        if let Some(v) = hit {
            debug_assert!(v.capacity() == len && v.len() == len);
            return v;
        }
    }
    vec![0.0; len]
}

/// A zeroed buffer of `len` elements.
pub fn zeros_f32(len: usize) -> Vec<f32> {
    let mut v = take_f32(len);
    if len >= POOL_MIN_LEN {
        v.fill(0.0);
    }
    v
}

/// Gives a buffer back for reuse (released if the pool is full or it is small).
pub fn recycle_f32(mut v: Vec<f32>) {
    let cap = v.capacity();
    if cap < POOL_MIN_LEN {
        return;
    }
    // The pool holds only buffers initialized up to capacity, served to
    // requests of exactly that length: a shorter one gets its tail filled.
    v.resize(cap, 0.0);
    with_pool(|p| {
        let list = p.bufs.entry(cap).or_default();
        if p.bytes + cap * 4 <= POOL_MAX_BYTES && list.len() < PER_SIZE_MAX {
            p.bytes += cap * 4;
            list.push(v);
        }
    });
}

/// Releases every cached buffer to the allocator (PyTorch's `empty_cache`).
pub fn clear_pool() {
    with_pool(|p| {
        p.bufs.clear();
        p.bytes = 0;
    });
}

/// Bytes currently held by the pool.
pub fn pool_bytes() -> usize {
    with_pool(|p| p.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool is global: its tests take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn keeps_hundreds_of_one_size_and_completes_short_buffers() {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        clear_pool();
        let n = 100_003;
        let bufs: Vec<Vec<f32>> = (0..200).map(|_| take_f32(n)).collect();
        bufs.into_iter().for_each(recycle_f32);
        assert_eq!(pool_bytes(), 200 * n * 4, "all 200 kept");
        let mut v = take_f32(n);
        v.fill(3.0);
        recycle_f32(v);
        // A buffer shorter than its capacity is completed before it is pooled.
        let mut short = Vec::with_capacity(n);
        short.extend(std::iter::repeat_n(1.0f32, 10));
        recycle_f32(short);
        let all: Vec<Vec<f32>> = (0..201).map(|_| take_f32(n)).collect();
        assert!(all.iter().all(|b| b.len() == n));
        assert!(all.iter().any(|b| b[..10] == [1.0; 10] && b[10..].iter().all(|&x| x == 0.0)));
        clear_pool();
    }

    #[test]
    fn recycles_exact_sizes_and_zeroes_on_request() {
        let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let n = POOL_MIN_LEN + 3;
        let mut v = take_f32(n);
        v.fill(7.0);
        recycle_f32(v);
        let z = zeros_f32(n);
        assert_eq!(z.len(), n);
        assert!(z.iter().all(|&x| x == 0.0));
        recycle_f32(z);
        assert!(pool_bytes() >= n * 4);
        clear_pool();
        // Small buffers bypass the pool.
        recycle_f32(vec![1.0; 8]);
        assert_eq!(take_f32(8), vec![0.0; 8]);
    }
}
