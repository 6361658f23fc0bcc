//! The CPU implementation of the primitive op set
//! ([`Backend`](firebrand_tensor::backend::Backend)), on this crate's kernels.

use crate::binary::binary_map;
use crate::gemm::{MatRef, gemm, gemm_serial};
use crate::reduce::{Reduced, reduce};
use crate::strided::{contiguous, contiguous_f32};
use crate::{conv, depthwise, generic, index, softmax, unary};
use firebrand_tensor::backend::{
    AttentionInputs, AttentionSpec, Backend, BackendStorage, Fused, HeadOrder, Rows, Storage,
};
use firebrand_tensor::op::{BinaryOp, ReduceOp, UnaryOp, Window2d};
use firebrand_tensor::pool::take_f32;
use firebrand_tensor::{CpuStorage, DType, Device, Element, Error, Layout, Result, bf16, cpu_of_dtype, f16, with_cpu};
use std::borrow::Cow;

/// The CPU backend (a unit value; use [`CPU`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

/// The CPU backend.
pub static CPU: CpuBackend = CpuBackend;

/// Batches with at most this many multiply-adds per matrix run in parallel over
/// the batch (each gemm on one thread) instead of threading each gemm.
const BATCH_PAR_MAX_MACS: usize = 1 << 18;
/// ... or, for larger ones, when the batch has at least this many matrices per thread.
const BATCH_PAR_MIN_PER_THREAD: usize = 4;

fn cpu<'a>(s: &'a dyn BackendStorage, op: &'static str) -> Result<&'a CpuStorage> {
    s.as_any().downcast_ref::<CpuStorage>().ok_or(Error::DeviceMismatch { op, lhs: Device::Cpu, rhs: s.device() })
}

/// The `f32` elements of a CPU storage: the buffer itself, or for `f16`
/// and `bf16` storages a widened copy (half-precision tensors compute in
/// `f32` inside every kernel).
///
/// # Errors
/// When the storage is not a CPU buffer of `f32`, `f16` or `bf16`.
pub fn f32s<'a>(s: &'a dyn BackendStorage, op: &'static str) -> Result<Cow<'a, [f32]>> {
    match cpu(s, op)? {
        CpuStorage::F32(v) => Ok(Cow::Borrowed(v)),
        CpuStorage::F16(v) => Ok(Cow::Owned(v.iter().map(|x| x.to_f32()).collect())),
        CpuStorage::BF16(v) => Ok(Cow::Owned(v.iter().map(|x| x.to_f32()).collect())),
        other => Err(Error::DType { op, got: other.dtype(), expected: "f32, f16 or bf16" }),
    }
}

/// The `f64` buffer of a CPU storage, if it is one (the fused ops' plain `f64` paths).
fn f64s<'a>(s: &'a dyn BackendStorage, op: &'static str) -> Result<Option<&'a [f64]>> {
    Ok(match cpu(s, op)? {
        CpuStorage::F64(v) => Some(v),
        _ => None,
    })
}

/// The `i64` buffer of a CPU storage.
///
/// # Errors
/// When the storage is not a CPU `i64` buffer.
pub fn i64s<'a>(s: &'a dyn BackendStorage, op: &'static str) -> Result<&'a [i64]> {
    match cpu(s, op)? {
        CpuStorage::I64(v) => Ok(v),
        other => Err(Error::DType { op, got: other.dtype(), expected: "i64" }),
    }
}

/// An `f32` result as a storage of `dtype`: itself for `f32`, narrowed for
/// `f16`/`bf16` (the dtype of the op's float input).
fn float_out(v: Vec<f32>, dtype: DType) -> Storage {
    Box::new(match dtype {
        DType::F16 => CpuStorage::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
        DType::BF16 => CpuStorage::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
        _ => CpuStorage::F32(v),
    })
}

/// [`float_out`] for a kernel's storage: an `f32` one is narrowed to
/// `dtype`, any other (indices, masks) kept.
fn storage_as(mut s: CpuStorage, dtype: DType) -> Storage {
    match &mut s {
        CpuStorage::F32(v) => float_out(std::mem::take(v), dtype),
        _ => Box::new(s),
    }
}

/// True for the dtypes that run on the `f32` kernels.
fn on_f32_kernels(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F16 | DType::BF16)
}

/// Runs `$body` with `$a` (and `$b`) bound to the typed buffers of storages
/// of one dtype other than f16/bf16, with `$T` the element type.
macro_rules! typed {
    ($op:expr, $x:expr, $T:ident, $a:ident => $body:expr) => {
        match cpu($x, $op)? {
            CpuStorage::Bool($a) => {
                type $T = bool;
                $body
            }
            CpuStorage::U8($a) => {
                type $T = u8;
                $body
            }
            CpuStorage::I8($a) => {
                type $T = i8;
                $body
            }
            CpuStorage::I32($a) => {
                type $T = i32;
                $body
            }
            CpuStorage::I64($a) => {
                type $T = i64;
                $body
            }
            CpuStorage::F32($a) => {
                type $T = f32;
                $body
            }
            CpuStorage::F64($a) => {
                type $T = f64;
                $body
            }
            other => return Err(Error::DType { op: $op, got: other.dtype(), expected: "a non-half dtype" }),
        }
    };
}

/// The buffer of `s` as `&[T]`, checking that its dtype is `T`'s.
fn slice_of<'a, T: Element>(s: &'a dyn BackendStorage, op: &'static str) -> Result<&'a [T]> {
    let c = cpu(s, op)?;
    c.as_slice::<T>().ok_or(Error::DType { op, got: c.dtype(), expected: T::DTYPE.name() })
}

/// An attention call's operands as `f32` buffers (widened from half precision).
struct AttentionBuffers<'a> {
    q: Cow<'a, [f32]>,
    k: Cow<'a, [f32]>,
    v: Cow<'a, [f32]>,
    key_padding: Option<Cow<'a, [f32]>>,
    attn_mask: Option<Cow<'a, [f32]>>,
}

impl<'a> AttentionBuffers<'a> {
    fn new(x: &AttentionInputs<'a>) -> Result<Self> {
        let op = "attention";
        Ok(AttentionBuffers {
            q: f32s(x.q, op)?,
            k: f32s(x.k, op)?,
            v: f32s(x.v, op)?,
            key_padding: x.key_padding.map(|p| f32s(p, op)).transpose()?,
            attn_mask: x.attn_mask.map(|m| f32s(m, op)).transpose()?,
        })
    }

    fn operands<'b>(&'b self, x: &AttentionInputs<'_>) -> crate::attention::Operands<'b> {
        crate::attention::Operands {
            q: &self.q,
            q_at: x.q_at,
            k: &self.k,
            k_at: x.k_at,
            v: &self.v,
            v_at: x.v_at,
            key_padding: self.key_padding.as_deref(),
            attn_mask: self.attn_mask.as_deref(),
        }
    }
}

/// Runs `f` on the elements of `l` in row-major order, borrowing when contiguous.
fn with_contiguous<R>(x: &[f32], l: &Layout, f: impl FnOnce(&[f32]) -> R) -> R {
    match l.contiguous_range() {
        Some(r) => f(&x[r]),
        None => {
            let scratch = contiguous_f32(x, l);
            let out = f(&scratch);
            firebrand_tensor::pool::recycle_f32(scratch);
            out
        }
    }
}

/// Checks that two operands share a dtype (the autograd layer promotes first).
fn same_dtype(op: &'static str, a: &dyn BackendStorage, b: &dyn BackendStorage) -> Result<DType> {
    if a.dtype() != b.dtype() {
        return Err(Error::msg(
            op,
            format!("operands of dtypes {} and {} (promote them to one first)", a.dtype(), b.dtype()),
        ));
    }
    Ok(a.dtype())
}

impl Backend for CpuBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn has_fused(&self, _: Fused) -> bool {
        true
    }

    fn upload(&self, data: CpuStorage) -> Result<Storage> {
        Ok(Box::new(data))
    }

    fn contiguous(&self, x: &dyn BackendStorage, l: &Layout) -> Result<Storage> {
        Ok(Box::new(match cpu(x, "contiguous")? {
            CpuStorage::F32(v) => CpuStorage::F32(contiguous_f32(v, l)),
            other => with_cpu!(other, v => CpuStorage::from_vec(contiguous(v, l))),
        }))
    }

    fn to_dtype(&self, x: &dyn BackendStorage, l: &Layout, dtype: DType) -> Result<Storage> {
        Ok(Box::new(cpu(x, "to_dtype")?.to_dtype(l, dtype)))
    }

    fn unary(&self, op: UnaryOp, x: &dyn BackendStorage, l: &Layout) -> Result<Storage> {
        let n = op.name();
        let dt = x.dtype();
        if on_f32_kernels(dt) {
            return Ok(float_out(unary::unary_map(op, &f32s(x, n)?, l), dt));
        }
        Ok(Box::new(typed!(n, x, T, v => {
            if T::DTYPE == DType::F64 {
                CpuStorage::from_vec(generic::unary_f64(op, slice_of::<f64>(x, n)?, l))
            } else {
                CpuStorage::from_vec(generic::unary_int::<T>(op, v, l)?)
            }
        })))
    }

    fn unary_backward(
        &self,
        op: UnaryOp,
        x: &dyn BackendStorage,
        y: &dyn BackendStorage,
        g: &dyn BackendStorage,
    ) -> Result<Storage> {
        let n = op.name();
        let dt = x.dtype();
        if dt == DType::F64 {
            let (x, y, g) = (slice_of::<f64>(x, n)?, slice_of::<f64>(y, n)?, slice_of::<f64>(g, n)?);
            return Ok(Box::new(CpuStorage::F64(generic::unary_backward_f64(op, x, y, g))));
        }
        Ok(float_out(unary::unary_backward(op, &f32s(x, n)?, &f32s(y, n)?, &f32s(g, n)?), dt))
    }

    fn binary(
        &self,
        op: BinaryOp,
        a: &dyn BackendStorage,
        la: &Layout,
        b: &dyn BackendStorage,
        lb: &Layout,
    ) -> Result<Storage> {
        let n = op.name();
        let dt = same_dtype(n, a, b)?;
        if dt == DType::F32 && !op.is_comparison() {
            return Ok(Box::new(CpuStorage::F32(binary_map(op, &f32s(a, n)?, la, &f32s(b, n)?, lb))));
        }
        if on_f32_kernels(dt) {
            let (a, b) = (f32s(a, n)?, f32s(b, n)?);
            return Ok(storage_as(generic::binary::<f32>(op, &a, la, &b, lb)?, dt));
        }
        Ok(Box::new(typed!(n, a, T, av => generic::binary::<T>(op, av, la, slice_of::<T>(b, n)?, lb)?)))
    }

    fn reduce(&self, op: ReduceOp, x: &dyn BackendStorage, l: &Layout, axes: &[bool]) -> Result<Storage> {
        let n = op.name();
        let dt = x.dtype();
        if on_f32_kernels(dt) {
            let v = f32s(x, n)?;
            let out = match reduce(op, &v, l, axes) {
                Reduced::Values(v) => CpuStorage::F32(v),
                Reduced::Indices(v) => CpuStorage::I64(v),
            };
            return Ok(storage_as(out, dt));
        }
        Ok(Box::new(typed!(n, x, T, v => generic::reduce::<T>(op, v, l, axes))))
    }

    fn matmul(&self, a: &dyn BackendStorage, la: &Layout, b: &dyn BackendStorage, lb: &Layout) -> Result<Storage> {
        let dt = same_dtype("matmul", a, b)?;
        if on_f32_kernels(dt) {
            return Ok(float_out(batched_gemm(&f32s(a, "matmul")?, la, &f32s(b, "matmul")?, lb), dt));
        }
        if dt == DType::Bool {
            return Err(Error::DType { op: "matmul", got: dt, expected: "a numeric dtype" });
        }
        Ok(Box::new(typed!("matmul", a, T, av => {
            CpuStorage::from_vec(generic::matmul::<T>(av, la, slice_of::<T>(b, "matmul")?, lb))
        })))
    }

    fn softmax(&self, x: &dyn BackendStorage, l: &Layout, log: bool) -> Result<Storage> {
        let cols = l.dims().last().copied().unwrap_or(1);
        let f = if log { softmax::log_softmax_rows } else { softmax::softmax_rows };
        Ok(float_out(with_contiguous(&f32s(x, "softmax")?, l, |v| f(v, cols)), x.dtype()))
    }

    fn softmax_backward(
        &self,
        y: &dyn BackendStorage,
        g: &dyn BackendStorage,
        cols: usize,
        log: bool,
    ) -> Result<Storage> {
        let f = if log { softmax::log_softmax_backward_rows } else { softmax::softmax_backward_rows };
        Ok(float_out(f(&f32s(y, "softmax_backward")?, &f32s(g, "softmax_backward")?, cols), y.dtype()))
    }

    fn index_select(&self, x: &dyn BackendStorage, l: &Layout, d: usize, idx: &dyn BackendStorage) -> Result<Storage> {
        let dims = l.dims();
        let (o, n, i) = (dims[..d].iter().product(), dims[d], dims[d + 1..].iter().product());
        let idx = i64s(idx, "index_select")?;
        // A contiguous source is read in place: a batch gathered from a large
        // id table must not copy the whole table first.
        if let CpuStorage::F32(v) = cpu(x, "index_select")? {
            return Ok(Box::new(CpuStorage::F32(match l.contiguous_range() {
                Some(r) => index::index_select_f32(&v[r], o, n, i, idx)?,
                None => index::index_select_f32(&crate::strided::contiguous_f32(v, l), o, n, i, idx)?,
            })));
        }
        Ok(Box::new(with_cpu!(cpu(x, "index_select")?, v => CpuStorage::from_vec(match l.contiguous_range() {
            Some(r) => index::index_select(&v[r], o, n, i, idx)?,
            None => index::index_select(&contiguous(v, l), o, n, i, idx)?,
        }))))
    }

    fn index_add(
        &self,
        src: &dyn BackendStorage,
        outer: usize,
        size: usize,
        inner: usize,
        idx: &dyn BackendStorage,
    ) -> Result<Storage> {
        let (op, idx) = ("index_add", i64s(idx, "index_add")?);
        if on_f32_kernels(src.dtype()) {
            return Ok(float_out(index::index_add(&f32s(src, op)?, outer, size, inner, idx)?, src.dtype()));
        }
        Ok(Box::new(
            typed!(op, src, T, v => CpuStorage::from_vec(generic::index_add::<T>(v, outer, size, inner, idx)?)),
        ))
    }

    fn gather(
        &self,
        x: &dyn BackendStorage,
        outer: usize,
        size: usize,
        inner: usize,
        index: &dyn BackendStorage,
    ) -> Result<Storage> {
        let index = i64s(index, "gather")?;
        Ok(Box::new(
            with_cpu!(cpu(x, "gather")?, v => CpuStorage::from_vec(index::gather(v, outer, size, inner, index)?)),
        ))
    }

    fn scatter_add(
        &self,
        src: &dyn BackendStorage,
        outer: usize,
        size: usize,
        inner: usize,
        index: &dyn BackendStorage,
    ) -> Result<Storage> {
        let (op, index) = ("scatter_add", i64s(index, "scatter_add")?);
        if on_f32_kernels(src.dtype()) {
            return Ok(float_out(index::scatter_add(&f32s(src, op)?, outer, size, inner, index)?, src.dtype()));
        }
        Ok(Box::new(
            typed!(op, src, T, v => CpuStorage::from_vec(generic::scatter_add::<T>(v, outer, size, inner, index)?)),
        ))
    }

    fn concat(
        &self,
        parts: &[(&dyn BackendStorage, &Layout)],
        outer: usize,
        sizes: &[usize],
        inner: usize,
    ) -> Result<Storage> {
        let dt = parts.first().map(|p| p.0.dtype()).unwrap_or(DType::F32);
        if let Some((p, _)) = parts.iter().find(|p| p.0.dtype() != dt) {
            return Err(Error::msg(
                "cat",
                format!("parts of dtypes {dt} and {} (promote them to one first)", p.dtype()),
            ));
        }
        if dt == DType::F32 {
            let v: Vec<(&[f32], &Layout)> =
                parts.iter().map(|&(p, l)| Ok((slice_of::<f32>(p, "cat")?, l))).collect::<Result<_>>()?;
            return Ok(Box::new(CpuStorage::F32(index::concat_f32(&v, outer, sizes, inner))));
        }
        Ok(Box::new(cpu_of_dtype!(dt, T => {
            let v: Vec<(&[T], &Layout)> =
                parts.iter().map(|&(p, l)| Ok((slice_of::<T>(p, "cat")?, l))).collect::<Result<_>>()?;
            index::concat(&v, outer, sizes, inner)
        })))
    }

    fn where_select(
        &self,
        cond: &dyn BackendStorage,
        a: &dyn BackendStorage,
        b: &dyn BackendStorage,
    ) -> Result<Storage> {
        let op = "where";
        let dt = same_dtype(op, a, b)?;
        let c = cpu(cond, op)?;
        if let (DType::F32, CpuStorage::F32(c)) = (dt, c) {
            return Ok(Box::new(CpuStorage::F32(index::where_select(c, slice_of(a, op)?, slice_of(b, op)?))));
        }
        let l = Layout::contiguous([c.len()]);
        let c = c.to_vec::<bool>(&l);
        Ok(Box::new(cpu_of_dtype!(dt, T => generic::where_select(&c, slice_of::<T>(a, op)?, slice_of::<T>(b, op)?))))
    }

    fn im2col(&self, x: &dyn BackendStorage, [n, c, h, w]: [usize; 4], win: &Window2d) -> Result<Storage> {
        if let Some(v) = f64s(x, "im2col")? {
            return Ok(Box::new(CpuStorage::F64(conv::plain::im2col(v, n, c, h, w, win))));
        }
        Ok(float_out(conv::im2col(&f32s(x, "im2col")?, n, c, h, w, win), x.dtype()))
    }

    fn col2im(&self, cols: &dyn BackendStorage, [n, c, h, w]: [usize; 4], win: &Window2d) -> Result<Storage> {
        if let Some(v) = f64s(cols, "col2im")? {
            return Ok(Box::new(CpuStorage::F64(conv::plain::col2im(v, n, c, h, w, win))));
        }
        Ok(float_out(conv::col2im(&f32s(cols, "col2im")?, n, c, h, w, win), cols.dtype()))
    }

    fn lstm_cell(
        &self,
        xw: &dyn BackendStorage,
        xw_at: Rows,
        hw: &dyn BackendStorage,
        c_prev: &dyn BackendStorage,
        c_at: Rows,
        b: usize,
        h: usize,
    ) -> Result<Storage> {
        let op = "lstm_cell";
        let out = crate::recurrent::lstm_cell(&f32s(xw, op)?, xw_at, &f32s(hw, op)?, &f32s(c_prev, op)?, c_at, b, h);
        Ok(float_out(out, xw.dtype()))
    }

    fn lstm_cell_backward(
        &self,
        state: &dyn BackendStorage,
        c_prev: &dyn BackendStorage,
        c_at: Rows,
        g_out: &dyn BackendStorage,
        g_at: Rows,
        dh_next: &dyn BackendStorage,
        dc_next: &dyn BackendStorage,
        dc_at: Rows,
        b: usize,
        h: usize,
    ) -> Result<Storage> {
        let op = "lstm_cell_backward";
        let out = crate::recurrent::lstm_cell_backward(
            &f32s(state, op)?,
            &f32s(c_prev, op)?,
            c_at,
            &f32s(g_out, op)?,
            g_at,
            &f32s(dh_next, op)?,
            &f32s(dc_next, op)?,
            dc_at,
            b,
            h,
        );
        Ok(float_out(out, state.dtype()))
    }

    fn bias_act_to_nchw(
        &self,
        yt: &dyn BackendStorage,
        bias: Option<&dyn BackendStorage>,
        n: usize,
        l: usize,
        c: usize,
        act: Option<UnaryOp>,
    ) -> Result<Storage> {
        let op = "conv2d epilogue";
        let bias = bias.map(|b| f32s(b, op)).transpose()?;
        Ok(float_out(conv::bias_act_to_nchw(&f32s(yt, op)?, bias.as_deref(), n, l, c, act), yt.dtype()))
    }

    fn bias_act_to_nchw_backward(
        &self,
        g: &dyn BackendStorage,
        y: &dyn BackendStorage,
        n: usize,
        l: usize,
        c: usize,
        act: Option<UnaryOp>,
    ) -> Result<(Storage, Storage)> {
        let op = "conv2d epilogue backward";
        let (dyt, db) = conv::bias_act_to_nchw_backward(&f32s(g, op)?, &f32s(y, op)?, n, l, c, act);
        Ok((float_out(dyt, g.dtype()), float_out(db, g.dtype())))
    }

    fn depthwise_conv2d(
        &self,
        x: &dyn BackendStorage,
        weight: &dyn BackendStorage,
        bias: Option<&dyn BackendStorage>,
        dims: [usize; 4],
        multiplier: usize,
        win: &Window2d,
        act: Option<UnaryOp>,
    ) -> Result<Storage> {
        let op = "conv2d (depthwise)";
        let g = depthwise::DwGeom::new(dims, multiplier, *win);
        if let Some(xv) = f64s(x, op)? {
            let b = bias.map(|b| slice_of::<f64>(b, op)).transpose()?;
            let out = depthwise::depthwise_conv2d(xv, slice_of::<f64>(weight, op)?, b, &g, act);
            return Ok(Box::new(CpuStorage::F64(out)));
        }
        let b = bias.map(|b| f32s(b, op)).transpose()?;
        let out = depthwise::depthwise_conv2d(&f32s(x, op)?, &f32s(weight, op)?, b.as_deref(), &g, act);
        Ok(float_out(out, x.dtype()))
    }

    fn depthwise_conv2d_backward(
        &self,
        gy: &dyn BackendStorage,
        x: &dyn BackendStorage,
        weight: &dyn BackendStorage,
        dims: [usize; 4],
        multiplier: usize,
        win: &Window2d,
        [need_x, need_w]: [bool; 2],
    ) -> Result<(Option<Storage>, Option<Storage>)> {
        let op = "conv2d (depthwise) backward";
        let g = depthwise::DwGeom::new(dims, multiplier, *win);
        if let Some(gv) = f64s(gy, op)? {
            let f64_out = |v: Vec<f64>| -> Storage { Box::new(CpuStorage::F64(v)) };
            let dx = need_x
                .then(|| {
                    Ok::<_, Error>(f64_out(depthwise::depthwise_conv2d_backward_input(gv, slice_of(weight, op)?, &g)))
                })
                .transpose()?;
            let dw = need_w
                .then(|| Ok::<_, Error>(f64_out(depthwise::depthwise_conv2d_backward_weight(gv, slice_of(x, op)?, &g))))
                .transpose()?;
            return Ok((dx, dw));
        }
        let gv = f32s(gy, op)?;
        let dx = need_x
            .then(|| {
                let dx = depthwise::depthwise_conv2d_backward_input(&gv, &f32s(weight, op)?, &g);
                Ok::<_, Error>(float_out(dx, x.dtype()))
            })
            .transpose()?;
        let dw = need_w
            .then(|| {
                let dw = depthwise::depthwise_conv2d_backward_weight(&gv, &f32s(x, op)?, &g);
                Ok::<_, Error>(float_out(dw, weight.dtype()))
            })
            .transpose()?;
        Ok((dx, dw))
    }

    fn pointwise_conv2d(
        &self,
        x: &dyn BackendStorage,
        w: &dyn BackendStorage,
        scale: Option<&dyn BackendStorage>,
        shift: Option<&dyn BackendStorage>,
        [n, c, cout, l]: [usize; 4],
        act: Option<UnaryOp>,
    ) -> Result<Storage> {
        let op = "conv2d (pointwise)";
        let (xv, wv) = (f32s(x, op)?, f32s(w, op)?);
        let (s, t) = (scale.map(|s| f32s(s, op)).transpose()?, shift.map(|t| f32s(t, op)).transpose()?);
        let epi = crate::gemm::Epilogue { row_scale: s.as_deref(), row_shift: t.as_deref(), col_shift: None, act };
        let mut out = take_f32(n * cout * l);
        for (b, o) in out.chunks_mut((cout * l).max(1)).enumerate() {
            let xb = MatRef { data: &xv, offset: b * c * l, rs: l, cs: 1 };
            crate::gemm::gemm_fused(cout, c, l, MatRef::row_major(&wv, c), xb, o, l, &epi);
        }
        Ok(float_out(out, x.dtype()))
    }

    fn linear(
        &self,
        x: &dyn BackendStorage,
        w: &dyn BackendStorage,
        bias: Option<&dyn BackendStorage>,
        [rows, k, n]: [usize; 3],
        act: Option<UnaryOp>,
    ) -> Result<Storage> {
        let op = "linear";
        let (xv, wv) = (f32s(x, op)?, f32s(w, op)?);
        let b = bias.map(|b| f32s(b, op)).transpose()?;
        let epi = crate::gemm::Epilogue { row_scale: None, row_shift: None, col_shift: b.as_deref(), act };
        let mut out = take_f32(rows * n);
        // B = wᵀ: element (p, j) is w[j, p].
        let wt = MatRef { data: &wv, offset: 0, rs: 1, cs: k };
        crate::gemm::gemm_fused(rows, k, n, MatRef::row_major(&xv, k), wt, &mut out, n, &epi);
        Ok(float_out(out, x.dtype()))
    }

    fn channel_affine(
        &self,
        x: &dyn BackendStorage,
        scale: Option<&dyn BackendStorage>,
        shift: Option<&dyn BackendStorage>,
        dims: [usize; 3],
        act: Option<UnaryOp>,
    ) -> Result<Storage> {
        let op = "channel_affine";
        if let Some(xv) = f64s(x, op)? {
            let s = scale.map(|s| slice_of::<f64>(s, op)).transpose()?;
            let t = shift.map(|t| slice_of::<f64>(t, op)).transpose()?;
            return Ok(Box::new(CpuStorage::F64(conv::channel_affine(xv, s, t, dims, act))));
        }
        let s = scale.map(|s| f32s(s, op)).transpose()?;
        let t = shift.map(|t| f32s(t, op)).transpose()?;
        Ok(float_out(conv::channel_affine(&f32s(x, op)?, s.as_deref(), t.as_deref(), dims, act), x.dtype()))
    }

    fn channel_affine_backward(
        &self,
        g: &dyn BackendStorage,
        x: &dyn BackendStorage,
        y: &dyn BackendStorage,
        scale: Option<&dyn BackendStorage>,
        dims: [usize; 3],
        act: Option<UnaryOp>,
        need: [bool; 3],
    ) -> Result<(Option<Storage>, Option<Storage>, Option<Storage>)> {
        let op = "channel_affine backward";
        if let Some(gv) = f64s(g, op)? {
            let s = scale.map(|s| slice_of::<f64>(s, op)).transpose()?;
            let (dx, ds, dt) =
                conv::channel_affine_backward(gv, slice_of(x, op)?, slice_of(y, op)?, s, dims, act, need);
            let f = |v: Option<Vec<f64>>| v.map(|v| -> Storage { Box::new(CpuStorage::F64(v)) });
            return Ok((f(dx), f(ds), f(dt)));
        }
        let s = scale.map(|s| f32s(s, op)).transpose()?;
        let (dx, ds, dt) =
            conv::channel_affine_backward(&f32s(g, op)?, &f32s(x, op)?, &f32s(y, op)?, s.as_deref(), dims, act, need);
        let f = |v: Option<Vec<f32>>| v.map(|v| float_out(v, g.dtype()));
        Ok((f(dx), f(ds), f(dt)))
    }

    fn batch_norm_stats(&self, x: &dyn BackendStorage, dims: [usize; 3]) -> Result<Storage> {
        let op = "batch_norm";
        if let Some(v) = f64s(x, op)? {
            return Ok(Box::new(CpuStorage::F64(crate::batch_norm::batch_norm_stats(v, dims))));
        }
        Ok(float_out(crate::batch_norm::batch_norm_stats(&f32s(x, op)?, dims), x.dtype()))
    }

    fn batch_norm_backward(
        &self,
        g: &dyn BackendStorage,
        x: &dyn BackendStorage,
        stats: &dyn BackendStorage,
        weight: Option<&dyn BackendStorage>,
        dims: [usize; 3],
        act: Option<(UnaryOp, &dyn BackendStorage)>,
    ) -> Result<(Storage, Storage)> {
        let op = "batch_norm backward";
        if let Some((a, _)) = act
            && !crate::elem::output_determines_grad(a)
        {
            return Err(Error::msg(op, format!("{} after the normalization needs its input", a.name())));
        }
        if let Some(gv) = f64s(g, op)? {
            let w = weight.map(|w| slice_of::<f64>(w, op)).transpose()?;
            let act = act.map(|(a, y)| slice_of::<f64>(y, op).map(|y| (a, y))).transpose()?;
            let (x, stats) = (slice_of(x, op)?, slice_of(stats, op)?);
            let (dx, da) = crate::batch_norm::batch_norm_backward(gv, x, stats, w, dims, act);
            return Ok((Box::new(CpuStorage::F64(dx)), Box::new(CpuStorage::F64(da))));
        }
        let w = weight.map(|w| f32s(w, op)).transpose()?;
        let y = act.map(|(_, y)| f32s(y, op)).transpose()?;
        let act = act.map(|(a, _)| a).zip(y.as_deref());
        let (dx, da) = crate::batch_norm::batch_norm_backward(
            &f32s(g, op)?,
            &f32s(x, op)?,
            &f32s(stats, op)?,
            w.as_deref(),
            dims,
            act,
        );
        Ok((float_out(dx, x.dtype()), float_out(da, x.dtype())))
    }

    fn layer_norm(
        &self,
        x: &dyn BackendStorage,
        weight: Option<&dyn BackendStorage>,
        bias: Option<&dyn BackendStorage>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(Storage, Storage)> {
        let op = "layer_norm";
        let (w, b) = (weight.map(|w| f32s(w, op)).transpose()?, bias.map(|b| f32s(b, op)).transpose()?);
        let (y, stats) = crate::norm::layer_norm(&f32s(x, op)?, w.as_deref(), b.as_deref(), rows, cols, eps);
        Ok((float_out(y, x.dtype()), float_out(stats, DType::F32)))
    }

    fn layer_norm_backward(
        &self,
        x: &dyn BackendStorage,
        weight: Option<&dyn BackendStorage>,
        stats: &dyn BackendStorage,
        g: &dyn BackendStorage,
        rows: usize,
        cols: usize,
    ) -> Result<(Storage, Storage)> {
        let op = "layer_norm_backward";
        let w = weight.map(|w| f32s(w, op)).transpose()?;
        let (dx, dwb) =
            crate::norm::layer_norm_backward(&f32s(x, op)?, w.as_deref(), &f32s(stats, op)?, &f32s(g, op)?, rows, cols);
        let wdt = weight.map(|w| w.dtype()).unwrap_or(x.dtype());
        Ok((float_out(dx, x.dtype()), float_out(dwb, wdt)))
    }

    fn attention(&self, x: &AttentionInputs<'_>, spec: &AttentionSpec) -> Result<(Storage, Storage)> {
        let bufs = AttentionBuffers::new(x)?;
        let (out, lse) = crate::attention::attention(&bufs.operands(x), spec);
        Ok((float_out(out, x.q.dtype()), float_out(lse, DType::F32)))
    }

    fn attention_backward(
        &self,
        x: &AttentionInputs<'_>,
        spec: &AttentionSpec,
        out: &dyn BackendStorage,
        lse: &dyn BackendStorage,
        g: &dyn BackendStorage,
        orders: [HeadOrder; 3],
    ) -> Result<(Storage, Storage, Storage)> {
        let op = "attention_backward";
        let bufs = AttentionBuffers::new(x)?;
        let (dq, dk, dv) = crate::attention::attention_backward(
            &bufs.operands(x),
            spec,
            &f32s(out, op)?,
            &f32s(lse, op)?,
            &f32s(g, op)?,
            orders,
        );
        Ok((float_out(dq, x.q.dtype()), float_out(dk, x.k.dtype()), float_out(dv, x.v.dtype())))
    }

    fn max_pool2d(
        &self,
        x: &dyn BackendStorage,
        [n, c, h, w]: [usize; 4],
        win: &Window2d,
    ) -> Result<(Storage, Storage)> {
        if let Some(v) = f64s(x, "max_pool2d")? {
            let (v, i) = conv::plain::max_pool2d(v, n, c, h, w, win);
            return Ok((Box::new(CpuStorage::F64(v)), Box::new(CpuStorage::I64(i))));
        }
        let (v, i) = conv::max_pool2d(&f32s(x, "max_pool2d")?, n, c, h, w, win);
        Ok((float_out(v, x.dtype()), Box::new(CpuStorage::I64(i))))
    }

    fn max_pool2d_backward(
        &self,
        g: &dyn BackendStorage,
        idx: &dyn BackendStorage,
        [n, c, h, w]: [usize; 4],
        win: &Window2d,
    ) -> Result<Storage> {
        let op = "max_pool2d_backward";
        if let Some(g) = f64s(g, op)? {
            return Ok(Box::new(CpuStorage::F64(conv::plain::max_pool2d_backward(g, i64s(idx, op)?, n, c, h, w, win))));
        }
        Ok(float_out(conv::max_pool2d_backward(&f32s(g, op)?, i64s(idx, op)?, n, c, h, w, win), g.dtype()))
    }

    fn avg_pool2d(
        &self,
        x: &dyn BackendStorage,
        [n, c, h, w]: [usize; 4],
        win: &Window2d,
        cip: bool,
    ) -> Result<Storage> {
        if let Some(v) = f64s(x, "avg_pool2d")? {
            return Ok(Box::new(CpuStorage::F64(conv::plain::avg_pool2d(v, n, c, h, w, win, cip))));
        }
        Ok(float_out(conv::avg_pool2d(&f32s(x, "avg_pool2d")?, n, c, h, w, win, cip), x.dtype()))
    }

    fn avg_pool2d_backward(
        &self,
        g: &dyn BackendStorage,
        [n, c, h, w]: [usize; 4],
        win: &Window2d,
        cip: bool,
    ) -> Result<Storage> {
        if let Some(g) = f64s(g, "avg_pool2d_backward")? {
            return Ok(Box::new(CpuStorage::F64(conv::plain::avg_pool2d_backward(g, n, c, h, w, win, cip))));
        }
        Ok(float_out(conv::avg_pool2d_backward(&f32s(g, "avg_pool2d_backward")?, n, c, h, w, win, cip), g.dtype()))
    }
}

/// Multiplies every batch entry of layouts `(…, m, k)` and `(…, k, n)` with
/// equal (already broadcast) batch dims into a new row-major `(…, m, n)` buffer.
pub fn batched_gemm(a: &[f32], al: &Layout, b: &[f32], bl: &Layout) -> Vec<f32> {
    let r = al.dims().len();
    let (m, k, n) = (al.dims()[r - 2], al.dims()[r - 1], bl.dims()[r - 1]);
    let batch_dims = &al.dims()[..r - 2];
    let nb: usize = batch_dims.iter().product();
    let mut out = take_f32(nb * m * n);
    if m * n == 0 {
        return out;
    }
    // Every output element is written by the gemms below (k == 0 writes zeros).
    let offset = |layout: &Layout, bi: usize| -> usize {
        let mut rem = bi;
        let mut off = layout.offset();
        for d in (0..r - 2).rev() {
            off += (rem % batch_dims[d]) * layout.strides()[d];
            rem /= batch_dims[d];
        }
        off
    };
    let (ars, acs) = (al.strides()[r - 2], al.strides()[r - 1]);
    let (brs, bcs) = (bl.strides()[r - 2], bl.strides()[r - 1]);
    let one = |bi: usize, c: &mut [f32], serial: bool| {
        let am = MatRef { data: a, offset: offset(al, bi), rs: ars, cs: acs };
        let bm = MatRef { data: b, offset: offset(bl, bi), rs: brs, cs: bcs };
        if serial { gemm_serial(m, k, n, am, bm, c, n, false) } else { gemm(m, k, n, am, bm, c, n, false) }
    };
    // Over the batch, each gemm on one thread, when the matrices are small or
    // the batch is deep enough to keep every thread busy: a 1x1 convolution's
    // products at batch 16 ran 10-35% faster so than with each image's gemm
    // split across the threads (`cargo bench --bench ops -- pointwise`).
    let threads = crate::parallel::num_threads();
    let over_batch = m * n * k <= BATCH_PAR_MAX_MACS || nb >= BATCH_PAR_MIN_PER_THREAD * threads;
    if nb > 1 && over_batch && threads > 1 {
        crate::parallel::par_chunks_mut(&mut out, m * n, |bi, c| one(bi, c, true));
    } else {
        out.chunks_mut(m * n).enumerate().for_each(|(bi, c)| one(bi, c, false));
    }
    out
}
