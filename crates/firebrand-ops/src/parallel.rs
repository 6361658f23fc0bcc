//! When to use more than the calling thread.

/// Elementwise work below this many elements stays on the calling thread:
/// waking the pool costs more than it saves.
pub const PAR_MIN_ELEMS: usize = 1 << 15;

/// Splits `out` into row-aligned chunks and runs `f(first_row, chunk)` on each,
/// in parallel when `rows * row_len` is large enough.
pub fn for_rows<T: Send>(out: &mut [T], row_len: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    use rayon::prelude::*;
    let row_len = row_len.max(1);
    let rows = out.len() / row_len;
    let threads = rayon::current_num_threads();
    if out.len() < PAR_MIN_ELEMS || threads == 1 || rows < 2 {
        f(0, out);
        return;
    }
    let rows_per = rows.div_ceil(threads * 4).max(PAR_MIN_ELEMS / (4 * row_len)).max(1);
    out.par_chunks_mut(rows_per * row_len).enumerate().for_each(|(i, chunk)| f(i * rows_per, chunk));
}
