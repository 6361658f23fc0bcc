//! Kernels for every dtype other than `f32`: integers, `bool` and `f64`
//! (`f16`/`bf16` widen to the `f32` kernels instead). Simple strided loops,
//! written once over the [`Num`] trait; the `f32` kernels elsewhere in this
//! crate are the fast ones, and these are tested against the same scalar
//! semantics ([`BinaryOp::apply`] and the unary table).

use crate::strided::contiguous;
use firebrand_tensor::op::{BinaryOp, ReduceOp, UnaryOp};
use firebrand_tensor::{CpuStorage, DType, Element, Error, Layout, Result};

/// Arithmetic on one element type, with PyTorch's integer semantics
/// (wrapping on overflow; `bool` adds as *or* and multiplies as *and*).
pub trait Num: Element {
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;
    /// Smallest value (`-inf` for floats).
    const LOWEST: Self;
    /// Largest value (`+inf` for floats).
    const HIGHEST: Self;
    /// `a + b`
    fn add(self, b: Self) -> Self;
    /// `a - b`
    fn sub(self, b: Self) -> Self;
    /// `a * b`
    fn mul(self, b: Self) -> Self;
    /// `a / b`; `None` for an integer division by zero.
    fn div(self, b: Self) -> Option<Self>;
    /// `a ^ b`; `None` for an integer raised to a negative power.
    fn pow(self, b: Self) -> Option<Self>;
    /// True for a NaN.
    fn is_nan(self) -> bool {
        false
    }
}

macro_rules! int_num {
    ($($t:ty),*) => {$(
        impl Num for $t {
            const ZERO: Self = 0;
            const ONE: Self = 1;
            const LOWEST: Self = <$t>::MIN;
            const HIGHEST: Self = <$t>::MAX;
            fn add(self, b: Self) -> Self { self.wrapping_add(b) }
            fn sub(self, b: Self) -> Self { self.wrapping_sub(b) }
            fn mul(self, b: Self) -> Self { self.wrapping_mul(b) }
            fn div(self, b: Self) -> Option<Self> { (b != 0).then(|| self.wrapping_div(b)) }
            #[allow(unused_comparisons)]
            fn pow(self, b: Self) -> Option<Self> {
                (b >= 0).then(|| self.wrapping_pow(b.to_i64().min(u32::MAX as i64) as u32))
            }
        }
    )*};
}
int_num!(u8, i8, i32, i64);

macro_rules! float_num {
    ($($t:ty),*) => {$(
        impl Num for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const LOWEST: Self = <$t>::NEG_INFINITY;
            const HIGHEST: Self = <$t>::INFINITY;
            fn add(self, b: Self) -> Self { self + b }
            fn sub(self, b: Self) -> Self { self - b }
            fn mul(self, b: Self) -> Self { self * b }
            fn div(self, b: Self) -> Option<Self> { Some(self / b) }
            fn pow(self, b: Self) -> Option<Self> { Some(self.powf(b)) }
            fn is_nan(self) -> bool { <$t>::is_nan(self) }
        }
    )*};
}
float_num!(f32, f64);

impl Num for bool {
    const ZERO: Self = false;
    const ONE: Self = true;
    const LOWEST: Self = false;
    const HIGHEST: Self = true;
    fn add(self, b: Self) -> Self {
        self | b
    }
    fn sub(self, b: Self) -> Self {
        self ^ b
    }
    fn mul(self, b: Self) -> Self {
        self & b
    }
    fn div(self, b: Self) -> Option<Self> {
        b.then_some(self)
    }
    fn pow(self, b: Self) -> Option<Self> {
        Some(self | !b)
    }
}

/// The larger of two, NaN if either is NaN.
#[inline]
fn nan_max<T: Num>(a: T, b: T) -> T {
    if a.is_nan() || !(b.is_nan() || b > a) { a } else { b }
}

/// The smaller of two, NaN if either is NaN.
#[inline]
fn nan_min<T: Num>(a: T, b: T) -> T {
    if a.is_nan() || !(b.is_nan() || b < a) { a } else { b }
}

/// The elements of `l` in row-major order.
fn dense<T: Num>(x: &[T], l: &Layout) -> Vec<T> {
    match l.contiguous_range() {
        Some(r) => x[r].to_vec(),
        None => contiguous(x, l),
    }
}

/// An elementwise binary op over two layouts of one (broadcast) shape:
/// values of `T`, or `bool` for the comparisons.
///
/// # Errors
/// On an integer division by zero, an integer raised to a negative power,
/// or `bool` subtraction (as PyTorch).
pub fn binary<T: Num>(op: BinaryOp, a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Result<CpuStorage> {
    if T::DTYPE == DType::Bool && op == BinaryOp::Sub {
        return Err(Error::msg("sub", "subtracting bool tensors is not supported; use logical_xor or ne"));
    }
    let (a, b) = (dense(a, la), dense(b, lb));
    let cmp = |f: fn(&T, &T) -> bool| CpuStorage::from_vec(a.iter().zip(&b).map(|(x, y)| f(x, y)).collect());
    let map = |f: fn(T, T) -> T| CpuStorage::from_vec(a.iter().zip(&b).map(|(&x, &y)| f(x, y)).collect());
    let checked = |f: fn(T, T) -> Option<T>, what: &str| -> Result<CpuStorage> {
        let v: Option<Vec<T>> = a.iter().zip(&b).map(|(&x, &y)| f(x, y)).collect();
        v.map(CpuStorage::from_vec).ok_or_else(|| Error::msg(op.name(), format!("{what} ({} tensors)", T::DTYPE)))
    };
    Ok(match op {
        BinaryOp::Add => map(T::add),
        BinaryOp::Sub => map(T::sub),
        BinaryOp::Mul => map(T::mul),
        BinaryOp::Div => checked(T::div, "integer division by zero")?,
        BinaryOp::Pow => checked(T::pow, "integers to negative integer powers are not allowed")?,
        BinaryOp::Maximum => map(nan_max),
        BinaryOp::Minimum => map(nan_min),
        BinaryOp::Eq => cmp(|x, y| x == y),
        BinaryOp::Ne => cmp(|x, y| x != y),
        BinaryOp::Lt => cmp(|x, y| x < y),
        BinaryOp::Le => cmp(|x, y| x <= y),
        BinaryOp::Gt => cmp(|x, y| x > y),
        BinaryOp::Ge => cmp(|x, y| x >= y),
    })
}

/// A unary op on `f64` elements, from the table in `f64`.
pub fn unary_f64(op: UnaryOp, x: &[f64], l: &Layout) -> Vec<f64> {
    dense(x, l).into_iter().map(|v| op.eval(v)).collect()
}

/// The backward rule of a unary op in `f64`: `g · op'(x, y)`.
pub fn unary_backward_f64(op: UnaryOp, x: &[f64], y: &[f64], g: &[f64]) -> Vec<f64> {
    x.iter().zip(y).zip(g).map(|((&x, &y), &g)| g * op.derivative_of(x, y)).collect()
}

/// A unary op that maps integers to integers ([`UnaryOp::keeps_integers`]).
///
/// # Errors
/// For any other op: it computes in a float type, and the caller converts first.
pub fn unary_int<T: Num>(op: UnaryOp, x: &[T], l: &Layout) -> Result<Vec<T>> {
    let c = |v: f32| T::from_f64(v as f64);
    let f: Box<dyn Fn(T) -> T> = match op {
        UnaryOp::Neg => Box::new(|v| T::ZERO.sub(v)),
        UnaryOp::Abs => Box::new(|v| if v < T::ZERO { T::ZERO.sub(v) } else { v }),
        UnaryOp::Square => Box::new(|v| v.mul(v)),
        UnaryOp::Relu => Box::new(|v| if v < T::ZERO { T::ZERO } else { v }),
        UnaryOp::Clamp(lo, hi) if op.keeps_integers() => {
            let (lo, hi) = (lo as f64, hi as f64);
            Box::new(move |v| {
                let f = v.to_f64();
                if f < lo {
                    T::from_f64(lo)
                } else if f > hi {
                    T::from_f64(hi)
                } else {
                    v
                }
            })
        }
        UnaryOp::Affine(m, a) if op.keeps_integers() => {
            let (m, a) = (c(m), c(a));
            Box::new(move |v| m.mul(v).add(a))
        }
        _ => {
            return Err(Error::DType { op: op.name(), got: T::DTYPE, expected: "a floating-point dtype" });
        }
    };
    Ok(dense(x, l).into_iter().map(f).collect())
}

/// Reduces the axes flagged in `axes`: values of `T` for sum, product, max
/// and min (over no elements: 0, 1, the lowest and the highest value), `i64`
/// positions for the arg ops (the first extreme; the first NaN, if any).
pub fn reduce<T: Num>(op: ReduceOp, x: &[T], l: &Layout, axes: &[bool]) -> CpuStorage {
    let dims = l.dims();
    let kept: Vec<usize> = (0..dims.len()).filter(|&d| !axes[d]).collect();
    let red: Vec<usize> = (0..dims.len()).filter(|&d| axes[d]).collect();
    let perm: Vec<usize> = kept.iter().chain(&red).copied().collect();
    let data = dense(x, &l.permute(&perm).expect("a permutation"));
    let r: usize = red.iter().map(|&d| dims[d]).product();
    let outer: usize = kept.iter().map(|&d| dims[d]).product();
    let rows = (0..outer).map(|o| &data[o * r..(o + 1) * r]);
    let fold = |init: T, f: fn(T, T) -> T| -> CpuStorage {
        CpuStorage::from_vec(rows.clone().map(|row| row.iter().fold(init, |acc, &v| f(acc, v))).collect())
    };
    match op {
        ReduceOp::Sum => fold(T::ZERO, T::add),
        ReduceOp::Prod => fold(T::ONE, T::mul),
        ReduceOp::Max => fold(T::LOWEST, nan_max),
        ReduceOp::Min => fold(T::HIGHEST, nan_min),
        ReduceOp::ArgMax | ReduceOp::ArgMin => {
            let better = |v: T, best: T| if op == ReduceOp::ArgMax { v > best } else { v < best };
            let arg = |row: &[T]| -> i64 {
                let mut bi = 0;
                for (k, &v) in row.iter().enumerate() {
                    if v.is_nan() {
                        return k as i64;
                    }
                    if better(v, row[bi]) {
                        bi = k;
                    }
                }
                bi as i64
            };
            CpuStorage::from_vec(rows.map(|row| if row.is_empty() { 0 } else { arg(row) }).collect::<Vec<i64>>())
        }
    }
}

/// Batched matrix product of `(…, m, k)` and `(…, k, n)` layouts with equal
/// batch dims (a plain triple loop: the `f32` gemm is the fast one).
pub fn matmul<T: Num>(a: &[T], la: &Layout, b: &[T], lb: &Layout) -> Vec<T> {
    let r = la.dims().len();
    let (m, k, n) = (la.dims()[r - 2], la.dims()[r - 1], lb.dims()[r - 1]);
    let (a, b) = (dense(a, la), dense(b, lb));
    let nb: usize = la.dims()[..r - 2].iter().product();
    let mut out = vec![T::ZERO; nb * m * n];
    for bi in 0..nb {
        let (a, b) = (&a[bi * m * k..(bi + 1) * m * k], &b[bi * k * n..(bi + 1) * k * n]);
        let c = &mut out[bi * m * n..(bi + 1) * m * n];
        for i in 0..m {
            for p in 0..k {
                let av = a[i * k + p];
                for j in 0..n {
                    c[i * n + j] = c[i * n + j].add(av.mul(b[p * n + j]));
                }
            }
        }
    }
    out
}

/// `cond[i] ? a[i] : b[i]` on equal-length buffers.
pub fn where_select<T: Copy>(cond: &[bool], a: &[T], b: &[T]) -> Vec<T> {
    cond.iter().zip(a).zip(b).map(|((&c, &a), &b)| if c { a } else { b }).collect()
}

/// `out = zeros(outer, size, inner); out[o, idx[k], i] += src[o, k, i]`.
///
/// # Errors
/// [`Error::IndexOutOfRange`] for an index outside `0..size`.
pub fn index_add<T: Num>(src: &[T], outer: usize, size: usize, inner: usize, idx: &[i64]) -> Result<Vec<T>> {
    let mut out = vec![T::ZERO; outer * size * inner];
    for o in 0..outer {
        for (k, &d) in idx.iter().enumerate() {
            let d = check_index("index_add", d, size)?;
            for i in 0..inner {
                let t = (o * size + d) * inner + i;
                out[t] = out[t].add(src[(o * idx.len() + k) * inner + i]);
            }
        }
    }
    Ok(out)
}

/// `out = zeros(outer, size, inner); out[o, index[o, j, i], i] += src[o, j, i]`.
///
/// # Errors
/// [`Error::IndexOutOfRange`] for an index outside `0..size`.
pub fn scatter_add<T: Num>(src: &[T], outer: usize, size: usize, inner: usize, index: &[i64]) -> Result<Vec<T>> {
    let mut out = vec![T::ZERO; outer * size * inner];
    let k = index.len().checked_div(outer * inner).unwrap_or(0);
    for o in 0..outer {
        for j in 0..k {
            for i in 0..inner {
                let at = (o * k + j) * inner + i;
                let d = check_index("scatter_add", index[at], size)?;
                let t = (o * size + d) * inner + i;
                out[t] = out[t].add(src[at]);
            }
        }
    }
    Ok(out)
}

fn check_index(op: &'static str, i: i64, size: usize) -> Result<usize> {
    if i < 0 || i as usize >= size {
        return Err(Error::IndexOutOfRange { op, index: i, size });
    }
    Ok(i as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use firebrand_tensor::op::ALL_UNARY_OPS;

    #[test]
    fn integer_binary_ops_on_strided_and_broadcast_layouts() {
        // (2, 3) transposed against a broadcast row.
        let a = [1i32, 2, 3, 4, 5, 6];
        let la = Layout::contiguous([3, 2]).transpose(0, 1).unwrap(); // [[1,3,5],[2,4,6]]
        let b = [10i32, -1, 2];
        let lb = Layout::contiguous([3]).broadcast_as(&[2, 3].into()).unwrap();
        let got = binary(BinaryOp::Sub, &a, &la, &b, &lb).unwrap();
        assert_eq!(got, CpuStorage::I32(vec![-9, 4, 3, -8, 5, 4]));
        let got = binary(BinaryOp::Gt, &a, &la, &b, &lb).unwrap();
        assert_eq!(got, CpuStorage::Bool(vec![false, true, true, false, true, true]));
        assert!(binary(BinaryOp::Div, &[1i64], &Layout::contiguous([1]), &[0i64], &Layout::contiguous([1])).is_err());
        assert!(binary(BinaryOp::Pow, &[2i64], &Layout::contiguous([1]), &[-1], &Layout::contiguous([1])).is_err());
        let l1 = Layout::contiguous([1]);
        assert_eq!(binary(BinaryOp::Add, &[250u8], &l1, &[10u8], &l1).unwrap(), CpuStorage::U8(vec![4]));
        assert!(binary(BinaryOp::Sub, &[true], &l1, &[true], &l1).is_err());
    }

    #[test]
    fn f64_ops_match_the_scalar_table() {
        let x: Vec<f64> = (0..7).map(|i| 0.3 + i as f64 * 0.41).collect();
        let l = Layout::contiguous([7]);
        for &op in ALL_UNARY_OPS {
            let got = unary_f64(op, &x, &l);
            for (g, &v) in got.iter().zip(&x) {
                let want = op.apply(v as f32) as f64;
                assert!((g - want).abs() <= 1e-5 * (1.0 + want.abs()), "{op:?}({v}): {g} vs {want}");
            }
        }
        let nan = [f64::NAN, 1.0];
        let l2 = Layout::contiguous([2]);
        for op in [UnaryOp::Relu, UnaryOp::Clamp(0.0, 0.5), UnaryOp::Abs] {
            assert!(unary_f64(op, &nan, &l2)[0].is_nan(), "{op:?}");
        }
    }

    #[test]
    fn reductions_over_any_axes() {
        // (2, 3) = [[3, 1, 2], [0, 5, 5]]
        let x = [3i64, 1, 2, 0, 5, 5];
        let l = Layout::contiguous([2, 3]);
        assert_eq!(reduce(ReduceOp::Sum, &x, &l, &[true, false]), CpuStorage::I64(vec![3, 6, 7]));
        assert_eq!(reduce(ReduceOp::Prod, &x, &l, &[false, true]), CpuStorage::I64(vec![6, 0]));
        assert_eq!(reduce(ReduceOp::Max, &x, &l, &[true, true]), CpuStorage::I64(vec![5]));
        assert_eq!(reduce(ReduceOp::ArgMax, &x, &l, &[false, true]), CpuStorage::I64(vec![0, 1]));
        assert_eq!(reduce(ReduceOp::ArgMin, &x, &l, &[true, false]), CpuStorage::I64(vec![1, 0, 0]));
        let b = [false, true, false, false];
        let lb = Layout::contiguous([2, 2]);
        assert_eq!(reduce(ReduceOp::Max, &b, &lb, &[false, true]), CpuStorage::Bool(vec![true, false]));
        let f = [1.0f64, f64::NAN, 3.0];
        let lf = Layout::contiguous([3]);
        assert!(matches!(reduce(ReduceOp::Max, &f, &lf, &[true]), CpuStorage::F64(ref v) if v[0].is_nan()));
        assert_eq!(reduce(ReduceOp::ArgMax, &f, &lf, &[true]), CpuStorage::I64(vec![1]));
    }

    #[test]
    fn integer_matmul_on_a_transposed_operand() {
        let a = [1i64, 2, 3, 4, 5, 6]; // (2, 3)
        let b = [1i64, 0, 2, 1, 0, 3]; // stored (2, 3), used transposed as (3, 2)
        let lb = Layout::contiguous([2, 3]).transpose(0, 1).unwrap();
        let got = matmul(&a, &Layout::contiguous([2, 3]), &b, &lb);
        assert_eq!(got, vec![7, 10, 16, 22]);
    }
}
