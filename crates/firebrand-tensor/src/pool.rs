//! A cache of large `f32` buffers.
//!
//! Freshly `mmap`ed memory costs a page fault per 4 KiB on first touch, and
//! glibc returns large blocks to the OS on free, so a training step that
//! allocates a few megabytes per op spends most of its time in the kernel
//! (measured: a 1024x2048 softmax took 8.2 ms with plain allocation, 2.8 ms
//! with memory kept; see `docs/benchmarks.md`). Buffers of at least
//! [`POOL_MIN_LEN`] elements are therefore recycled: dropping a [`CpuStorage`](crate::CpuStorage)
//! returns its buffer here, and kernels take their outputs from here.
//! Requests match on exact capacity (training loops repeat their sizes).

use std::collections::HashMap;
use std::sync::Mutex;

/// Buffers shorter than this go straight to the allocator.
pub const POOL_MIN_LEN: usize = 1 << 14;
/// The pool keeps at most this many bytes; beyond it, freed buffers are released.
const POOL_MAX_BYTES: usize = 1 << 31;
/// At most this many idle buffers of one size.
const PER_SIZE_MAX: usize = 32;

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
            let v = p.bufs.get_mut(&len).and_then(|b| b.pop());
            if let Some(v) = &v {
                p.bytes -= v.capacity() * 4;
            }
            v
        });
        if let Some(mut v) = hit {
            // SAFETY: capacity == len and every element was initialized by its previous owner.
            unsafe { v.set_len(len) };
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
pub fn recycle_f32(v: Vec<f32>) {
    let cap = v.capacity();
    if cap < POOL_MIN_LEN || v.len() != cap {
        return;
    }
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

    #[test]
    fn recycles_exact_sizes_and_zeroes_on_request() {
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
