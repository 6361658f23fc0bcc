//! The device-dispatch seam: the primitive op set a backend implements.
//!
//! A tensor's storage is a `Box<dyn BackendStorage>` owned by the backend of
//! its device. Every op of the `Tensor` API reaches its device's kernels only
//! through the [`Backend`] trait, so a new device (the optional wgpu crate) is
//! one more implementation of this trait plus a call to [`register_backend`],
//! and user code does not change. The CPU backend is `firebrand_ops::CpuBackend`.
//!
//! Layout conventions: operands come with their [`Layout`]s (any strides);
//! outputs are new contiguous storages. Binary and matmul operands arrive
//! already broadcast to a common shape (broadcast dims have stride 0).
//! Index arguments are `i64` storages.

use crate::op::{BinaryOp, ReduceOp, UnaryOp, Window2d};
use crate::{CpuStorage, DType, Device, Error, Layout, Result};
use std::any::Any;
use std::sync::RwLock;

/// A buffer owned by a backend.
pub trait BackendStorage: Any + Send + Sync + std::fmt::Debug {
    /// The device holding the buffer.
    fn device(&self) -> Device;
    /// The element type.
    fn dtype(&self) -> DType;
    /// Number of elements in the buffer.
    fn len(&self) -> usize;
    /// True when the buffer is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A host copy of the whole buffer.
    fn to_cpu(&self) -> CpuStorage;
    /// For downcasting to the concrete storage type.
    fn as_any(&self) -> &dyn Any;
    /// For downcasting to the concrete storage type, mutably.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A backend-owned buffer.
pub type Storage = Box<dyn BackendStorage>;

/// Where the rows of a `(B, W)` matrix sit in a buffer: row `r` starts at
/// `offset + r * stride` (a view into a larger tensor, read without a copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rows {
    /// Position of row 0.
    pub offset: usize,
    /// Distance between rows.
    pub stride: usize,
}

/// Where a `(B, heads, L, d)` attention operand sits in its buffer: element
/// `(b, h, l, c)` at `offset + b·batch + h·head + l·row + c` (the head dim is
/// contiguous; the rest may be any view, e.g. one third of a fused `(B, L, 3E)`
/// projection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLayout {
    /// Position of element `(0, 0, 0, 0)`.
    pub offset: usize,
    /// Distance between batch entries.
    pub batch: usize,
    /// Distance between heads.
    pub head: usize,
    /// Distance between positions.
    pub row: usize,
}

/// The order of a contiguous `(heads, L)` attention gradient within each
/// batch entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadOrder {
    /// `(B, L, heads, d)`: the order of a `(B, L, E)` projection's output,
    /// whose views the operands usually are.
    #[default]
    PositionsMajor,
    /// `(B, heads, L, d)`: the order of an operand that is itself a
    /// contiguous `(B, heads, L, d)` tensor.
    HeadsMajor,
}

/// Sizes and masking of one scaled-dot-product attention call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionSpec {
    /// Batch size `B`.
    pub batch: usize,
    /// Number of heads.
    pub heads: usize,
    /// Query positions `T`.
    pub q_len: usize,
    /// Key/value positions `S`.
    pub kv_len: usize,
    /// Head dim `d`.
    pub head_dim: usize,
    /// Factor on `q·k` (usually `1/√d`).
    pub scale: f32,
    /// `Some(offset)`: query `t` sees keys `j ≤ t + offset` only (causal).
    pub causal: Option<usize>,
    /// Dropout on the attention weights: `(p, seed)`. Weight `(b, h, t, s)`
    /// is kept when a counter-based hash of the seed and its index clears
    /// `p` (kept weights scaled by `1/(1 − p)`), so the backward pass
    /// regenerates the same mask. `None`: no dropout.
    pub dropout: Option<(f32, u64)>,
}

/// The operands of one attention call: queries `(B, heads, T, d)`, keys and
/// values `(B, heads, S, d)` where their layouts say, and an optional
/// key-padding mask `(B, S)` (`f32`, non-zero = ignore that key).
#[derive(Clone, Copy)]
pub struct AttentionInputs<'a> {
    /// Queries.
    pub q: &'a dyn BackendStorage,
    /// Where the queries sit.
    pub q_at: HeadLayout,
    /// Keys.
    pub k: &'a dyn BackendStorage,
    /// Where the keys sit.
    pub k_at: HeadLayout,
    /// Values.
    pub v: &'a dyn BackendStorage,
    /// Where the values sit.
    pub v_at: HeadLayout,
    /// Keys to ignore, `(B, S)`, contiguous.
    pub key_padding: Option<&'a dyn BackendStorage>,
    /// An additive mask `(T, S)` (contiguous, shared by every batch entry
    /// and head; `−∞` blocks a pair), added to the scaled scores.
    pub attn_mask: Option<&'a dyn BackendStorage>,
}

/// The fused primitives: kernels that do in one pass what a composite of
/// core primitives does in several. A device implements any subset of them
/// ([`Backend::has_fused`]); for the others the autograd crate runs the
/// composite form, which is also the test reference of each fused kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Fused {
    /// [`Backend::bias_act_to_nchw`] and its backward: a convolution's epilogue.
    ConvEpilogue,
    /// [`Backend::channel_affine`] and its backward: per-channel scale, shift and activation.
    ChannelAffine,
    /// [`Backend::depthwise_conv2d`] and its backward (composite: grouped im2col and gemm).
    DepthwiseConv,
    /// [`Backend::pointwise_conv2d`]: a 1x1 convolution with its epilogue in the gemm (inference).
    PointwiseConv,
    /// [`Backend::lstm_cell`] and its backward.
    LstmCell,
    /// [`Backend::layer_norm`] and its backward.
    LayerNorm,
    /// [`Backend::batch_norm_stats`] and [`Backend::batch_norm_backward`].
    BatchNorm,
    /// [`Backend::attention`] and its backward.
    Attention,
    /// [`Backend::linear`]: a linear layer's product with its bias and
    /// activation in the gemm's store.
    Linear,
}

/// A device's memory in use by tensors, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryStats {
    /// Bytes held by live tensors now.
    pub live_bytes: u64,
    /// The most bytes held at once since the device opened or the peak was reset.
    pub peak_bytes: u64,
}

/// Every fused primitive, in declaration order.
pub const ALL_FUSED: [Fused; 9] = [
    Fused::ConvEpilogue,
    Fused::ChannelAffine,
    Fused::DepthwiseConv,
    Fused::PointwiseConv,
    Fused::LstmCell,
    Fused::LayerNorm,
    Fused::BatchNorm,
    Fused::Attention,
    Fused::Linear,
];

/// The error of a fused primitive a device does not implement (callers check
/// [`Backend::has_fused`] first and run the composite form instead).
fn unfused(device: Device, op: &'static str) -> Error {
    Error::msg(op, format!("{device} has no fused kernel for this primitive; run its composite form"))
}

/// The primitive op set of a device. The core primitives (the methods
/// without a default body) are what a new device must implement; the fused
/// ones ([`Fused`]) are optional, and the autograd crate dispatches to their
/// composite forms where [`Backend::has_fused`] says a device lacks them.
/// Composite ops (GELU, losses, optimizers' updates) are written from these
/// in the autograd crate and need no backend code.
pub trait Backend: Send + Sync {
    /// The device this backend serves.
    fn device(&self) -> Device;
    /// Waits until every op submitted so far has finished (PyTorch's
    /// `torch.cuda.synchronize()`; for timing). The CPU computes eagerly.
    ///
    /// # Errors
    /// When the device was lost, or (a device that checks indices as it
    /// runs) an index op since the last synchronization met a bad index.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// The memory tensors hold on this device (`None` where it is not tracked).
    fn memory(&self) -> Option<MemoryStats> {
        None
    }
    /// Starts [`MemoryStats::peak_bytes`] again from the live bytes.
    fn reset_peak_memory(&self) {}
    /// The largest buffer one kernel can read or write, in bytes (ops that
    /// would make a larger intermediate, such as a convolution's columns,
    /// split their work to stay under it).
    fn max_buffer_bytes(&self) -> u64 {
        u64::MAX
    }
    /// Whether this device runs the fused primitive `op` (otherwise its
    /// methods return an error and callers use the composite form).
    fn has_fused(&self, op: Fused) -> bool {
        let _ = op;
        false
    }
    /// Copies host data onto the device.
    ///
    /// # Errors
    /// When the device cannot allocate.
    fn upload(&self, data: CpuStorage) -> Result<Storage>;
    /// The elements of `l` in row-major order.
    ///
    /// # Errors
    /// Backend-specific failures.
    fn contiguous(&self, x: &dyn BackendStorage, l: &Layout) -> Result<Storage>;
    /// The elements of `l` in row-major order, converted to `dtype` by the
    /// [`Element`](crate::Element) rules (float to integer truncates toward zero).
    ///
    /// # Errors
    /// When the device does not hold `dtype`.
    fn to_dtype(&self, x: &dyn BackendStorage, l: &Layout, dtype: DType) -> Result<Storage>;
    /// An elementwise unary op from the table.
    ///
    /// # Errors
    /// On a non-`f32` input.
    fn unary(&self, op: UnaryOp, x: &dyn BackendStorage, l: &Layout) -> Result<Storage>;
    /// `g · op'(x, y)` for contiguous `x`, `y = op(x)` and `g` of equal length.
    ///
    /// # Errors
    /// On a non-`f32` input.
    fn unary_backward(
        &self,
        op: UnaryOp,
        x: &dyn BackendStorage,
        y: &dyn BackendStorage,
        g: &dyn BackendStorage,
    ) -> Result<Storage>;
    /// An elementwise binary op over two layouts of one (broadcast) shape.
    ///
    /// # Errors
    /// On a non-`f32` input.
    fn binary(
        &self,
        op: BinaryOp,
        a: &dyn BackendStorage,
        la: &Layout,
        b: &dyn BackendStorage,
        lb: &Layout,
    ) -> Result<Storage>;
    /// Reduces the dims flagged in `axes`; `f32` values, or `i64` indices for the arg ops.
    ///
    /// # Errors
    /// On a non-`f32` input.
    fn reduce(&self, op: ReduceOp, x: &dyn BackendStorage, l: &Layout, axes: &[bool]) -> Result<Storage>;
    /// Batched matrix product of `(…, m, k)` and `(…, k, n)` layouts with equal batch dims.
    ///
    /// # Errors
    /// On a non-`f32` input.
    fn matmul(&self, a: &dyn BackendStorage, la: &Layout, b: &dyn BackendStorage, lb: &Layout) -> Result<Storage>;
    /// Softmax (or log-softmax) over the last dim.
    ///
    /// # Errors
    /// On a non-`f32` input.
    fn softmax(&self, x: &dyn BackendStorage, l: &Layout, log: bool) -> Result<Storage>;
    /// Backward of [`Backend::softmax`] from its contiguous output `y` and gradient `g`, rows of `cols`.
    ///
    /// # Errors
    /// On a non-`f32` input.
    fn softmax_backward(
        &self,
        y: &dyn BackendStorage,
        g: &dyn BackendStorage,
        cols: usize,
        log: bool,
    ) -> Result<Storage>;
    /// `out[o, j, i] = x[o, idx[j], i]` with `x` viewed as `(outer, dim, inner)`.
    ///
    /// # Errors
    /// On an index out of range.
    fn index_select(&self, x: &dyn BackendStorage, l: &Layout, d: usize, idx: &dyn BackendStorage) -> Result<Storage>;
    /// Zeros of `(outer, size, inner)` plus `src` (`(outer, idx.len(), inner)`, contiguous) added at rows `idx`.
    ///
    /// # Errors
    /// On an index out of range.
    fn index_add(
        &self,
        src: &dyn BackendStorage,
        outer: usize,
        size: usize,
        inner: usize,
        idx: &dyn BackendStorage,
    ) -> Result<Storage>;
    /// `out[o, j, i] = x[o, index[o, j, i], i]`; `x` of `(outer, size, inner)` contiguous.
    ///
    /// # Errors
    /// On an index out of range.
    fn gather(
        &self,
        x: &dyn BackendStorage,
        outer: usize,
        size: usize,
        inner: usize,
        index: &dyn BackendStorage,
    ) -> Result<Storage>;
    /// Zeros of `(outer, size, inner)` with `src[o, j, i]` added at `[o, index[o, j, i], i]`.
    ///
    /// # Errors
    /// On an index out of range.
    fn scatter_add(
        &self,
        src: &dyn BackendStorage,
        outer: usize,
        size: usize,
        inner: usize,
        index: &dyn BackendStorage,
    ) -> Result<Storage>;
    /// Concatenates `(outer, sizes[j], inner)` parts along the middle dim. Each
    /// part is read through its layout (any strides), so a view is copied
    /// once, into the output.
    ///
    /// # Errors
    /// On mixed dtypes.
    fn concat(
        &self,
        parts: &[(&dyn BackendStorage, &Layout)],
        outer: usize,
        sizes: &[usize],
        inner: usize,
    ) -> Result<Storage>;
    /// `cond != 0 ? a : b` over three contiguous buffers of equal length.
    ///
    /// # Errors
    /// On a non-`f32` input.
    fn where_select(
        &self,
        cond: &dyn BackendStorage,
        a: &dyn BackendStorage,
        b: &dyn BackendStorage,
    ) -> Result<Storage>;
    /// im2col of a contiguous `(N, C, H, W)` input (`dims`): `(C·kh·kw, N·Ho·Wo)`,
    /// the batch in the columns so a convolution is one gemm.
    ///
    /// # Errors
    /// On a non-`f32` input.
    fn im2col(&self, x: &dyn BackendStorage, dims: [usize; 4], win: &Window2d) -> Result<Storage>;
    /// col2im, the adjoint of [`Backend::im2col`], back to `(N, C, H, W)` (`dims`).
    ///
    /// # Errors
    /// On a non-`f32` input.
    fn col2im(&self, cols: &dyn BackendStorage, dims: [usize; 4], win: &Window2d) -> Result<Storage>;
    /// The convolution epilogue: `act(transpose(yt) + bias)` from the gemm's
    /// `(N·L, C)` output `yt` to `(N, C, L)`, `act` applied in the same pass
    /// (none: the identity).
    ///
    /// # Errors
    /// On a non-`f32` input.
    #[allow(clippy::too_many_arguments)]
    #[allow(unused_variables)]
    fn bias_act_to_nchw(
        &self,
        yt: &dyn BackendStorage,
        bias: Option<&dyn BackendStorage>,
        n: usize,
        l: usize,
        c: usize,
        act: Option<UnaryOp>,
    ) -> Result<Storage> {
        Err(unfused(self.device(), "bias_act_to_nchw"))
    }
    /// Backward of [`Backend::bias_act_to_nchw`] from the gradient `g` and the
    /// output `y` (`(N, C, L)`): the gradients of `yt` and of the bias. `act`
    /// is one whose derivative its output determines (ReLU, hardtanh).
    ///
    /// # Errors
    /// On a non-`f32` input.
    #[allow(clippy::too_many_arguments)]
    #[allow(unused_variables)]
    fn bias_act_to_nchw_backward(
        &self,
        g: &dyn BackendStorage,
        y: &dyn BackendStorage,
        n: usize,
        l: usize,
        c: usize,
        act: Option<UnaryOp>,
    ) -> Result<(Storage, Storage)> {
        Err(unfused(self.device(), "bias_act_to_nchw_backward"))
    }
    /// Depthwise convolution, computed directly: `x` `(N, C, H, W)` (`dims`),
    /// `weight` `(C·M, 1, kh, kw)` for a channel multiplier `M`, optional
    /// `bias` `(C·M,)`, then `act`, all in one pass: `(N, C·M, Ho, Wo)`.
    ///
    /// # Errors
    /// On a dtype other than `f32`/`f64` (half precision widens).
    #[allow(clippy::too_many_arguments)]
    #[allow(unused_variables)]
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
        Err(unfused(self.device(), "depthwise_conv2d"))
    }
    /// The gradients of [`Backend::depthwise_conv2d`]'s input and weight from
    /// the output gradient `g` (before the activation), each when `need`s it.
    ///
    /// # Errors
    /// On a dtype other than `f32`/`f64`.
    #[allow(clippy::too_many_arguments)]
    #[allow(unused_variables)]
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
        Err(unfused(self.device(), "depthwise_conv2d_backward"))
    }
    /// A linear layer: `act(x·wᵀ + bias)` for `x` `(rows, k)` and `w` `(n, k)`,
    /// both contiguous, and `bias` `(n)` (`dims = [rows, k, n]`): `(rows, n)`,
    /// the bias and activation applied as the product is stored.
    ///
    /// # Errors
    /// On a dtype other than `f32`.
    #[allow(unused_variables)]
    fn linear(
        &self,
        x: &dyn BackendStorage,
        w: &dyn BackendStorage,
        bias: Option<&dyn BackendStorage>,
        dims: [usize; 3],
        act: Option<UnaryOp>,
    ) -> Result<Storage> {
        Err(unfused(self.device(), "linear"))
    }
    /// A 1x1 convolution for inference, with its epilogue fused into the
    /// gemm: `act(scale[o]·Σ_c w[o, c]·x[n, c, l] + shift[o])` for `x`
    /// `(N, C, L)` and `w` `(Cout, C)` (`dims = [N, C, Cout, L]`): `(N, Cout, L)`.
    /// Forward only (no gradient rule).
    ///
    /// # Errors
    /// On a dtype other than `f32`.
    #[allow(clippy::too_many_arguments)]
    #[allow(unused_variables)]
    fn pointwise_conv2d(
        &self,
        x: &dyn BackendStorage,
        w: &dyn BackendStorage,
        scale: Option<&dyn BackendStorage>,
        shift: Option<&dyn BackendStorage>,
        dims: [usize; 4],
        act: Option<UnaryOp>,
    ) -> Result<Storage> {
        Err(unfused(self.device(), "pointwise_conv2d"))
    }
    /// `act(x·scale[c] + shift[c])` over `(N, C, L)` (`dims`; a missing
    /// scale is 1, a missing shift 0): a bias and activation on NCHW data,
    /// evaluation-mode BatchNorm.
    ///
    /// # Errors
    /// On a dtype other than `f32`/`f64`.
    #[allow(unused_variables)]
    fn channel_affine(
        &self,
        x: &dyn BackendStorage,
        scale: Option<&dyn BackendStorage>,
        shift: Option<&dyn BackendStorage>,
        dims: [usize; 3],
        act: Option<UnaryOp>,
    ) -> Result<Storage> {
        Err(unfused(self.device(), "channel_affine"))
    }
    /// The gradients of [`Backend::channel_affine`] (`x`, `scale`, `shift`,
    /// each when `need`s it) from the output gradient `g`, the input `x` and
    /// the output `y`; `act` is one whose derivative its output determines.
    ///
    /// # Errors
    /// On a dtype other than `f32`/`f64`.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    #[allow(unused_variables)]
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
        Err(unfused(self.device(), "channel_affine_backward"))
    }
    /// One LSTM step's elementwise math: the pre-activation gates are
    /// `xw + hw` (`(B, 4H)` each, gates `i, f, g, o`; `xw` read at `xw_at`),
    /// `c_prev` `(B, H)` is read at `c_at`. Returns `[acts | c | h]` `(B, 6H)`.
    ///
    /// # Errors
    /// On a non-`f32` input.
    #[allow(clippy::too_many_arguments)]
    #[allow(unused_variables)]
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
        Err(unfused(self.device(), "lstm_cell"))
    }
    /// Backward of [`Backend::lstm_cell`]: `[dgates | dc_prev]` `(B, 5H)` from
    /// the step's `[acts | c | h]`, `c_prev` (at `c_at`), the gradients of the
    /// step's outputs `g_out = [dc | dh]` `(B, 2H)` (at `g_at`), and those
    /// flowing back from the next step, `dh_next` `(B, H)` and `dc_next` (at `dc_at`).
    ///
    /// # Errors
    /// On a non-`f32` input.
    #[allow(clippy::too_many_arguments)]
    #[allow(unused_variables)]
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
        Err(unfused(self.device(), "lstm_cell_backward"))
    }
    /// Layer normalization over the last dim of a contiguous `(rows, cols)`
    /// input, with optional scale and shift `(cols,)`: the output and the
    /// rows' `[mean | 1/√(var + eps)]` `(2, rows)`.
    ///
    /// # Errors
    /// On a non-`f32` input.
    #[allow(unused_variables)]
    fn layer_norm(
        &self,
        x: &dyn BackendStorage,
        weight: Option<&dyn BackendStorage>,
        bias: Option<&dyn BackendStorage>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<(Storage, Storage)> {
        Err(unfused(self.device(), "layer_norm"))
    }
    /// Backward of [`Backend::layer_norm`]: from `x`, `weight`, the
    /// statistics and the output's gradient `g` (contiguous `(rows, cols)`),
    /// the input's gradient and `[dweight | dbias]` `(2, cols)`.
    ///
    /// # Errors
    /// On a non-`f32` input.
    #[allow(unused_variables)]
    fn layer_norm_backward(
        &self,
        x: &dyn BackendStorage,
        weight: Option<&dyn BackendStorage>,
        stats: &dyn BackendStorage,
        g: &dyn BackendStorage,
        rows: usize,
        cols: usize,
    ) -> Result<(Storage, Storage)> {
        Err(unfused(self.device(), "layer_norm_backward"))
    }
    /// Training-mode batch statistics of `x` `(N, C, L)` (`dims`): per
    /// channel the mean and the biased variance, `[mean | var]` `(2, C)`.
    ///
    /// # Errors
    /// On a dtype other than `f32`/`f64`.
    #[allow(unused_variables)]
    fn batch_norm_stats(&self, x: &dyn BackendStorage, dims: [usize; 3]) -> Result<Storage> {
        Err(unfused(self.device(), "batch_norm_stats"))
    }
    /// Backward of training-mode batch norm `y = (x − mean)·invstd·γ + β`
    /// from `g`, `x`, `stats` = `[mean | invstd]` `(2, C)` and γ (none: 1):
    /// the input's gradient and `[dγ | dβ]` `(2, C)`. With `act = Some((op,
    /// out))` the normalization was followed by `op` (ReLU or hardtanh, whose
    /// output `out` determines the derivative) and `g` is the gradient of
    /// `out`; the derivative is applied as `g` is read.
    ///
    /// # Errors
    /// On a dtype other than `f32`/`f64`, or an `op` that needs its input.
    #[allow(unused_variables)]
    fn batch_norm_backward(
        &self,
        g: &dyn BackendStorage,
        x: &dyn BackendStorage,
        stats: &dyn BackendStorage,
        weight: Option<&dyn BackendStorage>,
        dims: [usize; 3],
        act: Option<(UnaryOp, &dyn BackendStorage)>,
    ) -> Result<(Storage, Storage)> {
        Err(unfused(self.device(), "batch_norm_backward"))
    }
    /// Fused scaled-dot-product attention: `softmax(scale·q·kᵀ + mask)·v`
    /// with the causal and padding masks applied as it goes (never stored).
    /// Returns the output `(B, T, heads, d)` contiguous (so `(B, T, E)`
    /// without a copy) and the statistics for the backward pass, which it
    /// passes back unread: each row's log-sum-exp `(B, heads, T)`, which a
    /// backend may follow with whatever else its backward wants (the CPU keeps
    /// small heads' weights). A query that sees no key gets zeros.
    ///
    /// # Errors
    /// On a non-`f32` input.
    #[allow(unused_variables)]
    fn attention(&self, x: &AttentionInputs<'_>, spec: &AttentionSpec) -> Result<(Storage, Storage)> {
        Err(unfused(self.device(), "attention"))
    }
    /// Backward of [`Backend::attention`]: from its inputs, output, statistics
    /// and the output's gradient `g` (`(B, T, heads, d)` contiguous), the
    /// gradients of `q` (`T` positions), `k` and `v` (`S`), each contiguous
    /// in the order `orders` gives for it (`[q, k, v]`), so that a gradient
    /// matches its operand's layout and accumulates without a copy.
    ///
    /// # Errors
    /// On a non-`f32` input.
    #[allow(unused_variables)]
    fn attention_backward(
        &self,
        x: &AttentionInputs<'_>,
        spec: &AttentionSpec,
        out: &dyn BackendStorage,
        lse: &dyn BackendStorage,
        g: &dyn BackendStorage,
        orders: [HeadOrder; 3],
    ) -> Result<(Storage, Storage, Storage)> {
        Err(unfused(self.device(), "attention_backward"))
    }
    /// Max pooling of a contiguous `(N, C, H, W)` input: values and `i64`
    /// indices of the maxima within each `H·W` plane.
    ///
    /// # Errors
    /// On a non-`f32` input.
    fn max_pool2d(&self, x: &dyn BackendStorage, dims: [usize; 4], win: &Window2d) -> Result<(Storage, Storage)>;
    /// Sends `g` (`(N, C, Ho, Wo)`) to the maxima's positions (`idx`, from
    /// [`Backend::max_pool2d`] with the same window) in `(N, C, H, W)`.
    ///
    /// # Errors
    /// On mismatched dtypes.
    fn max_pool2d_backward(
        &self,
        g: &dyn BackendStorage,
        idx: &dyn BackendStorage,
        dims: [usize; 4],
        win: &Window2d,
    ) -> Result<Storage>;
    /// Average pooling of a contiguous `(N, C, H, W)` input.
    ///
    /// # Errors
    /// On a non-`f32` input.
    fn avg_pool2d(
        &self,
        x: &dyn BackendStorage,
        dims: [usize; 4],
        win: &Window2d,
        count_include_pad: bool,
    ) -> Result<Storage>;
    /// Backward of [`Backend::avg_pool2d`] to `(N, C, H, W)` (`dims`).
    ///
    /// # Errors
    /// On a non-`f32` input.
    fn avg_pool2d_backward(
        &self,
        g: &dyn BackendStorage,
        dims: [usize; 4],
        win: &Window2d,
        count_include_pad: bool,
    ) -> Result<Storage>;
}

static REGISTRY: RwLock<Vec<&'static dyn Backend>> = RwLock::new(Vec::new());

/// Makes a backend available to tensors on its device (called once by a
/// device crate's `init`). A later registration for the same device replaces
/// the earlier one.
pub fn register_backend(backend: Box<dyn Backend>) {
    let b: &'static dyn Backend = Box::leak(backend);
    let mut reg = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    reg.retain(|r| r.device() != b.device());
    reg.push(b);
}

/// The registered backend of a non-CPU device.
///
/// # Errors
/// [`Error::DeviceUnavailable`] when no backend serves `device`.
pub fn registered_backend(device: Device, op: &'static str) -> Result<&'static dyn Backend> {
    let reg = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    reg.iter().copied().find(|b| b.device() == device).ok_or_else(|| Error::DeviceUnavailable {
        op,
        device,
        msg: "no backend is registered for it (build with the `wgpu` feature and initialize the device)".into(),
    })
}

impl BackendStorage for CpuStorage {
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn dtype(&self) -> DType {
        CpuStorage::dtype(self)
    }
    fn len(&self) -> usize {
        CpuStorage::len(self)
    }
    fn to_cpu(&self) -> CpuStorage {
        self.clone()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The CPU buffer behind a storage, if it is one.
pub fn as_cpu(s: &dyn BackendStorage) -> Option<&CpuStorage> {
    s.as_any().downcast_ref::<CpuStorage>()
}
