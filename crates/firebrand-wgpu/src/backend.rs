//! `WgpuBackend`: the [`Backend`] primitives on one adapter, and its storage.

use crate::gpu::Gpu;
use crate::kernels;
use firebrand_tensor::backend::{
    AttentionInputs, AttentionSpec, Backend, BackendStorage, Fused, HeadOrder, MemoryStats, Rows, Storage,
};
use firebrand_tensor::op::{BinaryOp, ReduceOp, UnaryOp, Window2d};
use firebrand_tensor::{CpuStorage, DType, Device, Error, Layout, Result};
use std::any::Any;
use std::mem::ManuallyDrop;
use std::sync::Arc;

/// A tensor's buffer on an adapter: `len` elements of `dtype`, one 32-bit
/// word each (`bool` as 0/1, `i32`, `f32`), or two for `i64` (low word first).
pub struct WgpuStorage {
    /// Returned to the device's pool when the storage drops.
    pub(crate) buf: ManuallyDrop<wgpu::Buffer>,
    pub(crate) len: usize,
    pub(crate) dtype: DType,
    pub(crate) gpu: Arc<Gpu>,
}

impl WgpuStorage {
    /// A tensor's storage of `buf`, counted in the device's memory.
    pub(crate) fn new(buf: wgpu::Buffer, len: usize, dtype: DType, gpu: Arc<Gpu>) -> WgpuStorage {
        gpu.hold(buf.size());
        WgpuStorage { buf: ManuallyDrop::new(buf), len, dtype, gpu }
    }
}

impl Drop for WgpuStorage {
    fn drop(&mut self) {
        self.gpu.release(self.buf.size());
        // SAFETY: `buf` is taken once, here, and never used again.
        let buf = unsafe { ManuallyDrop::take(&mut self.buf) };
        self.gpu.recycle(buf);
    }
}

impl std::fmt::Debug for WgpuStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgpuStorage({} x {} on {:?})", self.len, self.dtype, self.gpu)
    }
}

/// Words per element of the dtypes a device holds; `None` for the others.
pub(crate) fn words_of(dtype: DType) -> Option<u32> {
    match dtype {
        DType::F32 | DType::Bool | DType::I32 => Some(1),
        DType::I64 => Some(2),
        _ => None,
    }
}

/// True for the dtypes stored two to a word (`f16`, `bf16`): storage only
/// on this device (upload, readback, copies, `to_dtype`).
pub(crate) fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

/// The words per element of a dtype the kernels compute on, or a typed
/// error (half-precision tensors must be converted first).
pub(crate) fn element_words(dtype: DType, op: &'static str) -> Result<u32> {
    words_of(dtype).ok_or(Error::DType { op, got: dtype, expected: COMPUTE_DTYPES })
}

/// What the kernels compute on, for the errors.
pub(crate) const COMPUTE_DTYPES: &str =
    "f32, i64, i32 or bool (on wgpu; f16 and bf16 tensors are stored there: `to_dtype(F32)` to compute)";

/// Bytes of `len` elements of a device dtype.
fn bytes_of(len: usize, dtype: DType) -> u64 {
    match words_of(dtype) {
        Some(w) => len as u64 * w as u64 * 4,
        None => (len as u64 * 2).next_multiple_of(4),
    }
}

/// The kernel-source name of a device dtype.
pub(crate) fn kind_of(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::Bool => "bool",
        DType::I32 => "i32",
        _ => "i64",
    }
}

impl BackendStorage for WgpuStorage {
    fn device(&self) -> Device {
        self.gpu.id()
    }
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
    fn to_cpu(&self) -> CpuStorage {
        if is_half(self.dtype) {
            let words = self.gpu.read_words(&self.buf, self.len.div_ceil(2));
            let bits = words.iter().flat_map(|&w| [w as u16, (w >> 16) as u16]).take(self.len);
            return match self.dtype {
                DType::F16 => CpuStorage::F16(bits.map(half::f16::from_bits).collect()),
                _ => CpuStorage::BF16(bits.map(half::bf16::from_bits).collect()),
            };
        }
        let w = words_of(self.dtype).expect("device dtype") as usize;
        let words = self.gpu.read_words(&self.buf, self.len * w);
        match self.dtype {
            DType::F32 => CpuStorage::F32(words.iter().map(|&b| f32::from_bits(b)).collect()),
            DType::Bool => CpuStorage::Bool(words.iter().map(|&b| b != 0).collect()),
            DType::I32 => CpuStorage::I32(words.iter().map(|&b| b as i32).collect()),
            _ => CpuStorage::I64(words.chunks_exact(2).map(|p| (p[0] as u64 | (p[1] as u64) << 32) as i64).collect()),
        }
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The backend of one adapter (`Device::Wgpu(n)`).
pub struct WgpuBackend {
    pub(crate) gpu: Arc<Gpu>,
}

/// Layout words for a kernel's `params` (the kernels' `strided`):
/// `[rank, offset, dims…, strides…]`.
fn strided_words(dims: &[usize], strides: &[usize], offset: usize, op: &'static str) -> Result<Vec<u32>> {
    let mut w = vec![u32_of(dims.len(), op)?, u32_of(offset, op)?];
    for &v in dims.iter().chain(strides) {
        w.push(u32_of(v, op)?);
    }
    Ok(w)
}

/// [`strided_words`] of a whole layout.
pub(crate) fn layout_words(l: &Layout, op: &'static str) -> Result<Vec<u32>> {
    strided_words(l.dims(), l.strides(), l.offset(), op)
}

pub(crate) fn u32_of(v: usize, op: &'static str) -> Result<u32> {
    u32::try_from(v)
        .map_err(|_| Error::msg(op, format!("wgpu: {v} is beyond the 32-bit indices of the device kernels")))
}

/// How the blocked matmul loads each operand: `vec4`s along a contiguous
/// dim when every address of a vector is a multiple of 4 (the offset, the
/// batch strides, the other dim's stride and the vector dim's size), else scalars.
fn tile_loads(la: &Layout, lb: &Layout) -> (kernels::TileLoad, kernels::TileLoad) {
    use kernels::TileLoad::{Scalar, Vec4AlongK, Vec4AlongOut};
    let r = la.dims().len();
    let aligned = |l: &Layout| l.offset().is_multiple_of(4) && l.strides()[..r - 2].iter().all(|s| s.is_multiple_of(4));
    // (rows, cols) of a matrix operand and the load along its cols, then its rows.
    let pick = |l: &Layout, along_cols, along_rows| {
        let (d, s) = (&l.dims()[r - 2..], &l.strides()[r - 2..]);
        if !aligned(l) {
            Scalar
        } else if s[1] == 1 && s[0].is_multiple_of(4) && d[1].is_multiple_of(4) {
            along_cols
        } else if s[0] == 1 && s[1].is_multiple_of(4) && d[0].is_multiple_of(4) {
            along_rows
        } else {
            Scalar
        }
    };
    // A is (m, k): its cols are k. B is (k, n): its cols are n.
    (pick(la, Vec4AlongK, Vec4AlongOut), pick(lb, Vec4AlongOut, Vec4AlongK))
}

impl WgpuBackend {
    /// A reduction of `f32` or (`int`) `i64` elements.
    fn reduce_(&self, op: ReduceOp, x: &WgpuStorage, l: &Layout, axes: &[bool], int: bool) -> Result<WgpuStorage> {
        let name = op.name();
        let (dims, strides) = (l.dims(), l.strides());
        if axes.len() != dims.len() {
            return Err(Error::msg(name, format!("{} axis flags for rank {}", axes.len(), dims.len())));
        }
        if int && op == ReduceOp::Prod {
            return Err(Error::DType { op: name, got: x.dtype, expected: "f32 (no integer product on wgpu)" });
        }
        let pick = |red: bool| -> (Vec<usize>, Vec<usize>) {
            (0..dims.len()).filter(|&d| axes[d] == red).map(|d| (dims[d], strides[d])).unzip()
        };
        let ((kd, ks), (rd, rs)) = (pick(false), pick(true));
        let (n_out, n_red): (usize, usize) = (kd.iter().product(), rd.iter().product());
        if n_red == 0 && !matches!(op, ReduceOp::Sum | ReduceOp::Prod) {
            return Err(Error::msg(name, "reducing an empty dimension".to_string()));
        }
        let kept = strided_words(&kd, &ks, l.offset(), name)?;
        let at_r = 2 + kept.len() as u32;
        let mut p = vec![u32_of(n_out, name)?, u32_of(n_red, name)?];
        p.extend(kept);
        p.extend(strided_words(&rd, &rs, 0, name)?);
        let arg = matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin);
        let out_dt = if arg || int { DType::I64 } else { DType::F32 };
        let out = self.new_storage(n_out, out_dt, name)?;
        let pb = self.gpu.upload_words(&p, name)?;
        let src = if int { kernels::reduce_i64(op, at_r) } else { kernels::reduce(op, at_r) };
        self.gpu.dispatch(&src, &[&x.buf, &out.buf, &pb], Gpu::groups_1d(n_out));
        Ok(out)
    }

    pub(crate) fn storage<'a>(&self, s: &'a dyn BackendStorage, op: &'static str) -> Result<&'a WgpuStorage> {
        match s.as_any().downcast_ref::<WgpuStorage>() {
            Some(w) if w.gpu.index == self.gpu.index => Ok(w),
            _ => Err(Error::DeviceMismatch { op, lhs: self.gpu.id(), rhs: s.device() }),
        }
    }

    pub(crate) fn f32s<'a>(&self, s: &'a dyn BackendStorage, op: &'static str) -> Result<&'a WgpuStorage> {
        let w = self.storage(s, op)?;
        if w.dtype != DType::F32 {
            return Err(Error::DType {
                op,
                got: w.dtype,
                expected: "f32 (on wgpu; f16 and bf16 tensors are stored there: `to_dtype(F32)` to compute)",
            });
        }
        Ok(w)
    }

    /// [`WgpuBackend::new_storage`] of zeros.
    pub(crate) fn zeros_storage(&self, len: usize, dtype: DType, op: &'static str) -> Result<WgpuStorage> {
        Ok(WgpuStorage::new(self.gpu.take_buffer(bytes_of(len, dtype), true, op)?, len, dtype, self.gpu.clone()))
    }

    pub(crate) fn new_storage(&self, len: usize, dtype: DType, op: &'static str) -> Result<WgpuStorage> {
        Ok(WgpuStorage::new(self.gpu.take_buffer(bytes_of(len, dtype), false, op)?, len, dtype, self.gpu.clone()))
    }

    /// Runs `source`, a kernel reading `x` through `l`, into a new contiguous
    /// storage of `dtype` (params `[n, layout…]`).
    fn map_layout(
        &self,
        source: &str,
        x: &WgpuStorage,
        l: &Layout,
        dtype: DType,
        op: &'static str,
    ) -> Result<WgpuStorage> {
        let n = l.elem_count();
        let out = self.new_storage(n, dtype, op)?;
        let mut p = vec![u32_of(n, op)?];
        p.extend(layout_words(l, op)?);
        let pb = self.gpu.upload_words(&p, op)?;
        self.gpu.dispatch(source, &[&x.buf, &out.buf, &pb], Gpu::groups_1d(n));
        Ok(out)
    }

    /// `x` through `l` as a new contiguous storage of its own dtype.
    pub(crate) fn copy(&self, x: &WgpuStorage, l: &Layout, op: &'static str) -> Result<WgpuStorage> {
        match words_of(x.dtype) {
            Some(words) => self.map_layout(&kernels::copy(words), x, l, x.dtype, op),
            None => self.map_layout(&kernels::copy_half(), x, l, x.dtype, op),
        }
    }

    /// `x` through `l` as contiguous `f32`s (a copy for `f32`, widened for
    /// halves, converted for the others).
    fn to_f32(&self, x: &WgpuStorage, l: &Layout, op: &'static str) -> Result<WgpuStorage> {
        if is_half(x.dtype) {
            return self.map_layout(&kernels::half_to_f32(x.dtype == DType::BF16), x, l, DType::F32, op);
        }
        let dense = self.copy(x, l, op)?;
        if x.dtype == DType::F32 {
            return Ok(dense);
        }
        self.convert(&dense, DType::F32, op)
    }

    /// A contiguous storage of a computing dtype converted to `dtype` (any device dtype).
    fn convert(&self, dense: &WgpuStorage, dtype: DType, op: &'static str) -> Result<WgpuStorage> {
        let n = dense.len;
        let out = self.new_storage(n, dtype, op)?;
        let pb = self.gpu.upload_words(&[u32_of(n, op)?], op)?;
        let (src, threads) = if is_half(dtype) {
            (kernels::f32_to_half(dtype == DType::BF16), n.div_ceil(2))
        } else {
            (kernels::convert(kind_of(dense.dtype), kind_of(dtype)), n)
        };
        self.gpu.dispatch(&src, &[&dense.buf, &out.buf, &pb], Gpu::groups_1d(threads));
        Ok(out)
    }
}

impl Backend for WgpuBackend {
    fn device(&self) -> Device {
        self.gpu.id()
    }

    fn max_buffer_bytes(&self) -> u64 {
        self.gpu.max_buffer_bytes()
    }

    fn has_fused(&self, op: Fused) -> bool {
        matches!(
            op,
            Fused::LayerNorm
                | Fused::ConvEpilogue
                | Fused::ChannelAffine
                | Fused::LstmCell
                | Fused::BatchNorm
                | Fused::DepthwiseConv
                | Fused::Attention
        )
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
        Ok(Box::new(self.depthwise_conv2d_(x, weight, bias, dims, multiplier, win, act)?))
    }

    fn depthwise_conv2d_backward(
        &self,
        g: &dyn BackendStorage,
        x: &dyn BackendStorage,
        weight: &dyn BackendStorage,
        dims: [usize; 4],
        multiplier: usize,
        win: &Window2d,
        need: [bool; 2],
    ) -> Result<(Option<Storage>, Option<Storage>)> {
        let (dx, dw) = self.depthwise_conv2d_backward_(g, x, weight, dims, multiplier, win, need)?;
        let boxed = |s: Option<WgpuStorage>| s.map(|s| Box::new(s) as Storage);
        Ok((boxed(dx), boxed(dw)))
    }

    fn batch_norm_stats(&self, x: &dyn BackendStorage, dims: [usize; 3]) -> Result<Storage> {
        Ok(Box::new(self.batch_norm_stats_(x, dims)?))
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
        let (dx, daff) = self.batch_norm_backward_(g, x, stats, weight, dims, act)?;
        Ok((Box::new(dx), Box::new(daff)))
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
        Ok(Box::new(self.lstm_cell_(xw, xw_at, hw, c_prev, c_at, b, h)?))
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
        Ok(Box::new(self.lstm_cell_backward_(state, c_prev, c_at, g_out, g_at, dh_next, dc_next, dc_at, b, h)?))
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
        Ok(Box::new(self.bias_act_to_nchw_(yt, bias, [n, l, c], act)?))
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
        let (dyt, db) = self.bias_act_to_nchw_backward_(g, y, [n, l, c], act)?;
        Ok((Box::new(dyt), Box::new(db)))
    }

    fn channel_affine(
        &self,
        x: &dyn BackendStorage,
        scale: Option<&dyn BackendStorage>,
        shift: Option<&dyn BackendStorage>,
        dims: [usize; 3],
        act: Option<UnaryOp>,
    ) -> Result<Storage> {
        Ok(Box::new(self.channel_affine_(x, scale, shift, dims, act)?))
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
        let (dx, ds, dt) = self.channel_affine_backward_(g, x, y, scale, dims, act, need)?;
        let boxed = |s: Option<WgpuStorage>| s.map(|s| Box::new(s) as Storage);
        Ok((boxed(dx), boxed(ds), boxed(dt)))
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
        let (y, stats) = self.layer_norm_(x, weight, bias, [rows, cols], eps)?;
        Ok((Box::new(y), Box::new(stats)))
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
        let (dx, dwb) = self.layer_norm_backward_(x, weight, stats, g, [rows, cols])?;
        Ok((Box::new(dx), Box::new(dwb)))
    }

    fn attention(&self, x: &AttentionInputs<'_>, spec: &AttentionSpec) -> Result<(Storage, Storage)> {
        let (out, lse) = self.attention_(x, spec)?;
        Ok((Box::new(out), Box::new(lse)))
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
        let (dq, dk, dv) = self.attention_backward_(x, spec, out, lse, g, orders)?;
        Ok((Box::new(dq), Box::new(dk), Box::new(dv)))
    }

    fn synchronize(&self) -> Result<()> {
        self.gpu.wait()
    }

    fn memory(&self) -> Option<MemoryStats> {
        let (live_bytes, peak_bytes) = self.gpu.memory();
        Some(MemoryStats { live_bytes, peak_bytes })
    }

    fn reset_peak_memory(&self) {
        self.gpu.reset_peak();
    }

    fn upload(&self, data: CpuStorage) -> Result<Storage> {
        let op = "to_device";
        let halves =
            |bits: Vec<u16>| bits.chunks(2).map(|p| p[0] as u32 | (*p.get(1).unwrap_or(&0) as u32) << 16).collect();
        let (dtype, words): (DType, Vec<u32>) = match &data {
            CpuStorage::F32(v) => (DType::F32, v.iter().map(|x| x.to_bits()).collect()),
            CpuStorage::F16(v) => (DType::F16, halves(v.iter().map(|x| x.to_bits()).collect())),
            CpuStorage::BF16(v) => (DType::BF16, halves(v.iter().map(|x| x.to_bits()).collect())),
            CpuStorage::Bool(v) => (DType::Bool, v.iter().map(|&b| b as u32).collect()),
            CpuStorage::I32(v) => (DType::I32, v.iter().map(|&x| x as u32).collect()),
            CpuStorage::I64(v) => (DType::I64, v.iter().flat_map(|&x| [x as u32, (x >> 32) as u32]).collect()),
            other => {
                return Err(Error::DType {
                    op,
                    got: other.dtype(),
                    expected: "f32, f16, bf16, i64, i32 or bool (on wgpu)",
                });
            }
        };
        let len = data.len();
        Ok(Box::new(WgpuStorage::new(self.gpu.upload_words(&words, op)?, len, dtype, self.gpu.clone())))
    }

    fn contiguous(&self, x: &dyn BackendStorage, l: &Layout) -> Result<Storage> {
        let x = self.storage(x, "contiguous")?;
        Ok(Box::new(self.copy(x, l, "contiguous")?))
    }

    fn to_dtype(&self, x: &dyn BackendStorage, l: &Layout, dtype: DType) -> Result<Storage> {
        let op = "to_dtype";
        let x = self.storage(x, op)?;
        if words_of(dtype).is_none() && !is_half(dtype) {
            return Err(Error::DType { op, got: dtype, expected: "f32, f16, bf16, i64, i32 or bool (on wgpu)" });
        }
        if dtype == x.dtype {
            return Ok(Box::new(self.copy(x, l, op)?));
        }
        // Halves go through f32 either way; the other dtypes convert directly.
        let dense = if is_half(x.dtype) || is_half(dtype) { self.to_f32(x, l, op)? } else { self.copy(x, l, op)? };
        if dense.dtype == dtype {
            return Ok(Box::new(dense));
        }
        Ok(Box::new(self.convert(&dense, dtype, op)?))
    }

    fn unary(&self, op: UnaryOp, x: &dyn BackendStorage, l: &Layout) -> Result<Storage> {
        let name = "unary";
        let x = self.f32s(x, name)?;
        Ok(Box::new(self.map_layout(&kernels::unary(op), x, l, DType::F32, name)?))
    }

    fn unary_backward(
        &self,
        op: UnaryOp,
        x: &dyn BackendStorage,
        y: &dyn BackendStorage,
        g: &dyn BackendStorage,
    ) -> Result<Storage> {
        let name = "unary_backward";
        let (x, y, g) = (self.f32s(x, name)?, self.f32s(y, name)?, self.f32s(g, name)?);
        if x.len != y.len || y.len != g.len {
            return Err(Error::msg(name, format!("lengths {}, {} and {} differ", x.len, y.len, g.len)));
        }
        let out = self.new_storage(g.len, DType::F32, name)?;
        let pb = self.gpu.upload_words(&[u32_of(g.len, name)?], name)?;
        self.gpu.dispatch(
            &kernels::unary_backward(op),
            &[&x.buf, &y.buf, &g.buf, &out.buf, &pb],
            Gpu::groups_1d(g.len),
        );
        Ok(Box::new(out))
    }

    fn binary(
        &self,
        op: BinaryOp,
        a: &dyn BackendStorage,
        la: &Layout,
        b: &dyn BackendStorage,
        lb: &Layout,
    ) -> Result<Storage> {
        let name = op.name();
        let (a, b) = (self.storage(a, name)?, self.storage(b, name)?);
        if la.dims() != lb.dims() {
            return Err(Error::msg(name, format!("operands {:?} and {:?} are not broadcast", la.dims(), lb.dims())));
        }
        if a.dtype != b.dtype {
            return Err(Error::msg(
                name,
                format!("operands of dtypes {} and {} (promote them first)", a.dtype, b.dtype),
            ));
        }
        let dt = a.dtype;
        match dt {
            DType::F32 => {}
            DType::I64 if !matches!(op, BinaryOp::Div | BinaryOp::Pow) => {}
            DType::Bool if op == BinaryOp::Sub => {
                return Err(Error::msg(name, "subtracting bool tensors is not supported; use logical_xor or ne"));
            }
            // Bool and i32: exactly through i64 (wrapping like the CPU), back to their dtype.
            DType::Bool | DType::I32 if !matches!(op, BinaryOp::Div | BinaryOp::Pow) => {
                let (wa, wb) = (self.to_dtype(a, la, DType::I64)?, self.to_dtype(b, lb, DType::I64)?);
                let dense = Layout::contiguous(la.shape().clone());
                let r = self.binary(op, &*wa, &dense, &*wb, &dense)?;
                if op.is_comparison() {
                    return Ok(r);
                }
                return self.to_dtype(&*r, &dense, dt);
            }
            _ => {
                return Err(Error::DType {
                    op: name,
                    got: dt,
                    expected: "f32, or for all but div and pow i64, i32 or bool (on wgpu)",
                });
            }
        }
        let n = la.elem_count();
        let out_dt = if op.is_comparison() { DType::Bool } else { dt };
        let out = self.new_storage(n, out_dt, name)?;
        let wa = layout_words(la, name)?;
        let at_b = 1 + wa.len() as u32;
        let mut p = vec![u32_of(n, name)?];
        p.extend(wa);
        p.extend(layout_words(lb, name)?);
        let pb = self.gpu.upload_words(&p, name)?;
        let src = if dt == DType::I64 { kernels::binary_i64(op, at_b) } else { kernels::binary(op, at_b) };
        self.gpu.dispatch(&src, &[&a.buf, &b.buf, &out.buf, &pb], Gpu::groups_1d(n));
        Ok(Box::new(out))
    }

    fn reduce(&self, op: ReduceOp, x: &dyn BackendStorage, l: &Layout, axes: &[bool]) -> Result<Storage> {
        let name = op.name();
        let x = self.storage(x, name)?;
        let arg = matches!(op, ReduceOp::ArgMax | ReduceOp::ArgMin);
        match x.dtype {
            DType::F32 => Ok(Box::new(self.reduce_(op, x, l, axes, false)?)),
            DType::I64 => Ok(Box::new(self.reduce_(op, x, l, axes, true)?)),
            dt if is_half(dt) => Err(Error::DType { op: name, got: dt, expected: COMPUTE_DTYPES }),
            // Bool and i32: exactly through i64, back to the input's dtype.
            dt => {
                let wide = self.to_dtype(x, l, DType::I64)?;
                let dense = Layout::contiguous(l.shape().clone());
                let r = self.reduce(op, &*wide, &dense, axes)?;
                if arg { Ok(r) } else { self.to_dtype(&*r, &Layout::contiguous([r.len()]), dt) }
            }
        }
    }

    fn matmul(&self, a: &dyn BackendStorage, la: &Layout, b: &dyn BackendStorage, lb: &Layout) -> Result<Storage> {
        let name = "matmul";
        let (a, b) = (self.f32s(a, name)?, self.f32s(b, name)?);
        let r = la.dims().len();
        let (m, k, n) = (la.dims()[r - 2], la.dims()[r - 1], lb.dims()[r - 1]);
        let batch: usize = la.dims()[..r - 2].iter().product();
        let out = self.new_storage(batch * m * n, DType::F32, name)?;
        if batch * m * n == 0 {
            return Ok(Box::new(out));
        }
        if batch > 65_535 {
            return Err(Error::msg(name, format!("wgpu: a batch of {batch} matrices is beyond one dispatch")));
        }
        // The batch dims alone (offset 0: the matrix offsets come first).
        let batch_words = |l: &Layout| strided_words(&l.dims()[..r - 2], &l.strides()[..r - 2], 0, name);
        let (sa, sb) = (la.strides(), lb.strides());
        let mut p: Vec<u32> = [m, k, n, la.offset(), sa[r - 2], sa[r - 1], lb.offset(), sb[r - 2], sb[r - 1]]
            .iter()
            .map(|&v| u32_of(v, name))
            .collect::<Result<_>>()?;
        p.extend(batch_words(la)?);
        let at_bb = p.len() as u32;
        p.extend(batch_words(lb)?);
        let pb = self.gpu.upload_words(&p, name)?;
        // Register blocking pays once the product fills 64x64 tiles.
        let (src, tile) = if m >= kernels::BLOCK / 2 && n >= kernels::BLOCK / 2 && k >= 16 {
            let (load_a, load_b) = tile_loads(la, lb);
            (kernels::matmul_blocked(at_bb, load_a, load_b), kernels::BLOCK)
        } else {
            (kernels::matmul(at_bb), 16)
        };
        let groups = [n.div_ceil(tile) as u32, m.div_ceil(tile) as u32, batch as u32];
        self.gpu.dispatch(&src, &[&a.buf, &b.buf, &out.buf, &pb], groups);
        Ok(Box::new(out))
    }

    fn softmax(&self, x: &dyn BackendStorage, l: &Layout, log: bool) -> Result<Storage> {
        let name = "softmax";
        let x = self.f32s(x, name)?;
        let dense = self.copy(x, l, name)?;
        let cols = l.dims().last().copied().unwrap_or(1);
        let rows = dense.len.checked_div(cols).unwrap_or(0);
        let out = self.new_storage(dense.len, DType::F32, name)?;
        let pb = self.gpu.upload_words(&[u32_of(rows, name)?, u32_of(cols, name)?], name)?;
        self.gpu.dispatch(&kernels::softmax(log), &[&dense.buf, &out.buf, &pb], Gpu::spread(rows as u32));
        Ok(Box::new(out))
    }

    fn softmax_backward(
        &self,
        y: &dyn BackendStorage,
        g: &dyn BackendStorage,
        cols: usize,
        log: bool,
    ) -> Result<Storage> {
        let name = "softmax_backward";
        let (y, g) = (self.f32s(y, name)?, self.f32s(g, name)?);
        let rows = y.len.checked_div(cols).unwrap_or(0);
        let out = self.new_storage(y.len, DType::F32, name)?;
        let pb = self.gpu.upload_words(&[u32_of(rows, name)?, u32_of(cols, name)?], name)?;
        self.gpu.dispatch(&kernels::softmax_backward(log), &[&y.buf, &g.buf, &out.buf, &pb], Gpu::spread(rows as u32));
        Ok(Box::new(out))
    }

    fn index_select(&self, x: &dyn BackendStorage, l: &Layout, d: usize, idx: &dyn BackendStorage) -> Result<Storage> {
        Ok(Box::new(self.index_select_(x, l, d, idx)?))
    }
    fn index_add(
        &self,
        src: &dyn BackendStorage,
        outer: usize,
        size: usize,
        inner: usize,
        idx: &dyn BackendStorage,
    ) -> Result<Storage> {
        Ok(Box::new(self.scatter_add_(src, [outer, size, inner], idx, true, "index_add")?))
    }
    fn gather(
        &self,
        x: &dyn BackendStorage,
        outer: usize,
        size: usize,
        inner: usize,
        index: &dyn BackendStorage,
    ) -> Result<Storage> {
        Ok(Box::new(self.gather_(x, [outer, size, inner], index)?))
    }
    fn scatter_add(
        &self,
        src: &dyn BackendStorage,
        outer: usize,
        size: usize,
        inner: usize,
        index: &dyn BackendStorage,
    ) -> Result<Storage> {
        Ok(Box::new(self.scatter_add_(src, [outer, size, inner], index, false, "scatter_add")?))
    }
    fn concat(
        &self,
        parts: &[(&dyn BackendStorage, &Layout)],
        outer: usize,
        sizes: &[usize],
        inner: usize,
    ) -> Result<Storage> {
        Ok(Box::new(self.concat_(parts, outer, sizes, inner)?))
    }
    fn where_select(
        &self,
        cond: &dyn BackendStorage,
        a: &dyn BackendStorage,
        b: &dyn BackendStorage,
    ) -> Result<Storage> {
        Ok(Box::new(self.where_select_(cond, a, b)?))
    }
    fn im2col(&self, x: &dyn BackendStorage, dims: [usize; 4], win: &Window2d) -> Result<Storage> {
        Ok(Box::new(self.im2col_(x, dims, win)?))
    }
    fn col2im(&self, cols: &dyn BackendStorage, dims: [usize; 4], win: &Window2d) -> Result<Storage> {
        Ok(Box::new(self.col2im_(cols, dims, win)?))
    }
    fn max_pool2d(&self, x: &dyn BackendStorage, dims: [usize; 4], win: &Window2d) -> Result<(Storage, Storage)> {
        let (v, i) = self.max_pool2d_(x, dims, win)?;
        Ok((Box::new(v), Box::new(i)))
    }
    fn max_pool2d_backward(
        &self,
        g: &dyn BackendStorage,
        idx: &dyn BackendStorage,
        dims: [usize; 4],
        win: &Window2d,
    ) -> Result<Storage> {
        Ok(Box::new(self.max_pool2d_backward_(g, idx, dims, win)?))
    }
    fn avg_pool2d(&self, x: &dyn BackendStorage, dims: [usize; 4], win: &Window2d, cip: bool) -> Result<Storage> {
        Ok(Box::new(self.avg_pool2d_(x, dims, win, cip)?))
    }
    fn avg_pool2d_backward(
        &self,
        g: &dyn BackendStorage,
        dims: [usize; 4],
        win: &Window2d,
        cip: bool,
    ) -> Result<Storage> {
        Ok(Box::new(self.avg_pool2d_backward_(g, dims, win, cip)?))
    }
}
