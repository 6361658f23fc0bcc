//! Elementwise binary ops with NumPy broadcasting (operand layouts are already
//! broadcast to the output shape: broadcast dims have stride 0).

pub use firebrand_tensor::op::BinaryOp;

use crate::parallel::{PAR_MIN_ELEMS, num_threads, par_chunks_mut};
use crate::strided::{coalesce, for_each_run};
use firebrand_tensor::Layout;
use firebrand_tensor::pool::take_f32;

macro_rules! dispatch {
    ($op:expr, $f:ident, $($arg:expr),*) => {
        match $op {
            BinaryOp::Add => $f(|a: f32, b: f32| a + b, $($arg),*),
            BinaryOp::Sub => $f(|a: f32, b: f32| a - b, $($arg),*),
            BinaryOp::Mul => $f(|a: f32, b: f32| a * b, $($arg),*),
            BinaryOp::Div => $f(|a: f32, b: f32| a / b, $($arg),*),
            op => $f(move |a: f32, b: f32| op.apply(a, b), $($arg),*),
        }
    };
}

/// `out[i] = op(lhs[i], rhs[i])` over the elements of two layouts of the same
/// shape (broadcast dims have stride 0), in row-major order.
///
/// # Panics
/// When the layouts' shapes differ.
pub fn binary_map(op: BinaryOp, lhs: &[f32], ll: &Layout, rhs: &[f32], rl: &Layout) -> Vec<f32> {
    assert_eq!(ll.dims(), rl.dims(), "binary_map: layouts must have the same (broadcast) shape");
    dispatch!(op, map_with, lhs, ll, rhs, rl)
}

fn map_with<F: Fn(f32, f32) -> f32 + Sync + Send + Copy>(
    f: F,
    lhs: &[f32],
    ll: &Layout,
    rhs: &[f32],
    rl: &Layout,
) -> Vec<f32> {
    let n = ll.elem_count();
    let mut out = take_f32(n);
    if n == 0 {
        return out;
    }
    if let (true, Some(ra), Some(rb)) = (n < PAR_MIN_ELEMS, ll.contiguous_range(), rl.contiguous_range()) {
        // Small and dense: one loop, no index bookkeeping.
        out.iter_mut().zip(&lhs[ra]).zip(&rhs[rb]).for_each(|((o, &a), &b)| *o = f(a, b));
        return out;
    }
    let (dims, strides) = coalesce(ll.dims(), &[ll.strides(), rl.strides()]);
    let inner = *dims.last().unwrap();
    let (sa, sb) = (*strides[0].last().unwrap(), *strides[1].last().unwrap());
    // One run: `inner` outputs from positions pa, pb with inner strides sa, sb.
    let run = |o: &mut [f32], pa: usize, pb: usize| {
        let len = o.len();
        match (sa, sb) {
            (1, 1) => {
                o.iter_mut().zip(&lhs[pa..pa + len]).zip(&rhs[pb..pb + len]).for_each(|((o, &a), &b)| *o = f(a, b))
            }
            (1, 0) => {
                let b = rhs[pb];
                o.iter_mut().zip(&lhs[pa..pa + len]).for_each(|(o, &a)| *o = f(a, b))
            }
            (0, 1) => {
                let a = lhs[pa];
                o.iter_mut().zip(&rhs[pb..pb + len]).for_each(|(o, &b)| *o = f(a, b))
            }
            _ => o.iter_mut().enumerate().for_each(|(i, o)| *o = f(lhs[pa + i * sa], rhs[pb + i * sb])),
        }
    };
    if dims.len() == 1 {
        // A single run: split it across threads when large.
        let (oa, ob) = (ll.offset(), rl.offset());
        if n >= PAR_MIN_ELEMS && num_threads() > 1 {
            let chunk = n.div_ceil(num_threads() * 4).max(PAR_MIN_ELEMS / 4);
            par_chunks_mut(&mut out, chunk, |c, o| run(o, oa + c * chunk * sa, ob + c * chunk * sb));
        } else {
            run(&mut out, oa, ob);
        }
        return out;
    }
    if n >= PAR_MIN_ELEMS && num_threads() > 1 {
        // Parallel over the runs (rows of the innermost dim).
        let rank = dims.len();
        par_chunks_mut(&mut out, inner, |r, o| {
            let (mut pa, mut pb, mut rem) = (ll.offset(), rl.offset(), r);
            for d in (0..rank - 1).rev() {
                let i = rem % dims[d];
                rem /= dims[d];
                pa += i * strides[0][d];
                pb += i * strides[1][d];
            }
            run(o, pa, pb);
        });
    } else {
        let mut chunks = out.chunks_mut(inner);
        for_each_run(&dims, &strides, &[ll.offset(), rl.offset()], |pos| run(chunks.next().unwrap(), pos[0], pos[1]));
    }
    out
}

/// `dst[i] = op(dst[i], src[i])` for contiguous buffers of the same length
/// (the in-place form used by gradient accumulation and optimizers).
///
/// # Panics
/// When the lengths differ.
pub fn binary_assign(op: BinaryOp, dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "binary_assign: length mismatch");
    fn go<F: Fn(f32, f32) -> f32 + Sync + Send + Copy>(f: F, dst: &mut [f32], src: &[f32]) {
        if dst.len() >= PAR_MIN_ELEMS && num_threads() > 1 {
            const CHUNK: usize = PAR_MIN_ELEMS / 2;
            par_chunks_mut(dst, CHUNK, |c, d| d.iter_mut().zip(&src[c * CHUNK..]).for_each(|(d, &s)| *d = f(*d, s)));
        } else {
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d = f(*d, s));
        }
    }
    dispatch!(op, go, dst, src)
}

#[cfg(test)]
mod tests {
    use super::*;
    use firebrand_tensor::Shape;

    fn reference(op: BinaryOp, a: &[f32], la: &Layout, b: &[f32], lb: &Layout) -> Vec<f32> {
        la.strided_index().zip(lb.strided_index()).map(|(i, j)| op.apply(a[i], b[j])).collect()
    }

    #[test]
    fn broadcast_and_strided_against_reference() {
        let a: Vec<f32> = (0..300).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let b: Vec<f32> = (0..300).map(|i| (i as f32 * 0.11).cos() + 1.5).collect();
        let out = Shape::from([4, 5, 3]);
        let layouts = [
            Layout::contiguous([4, 5, 3]),
            Layout::contiguous([5, 1]).broadcast_as(&out).unwrap(),
            Layout::contiguous([3]).broadcast_as(&out).unwrap(),
            Layout::contiguous([3, 5, 4]).permute(&[2, 1, 0]).unwrap(),
            Layout::contiguous(()).broadcast_as(&out).unwrap(),
            Layout::contiguous([4, 1, 3]).broadcast_as(&out).unwrap(),
        ];
        for op in [
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Pow,
            BinaryOp::Maximum,
            BinaryOp::Lt,
            BinaryOp::Ge,
        ] {
            for la in &layouts {
                for lb in &layouts {
                    let got = binary_map(op, &a, la, &b, lb);
                    let want = reference(op, &a, la, &b, lb);
                    for (g, w) in got.iter().zip(&want) {
                        assert!(g == w || (g.is_nan() && w.is_nan()), "{op:?} {la:?} {lb:?}: {g} vs {w}");
                    }
                }
            }
        }
    }

    #[test]
    fn large_parallel_paths() {
        let n = 70_007; // odd (7 x 10_001), above the parallel threshold
        let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let la = Layout::contiguous([n]);
        let got = binary_map(BinaryOp::Mul, &a, &la, &a, &la);
        assert!(got.iter().enumerate().all(|(i, &g)| g == (i * i) as f32));
        let l2 = Layout::contiguous([7, 10_001]);
        let row = Layout::contiguous([10_001]).broadcast_as(l2.shape()).unwrap();
        let got = binary_map(BinaryOp::Sub, &a, &l2, &a, &row);
        let want = reference(BinaryOp::Sub, &a, &l2, &a, &row);
        assert_eq!(got, want);
        let t = Layout::contiguous([10_001, 7]).transpose(0, 1).unwrap();
        assert_eq!(binary_map(BinaryOp::Add, &a, &t, &a, &l2), reference(BinaryOp::Add, &a, &t, &a, &l2));
        let mut d = a.clone();
        binary_assign(BinaryOp::Add, &mut d, &a);
        assert!(d.iter().enumerate().all(|(i, &g)| g == 2.0 * i as f32));
    }

    #[test]
    fn nan_propagation() {
        assert!(BinaryOp::Maximum.apply(f32::NAN, 1.0).is_nan());
        assert!(BinaryOp::Minimum.apply(1.0, f32::NAN).is_nan());
        assert_eq!(BinaryOp::Eq.apply(f32::NAN, f32::NAN), 0.0);
    }
}
