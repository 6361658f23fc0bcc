//! The CPU implementation of the primitive op set
//! ([`Backend`](firebrand_tensor::backend::Backend)), on this crate's kernels.

use crate::binary::binary_map;
use crate::gemm::{MatRef, gemm, gemm_serial};
use crate::reduce::{Reduced, reduce};
use crate::strided::{contiguous, contiguous_f32};
use crate::{conv, index, softmax, unary};
use firebrand_tensor::backend::{AttentionInputs, AttentionSpec, Backend, BackendStorage, Rows, Storage};
use firebrand_tensor::op::{BinaryOp, ReduceOp, UnaryOp, Window2d};
use firebrand_tensor::pool::take_f32;
use firebrand_tensor::{CpuStorage, Device, Error, Layout, Result};

/// The CPU backend (a unit value; use [`CPU`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

/// The CPU backend.
pub static CPU: CpuBackend = CpuBackend;

/// Batches with at most this many multiply-adds per matrix run in parallel over
/// the batch (each gemm on one thread) instead of threading each gemm.
const BATCH_PAR_MAX_MACS: usize = 1 << 18;

fn cpu<'a>(s: &'a dyn BackendStorage, op: &'static str) -> Result<&'a CpuStorage> {
    s.as_any().downcast_ref::<CpuStorage>().ok_or(Error::DeviceMismatch { op, lhs: Device::Cpu, rhs: s.device() })
}

/// The `f32` buffer of a CPU storage.
///
/// # Errors
/// When the storage is not a CPU `f32` buffer.
pub fn f32s<'a>(s: &'a dyn BackendStorage, op: &'static str) -> Result<&'a [f32]> {
    match cpu(s, op)? {
        CpuStorage::F32(v) => Ok(v),
        other => Err(Error::DType { op, got: other.dtype(), expected: "f32" }),
    }
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

/// An attention call's operands as CPU slices.
fn operands<'a>(x: &AttentionInputs<'a>) -> Result<crate::attention::Operands<'a>> {
    let op = "attention";
    Ok(crate::attention::Operands {
        q: f32s(x.q, op)?,
        q_at: x.q_at,
        k: f32s(x.k, op)?,
        k_at: x.k_at,
        v: f32s(x.v, op)?,
        v_at: x.v_at,
        key_padding: x.key_padding.map(|p| f32s(p, op)).transpose()?,
        attn_mask: x.attn_mask.map(|m| f32s(m, op)).transpose()?,
    })
}

fn boxed(v: Vec<f32>) -> Result<Storage> {
    Ok(Box::new(CpuStorage::F32(v)))
}

/// Runs `f` on the elements of `l` in row-major order, borrowing when contiguous.
fn with_contiguous<R>(x: &[f32], l: &Layout, f: impl FnOnce(&[f32]) -> R) -> R {
    match l.contiguous_range() {
        Some(r) => f(&x[r]),
        None => f(&contiguous_f32(x, l)),
    }
}

impl Backend for CpuBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn upload(&self, data: CpuStorage) -> Result<Storage> {
        Ok(Box::new(data))
    }

    fn contiguous(&self, x: &dyn BackendStorage, l: &Layout) -> Result<Storage> {
        Ok(Box::new(match cpu(x, "contiguous")? {
            CpuStorage::F32(v) => CpuStorage::F32(contiguous_f32(v, l)),
            CpuStorage::I64(v) => CpuStorage::I64(contiguous(v, l)),
            _ => unreachable!("every CPU storage type is handled"),
        }))
    }

    fn unary(&self, op: UnaryOp, x: &dyn BackendStorage, l: &Layout) -> Result<Storage> {
        boxed(unary::unary_map(op, f32s(x, op.name())?, l))
    }

    fn unary_backward(
        &self,
        op: UnaryOp,
        x: &dyn BackendStorage,
        y: &dyn BackendStorage,
        g: &dyn BackendStorage,
    ) -> Result<Storage> {
        let n = op.name();
        boxed(unary::unary_backward(op, f32s(x, n)?, f32s(y, n)?, f32s(g, n)?))
    }

    fn binary(
        &self,
        op: BinaryOp,
        a: &dyn BackendStorage,
        la: &Layout,
        b: &dyn BackendStorage,
        lb: &Layout,
    ) -> Result<Storage> {
        boxed(binary_map(op, f32s(a, op.name())?, la, f32s(b, op.name())?, lb))
    }

    fn reduce(&self, op: ReduceOp, x: &dyn BackendStorage, l: &Layout, axes: &[bool]) -> Result<Storage> {
        Ok(match reduce(op, f32s(x, op.name())?, l, axes) {
            Reduced::Values(v) => Box::new(CpuStorage::F32(v)),
            Reduced::Indices(v) => Box::new(CpuStorage::I64(v)),
        })
    }

    fn matmul(&self, a: &dyn BackendStorage, la: &Layout, b: &dyn BackendStorage, lb: &Layout) -> Result<Storage> {
        boxed(batched_gemm(f32s(a, "matmul")?, la, f32s(b, "matmul")?, lb))
    }

    fn softmax(&self, x: &dyn BackendStorage, l: &Layout, log: bool) -> Result<Storage> {
        let cols = l.dims().last().copied().unwrap_or(1);
        let f = if log { softmax::log_softmax_rows } else { softmax::softmax_rows };
        boxed(with_contiguous(f32s(x, "softmax")?, l, |v| f(v, cols)))
    }

    fn softmax_backward(
        &self,
        y: &dyn BackendStorage,
        g: &dyn BackendStorage,
        cols: usize,
        log: bool,
    ) -> Result<Storage> {
        let f = if log { softmax::log_softmax_backward_rows } else { softmax::softmax_backward_rows };
        boxed(f(f32s(y, "softmax_backward")?, f32s(g, "softmax_backward")?, cols))
    }

    fn index_select(&self, x: &dyn BackendStorage, l: &Layout, d: usize, idx: &dyn BackendStorage) -> Result<Storage> {
        let dims = l.dims();
        let (o, n, i) = (dims[..d].iter().product(), dims[d], dims[d + 1..].iter().product());
        let idx = i64s(idx, "index_select")?;
        Ok(match cpu(x, "index_select")? {
            CpuStorage::F32(v) => {
                Box::new(CpuStorage::F32(with_contiguous(v, l, |v| index::index_select(v, o, n, i, idx))?))
            }
            // A contiguous source is read in place: a batch gathered from a large
            // id table must not copy the whole table first.
            CpuStorage::I64(v) => Box::new(CpuStorage::I64(match l.contiguous_range() {
                Some(r) => index::index_select(&v[r], o, n, i, idx)?,
                None => index::index_select(&contiguous(v, l), o, n, i, idx)?,
            })),
            _ => unreachable!("every CPU storage type is handled"),
        })
    }

    fn index_add(
        &self,
        src: &dyn BackendStorage,
        outer: usize,
        size: usize,
        inner: usize,
        idx: &dyn BackendStorage,
    ) -> Result<Storage> {
        boxed(index::index_add(f32s(src, "index_add")?, outer, size, inner, i64s(idx, "index_add")?)?)
    }

    fn gather(
        &self,
        x: &dyn BackendStorage,
        outer: usize,
        size: usize,
        inner: usize,
        index: &dyn BackendStorage,
    ) -> Result<Storage> {
        boxed(index::gather(f32s(x, "gather")?, outer, size, inner, i64s(index, "gather")?)?)
    }

    fn scatter_add(
        &self,
        src: &dyn BackendStorage,
        outer: usize,
        size: usize,
        inner: usize,
        index: &dyn BackendStorage,
    ) -> Result<Storage> {
        boxed(index::scatter_add(f32s(src, "scatter_add")?, outer, size, inner, i64s(index, "scatter_add")?)?)
    }

    fn concat(&self, parts: &[&dyn BackendStorage], outer: usize, sizes: &[usize], inner: usize) -> Result<Storage> {
        if parts.iter().all(|p| p.dtype() == firebrand_tensor::DType::I64) {
            let v: Vec<&[i64]> = parts.iter().map(|p| i64s(*p, "cat")).collect::<Result<_>>()?;
            return Ok(Box::new(CpuStorage::I64(index::concat(&v, outer, sizes, inner))));
        }
        let v: Vec<&[f32]> = parts.iter().map(|p| f32s(*p, "cat")).collect::<Result<_>>()?;
        boxed(index::concat_f32(&v, outer, sizes, inner))
    }

    fn where_select(
        &self,
        cond: &dyn BackendStorage,
        a: &dyn BackendStorage,
        b: &dyn BackendStorage,
    ) -> Result<Storage> {
        boxed(index::where_select(f32s(cond, "where")?, f32s(a, "where")?, f32s(b, "where")?))
    }

    fn im2col(&self, x: &dyn BackendStorage, [n, c, h, w]: [usize; 4], win: &Window2d) -> Result<Storage> {
        boxed(conv::im2col(f32s(x, "im2col")?, n, c, h, w, win))
    }

    fn col2im(&self, cols: &dyn BackendStorage, [n, c, h, w]: [usize; 4], win: &Window2d) -> Result<Storage> {
        boxed(conv::col2im(f32s(cols, "col2im")?, n, c, h, w, win))
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
        boxed(crate::recurrent::lstm_cell(f32s(xw, op)?, xw_at, f32s(hw, op)?, f32s(c_prev, op)?, c_at, b, h))
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
        boxed(crate::recurrent::lstm_cell_backward(
            f32s(state, op)?,
            f32s(c_prev, op)?,
            c_at,
            f32s(g_out, op)?,
            g_at,
            f32s(dh_next, op)?,
            f32s(dc_next, op)?,
            dc_at,
            b,
            h,
        ))
    }

    fn bias_act_to_nchw(
        &self,
        yt: &dyn BackendStorage,
        bias: Option<&dyn BackendStorage>,
        n: usize,
        l: usize,
        c: usize,
        relu: bool,
    ) -> Result<Storage> {
        let op = "conv2d epilogue";
        let bias = bias.map(|b| f32s(b, op)).transpose()?;
        boxed(conv::bias_act_to_nchw(f32s(yt, op)?, bias, n, l, c, relu))
    }

    fn bias_act_to_nchw_backward(
        &self,
        g: &dyn BackendStorage,
        y: &dyn BackendStorage,
        n: usize,
        l: usize,
        c: usize,
        relu: bool,
    ) -> Result<(Storage, Storage)> {
        let op = "conv2d epilogue backward";
        let (dyt, db) = conv::bias_act_to_nchw_backward(f32s(g, op)?, f32s(y, op)?, n, l, c, relu);
        Ok((Box::new(CpuStorage::F32(dyt)), Box::new(CpuStorage::F32(db))))
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
        let (y, stats) = crate::norm::layer_norm(f32s(x, op)?, w, b, rows, cols, eps);
        Ok((boxed(y)?, boxed(stats)?))
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
        let (dx, dwb) = crate::norm::layer_norm_backward(f32s(x, op)?, w, f32s(stats, op)?, f32s(g, op)?, rows, cols);
        Ok((boxed(dx)?, boxed(dwb)?))
    }

    fn attention(&self, x: &AttentionInputs<'_>, spec: &AttentionSpec) -> Result<(Storage, Storage)> {
        let (out, lse) = crate::attention::attention(&operands(x)?, spec);
        Ok((boxed(out)?, boxed(lse)?))
    }

    fn attention_backward(
        &self,
        x: &AttentionInputs<'_>,
        spec: &AttentionSpec,
        out: &dyn BackendStorage,
        lse: &dyn BackendStorage,
        g: &dyn BackendStorage,
    ) -> Result<(Storage, Storage, Storage)> {
        let op = "attention_backward";
        let (dq, dk, dv) =
            crate::attention::attention_backward(&operands(x)?, spec, f32s(out, op)?, f32s(lse, op)?, f32s(g, op)?);
        Ok((boxed(dq)?, boxed(dk)?, boxed(dv)?))
    }

    fn max_pool2d(
        &self,
        x: &dyn BackendStorage,
        [n, c, h, w]: [usize; 4],
        win: &Window2d,
    ) -> Result<(Storage, Storage)> {
        let (v, i) = conv::max_pool2d(f32s(x, "max_pool2d")?, n, c, h, w, win);
        Ok((Box::new(CpuStorage::F32(v)), Box::new(CpuStorage::I64(i))))
    }

    fn max_pool2d_backward(
        &self,
        g: &dyn BackendStorage,
        idx: &dyn BackendStorage,
        [n, c, h, w]: [usize; 4],
        win: &Window2d,
    ) -> Result<Storage> {
        let op = "max_pool2d_backward";
        boxed(conv::max_pool2d_backward(f32s(g, op)?, i64s(idx, op)?, n, c, h, w, win))
    }

    fn avg_pool2d(
        &self,
        x: &dyn BackendStorage,
        [n, c, h, w]: [usize; 4],
        win: &Window2d,
        cip: bool,
    ) -> Result<Storage> {
        boxed(conv::avg_pool2d(f32s(x, "avg_pool2d")?, n, c, h, w, win, cip))
    }

    fn avg_pool2d_backward(
        &self,
        g: &dyn BackendStorage,
        [n, c, h, w]: [usize; 4],
        win: &Window2d,
        cip: bool,
    ) -> Result<Storage> {
        boxed(conv::avg_pool2d_backward(f32s(g, "avg_pool2d_backward")?, n, c, h, w, win, cip))
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
    if nb > 1 && m * n * k <= BATCH_PAR_MAX_MACS && crate::parallel::num_threads() > 1 {
        crate::parallel::par_chunks_mut(&mut out, m * n, |bi, c| one(bi, c, true));
    } else {
        out.chunks_mut(m * n).enumerate().for_each(|(bi, c)| one(bi, c, false));
    }
    out
}
