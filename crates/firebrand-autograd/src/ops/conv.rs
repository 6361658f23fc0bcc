//! Convolution and pooling. `conv2d` is a composite — `im2col` (a primitive
//! whose backward is col2im, laid out `(C·kh·kw, N·Ho·Wo)` with the batch in
//! the columns) followed by one matmul with the weight for the whole batch —
//! so its gradients come from those rules and both are single large gemms;
//! pooling ops are primitives with their own backward kernels.

use super::{activate_rest, fusable_act, record, records_graph};
use crate::tensor::{Tensor, same_backend};
use firebrand_ops::unary::UnaryOp;
use firebrand_tensor::backend::Fused;
use firebrand_tensor::op::Window2d;
use firebrand_tensor::{Error, Result, Shape};

/// Stride, padding, dilation and groups of a convolution (PyTorch's defaults:
/// stride 1, no padding, dilation 1, one group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvOptions {
    /// Stride along height and width.
    pub stride: (usize, usize),
    /// Zero padding on both sides of height and width.
    pub padding: (usize, usize),
    /// Spacing between kernel taps.
    pub dilation: (usize, usize),
    /// Channel groups: input and output channels split into this many
    /// independent convolutions (`groups == channels` is depthwise).
    pub groups: usize,
}

impl Default for ConvOptions {
    fn default() -> Self {
        ConvOptions { stride: (1, 1), padding: (0, 0), dilation: (1, 1), groups: 1 }
    }
}

fn dims4(t: &Tensor, op: &'static str) -> Result<[usize; 4]> {
    match t.dims() {
        &[n, c, h, w] => Ok([n, c, h, w]),
        _ => Err(Error::InvalidShape { op, shape: t.shape().clone(), msg: "expected (N, C, H, W)".into() }),
    }
}

fn out_hw(op: &'static str, x: &Tensor, win: &Window2d, h: usize, w: usize) -> Result<(usize, usize)> {
    win.output_size(h, w).ok_or_else(|| Error::InvalidShape {
        op,
        shape: x.shape().clone(),
        msg: format!("window {win:?} does not fit (or has a zero stride)"),
    })
}

/// Which kernel a convolution's shape picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConvPath {
    /// `groups == C > 1`, one input channel per group: the direct kernel.
    Depthwise,
    /// Ungrouped 1x1, stride 1, no padding: one gemm per image.
    Pointwise,
    /// Any other ungrouped convolution: im2col + one gemm.
    Dense,
    /// Any other grouped convolution: a batched gemm over groups.
    Grouped,
}

/// A convolution's checked geometry and the kernel its shape picks.
struct ConvShape {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    cout: usize,
    cin_g: usize,
    kh: usize,
    kw: usize,
    win: Window2d,
    ho: usize,
    wo: usize,
    path: ConvPath,
}

/// Checks `x` `(N, C, H, W)`, `weight` `(Cout, C/groups, kh, kw)` and `bias`
/// `(Cout,)` against each other and the window; the errors name the shapes.
fn conv_shape(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, opts: ConvOptions) -> Result<ConvShape> {
    let [n, c, h, w] = dims4(x, "conv2d")?;
    let [cout, cin_g, kh, kw] = dims4(weight, "conv2d")?;
    let g = opts.groups;
    if g == 0 || c % g != 0 || cout % g != 0 || cin_g != c / g {
        return Err(Error::ShapeMismatch { op: "conv2d", lhs: x.shape().clone(), rhs: weight.shape().clone() });
    }
    if let Some(b) = bias
        && b.dims() != [cout]
    {
        return Err(Error::ShapeMismatch { op: "conv2d bias", lhs: weight.shape().clone(), rhs: b.shape().clone() });
    }
    let win = Window2d { kernel: (kh, kw), stride: opts.stride, padding: opts.padding, dilation: opts.dilation };
    let (ho, wo) = out_hw("conv2d", x, &win, h, w)?;
    let path = if g == c && cin_g == 1 && g > 1 {
        ConvPath::Depthwise
    } else if g == 1 && (kh, kw) == (1, 1) && win.stride == (1, 1) && win.padding == (0, 0) {
        ConvPath::Pointwise
    } else if g == 1 {
        ConvPath::Dense
    } else {
        ConvPath::Grouped
    };
    Ok(ConvShape { n, c, h, w, cout, cin_g, kh, kw, win, ho, wo, path })
}

/// `act(transpose(yt) + bias)`: `(N·L, Cout)` to `(N, Cout, Ho, Wo)` in one
/// fused kernel, and its backward in one too (`act` is fused only when
/// nothing records a graph or its output determines its derivative).
fn epilogue(yt: &Tensor, bias: Option<&Tensor>, dims: [usize; 4], act: Option<UnaryOp>) -> Result<Tensor> {
    let [n, cout, ho, wo] = dims;
    let l = ho * wo;
    if yt.dtype() == firebrand_tensor::DType::F64 || !yt.backend("conv2d")?.has_fused(Fused::ConvEpilogue) {
        // The composite form: lay out, add the bias, activate.
        let y = yt.try_reshape([n, l, cout])?.try_permute(&[0, 2, 1])?.contiguous().try_reshape(dims)?;
        let y = match bias {
            Some(b) => y.try_add(&b.try_reshape([cout, 1, 1])?)?,
            None => y,
        };
        return match act {
            Some(op) => y.try_unary(op),
            None => Ok(y),
        };
    }
    let backend = yt.backend("conv2d")?;
    let ytd = yt.dense("conv2d")?;
    let bd = bias.map(|b| b.dense("conv2d")).transpose()?;
    if let Some(b) = &bd
        && b.device() != yt.device()
    {
        return Err(Error::DeviceMismatch { op: "conv2d", lhs: yt.device(), rhs: b.device() });
    }
    let out = {
        let ys = ytd.storage();
        let bs = bd.as_ref().map(|b| b.storage());
        backend.bias_act_to_nchw(&**ys, bs.as_deref().map(|s| &**s), n, l, cout, act)?
    };
    let out = Tensor::from_backend(out, dims);
    let has_bias = bias.is_some();
    let mut inputs = vec![yt];
    inputs.extend(bias);
    Ok(record(out, "conv2d epilogue", &inputs, move |y, g| {
        let gd = g.dense("conv2d epilogue backward").expect("dense");
        let yd = y.dense("conv2d epilogue backward").expect("dense");
        let (dyt, db) = backend
            .bias_act_to_nchw_backward(&**gd.storage(), &**yd.storage(), n, l, cout, act)
            .expect("f32 gradients");
        let mut grads = vec![Some(Tensor::from_backend(dyt, [n * l, cout]))];
        if has_bias {
            grads.push(Some(Tensor::from_backend(db, [cout])));
        }
        grads
    }))
}

impl Tensor {
    /// Unfolds `(N, C, H, W)` into `(N, C·kh·kw, Ho·Wo)` columns, one per output
    /// position (PyTorch's `F.unfold`). Differentiable. The result is a view
    /// of the `(C·kh·kw, N, Ho·Wo)` buffer the kernel writes.
    ///
    /// # Errors
    /// When the input is not 4-D `f32` or the window does not fit.
    pub fn try_im2col(&self, win: Window2d) -> Result<Tensor> {
        let [n, ..] = dims4(self, "im2col")?;
        let cols = self.im2col_batch_columns(win)?; // (K, N·L)
        let (k, nl) = (cols.dims()[0], cols.dims()[1]);
        cols.try_reshape([k, n, nl / n.max(1)])?.try_permute(&[1, 0, 2])
    }

    /// im2col with the batch in the columns: `(C·kh·kw, N·Ho·Wo)`.
    fn im2col_batch_columns(&self, win: Window2d) -> Result<Tensor> {
        let dims = dims4(self, "im2col")?;
        let [n, c, h, w] = dims;
        let (ho, wo) = out_hw("im2col", self, &win, h, w)?;
        let backend = self.backend("im2col")?;
        let x = self.dense("im2col")?;
        let out = backend.im2col(&**x.storage(), dims, &win)?;
        let out = Tensor::from_backend(out, [c * win.kernel.0 * win.kernel.1, n * ho * wo]);
        Ok(record(out, "im2col", &[self], move |_, g| {
            let gd = g.dense("col2im").expect("col2im");
            let dx = backend.col2im(&**gd.storage(), dims, &win).expect("col2im: f32");
            vec![Some(Tensor::from_backend(dx, dims))]
        }))
    }

    /// 2-D convolution (cross-correlation, as PyTorch) of `(N, C, H, W)` with a
    /// weight `(Cout, C/groups, kh, kw)` and an optional bias `(Cout,)`:
    /// `(N, Cout, Ho, Wo)`.
    ///
    /// # Errors
    /// On shapes that do not fit together (named in the message).
    ///
    /// ```
    /// use firebrand_autograd::{ConvOptions, Tensor};
    /// let x = Tensor::ones([1, 1, 4, 4]);
    /// let w = Tensor::ones([2, 1, 3, 3]);
    /// let y = x.conv2d(&w, None, ConvOptions { padding: (1, 1), ..Default::default() });
    /// assert_eq!(y.dims(), &[1, 2, 4, 4]);
    /// assert_eq!(y.to_vec::<f32>()[..4], [4.0, 6.0, 6.0, 4.0]);
    /// ```
    pub fn try_conv2d(&self, weight: &Tensor, bias: Option<&Tensor>, opts: ConvOptions) -> Result<Tensor> {
        self.try_conv2d_act(weight, bias, opts, None)
    }

    /// `relu(conv2d(x, weight, bias))`, with the bias and the ReLU applied in
    /// the same pass that lays the output out. Same arguments and errors as
    /// [`Tensor::try_conv2d`].
    ///
    /// ```
    /// use firebrand_autograd::{ConvOptions, Tensor};
    /// let x = Tensor::randn([2, 3, 5, 5], 0.0, 1.0);
    /// let w = Tensor::randn([4, 3, 3, 3], 0.0, 1.0);
    /// let fused = x.try_conv2d_relu(&w, None, ConvOptions::default()).unwrap();
    /// let plain = x.conv2d(&w, None, ConvOptions::default()).relu();
    /// assert_eq!(fused.to_vec::<f32>(), plain.to_vec::<f32>());
    /// ```
    pub fn try_conv2d_relu(&self, weight: &Tensor, bias: Option<&Tensor>, opts: ConvOptions) -> Result<Tensor> {
        self.try_conv2d_act(weight, bias, opts, Some(UnaryOp::Relu))
    }

    /// `act(conv2d(x, weight, bias))` with the bias and the activation applied
    /// in the pass that writes the output (the layer `Conv2d` with an
    /// activation uses it). Any unary op is fused when no graph is recorded;
    /// when one is, ReLU and hardtanh/ReLU6 stay fused (their output gives
    /// their derivative) and the others run as their own op after the
    /// convolution. Same errors as [`Tensor::try_conv2d`].
    ///
    /// The kernel depends on the shape: a depthwise convolution (`groups ==
    /// C`, one input channel per group) runs a direct kernel, a 1x1
    /// stride-1 convolution one gemm per image, any other ungrouped one
    /// im2col + one gemm for the batch, and grouped ones a batched gemm.
    ///
    /// ```
    /// use firebrand_autograd::{ConvOptions, Tensor, UnaryOp};
    /// let x = Tensor::randn([1, 4, 6, 6], 0.0, 1.0);
    /// let w = Tensor::randn([4, 1, 3, 3], 0.0, 1.0); // depthwise
    /// let opts = ConvOptions { padding: (1, 1), groups: 4, ..Default::default() };
    /// let fused = x.try_conv2d_act(&w, None, opts, Some(UnaryOp::Hardtanh(0.0, 6.0))).unwrap();
    /// let plain = x.conv2d(&w, None, opts).relu6();
    /// assert_eq!(fused.to_vec::<f32>(), plain.to_vec::<f32>());
    /// ```
    pub fn try_conv2d_act(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        opts: ConvOptions,
        act: Option<UnaryOp>,
    ) -> Result<Tensor> {
        let ConvShape { n, c, h, w, cout, cin_g, kh, kw, win, ho, wo, path } = conv_shape(self, weight, bias, opts)?;
        let g = opts.groups;
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        let records = records_graph(&inputs);
        // The activation the kernel applies; any other runs after it.
        let fused = fusable_act(act, records);
        let rest = |y: Tensor| activate_rest(y, act, fused);
        let backend = same_backend("conv2d", &inputs)?;
        // Without the device's fused kernel, a depthwise convolution runs
        // as a grouped one (im2col and a batched gemm).
        let path = match path {
            ConvPath::Depthwise if !backend.has_fused(Fused::DepthwiseConv) => ConvPath::Grouped,
            p => p,
        };
        if path == ConvPath::Depthwise {
            return rest(self.depthwise_conv2d(weight, bias, win, cout / c, fused)?);
        }
        let (k, nl) = (cin_g * kh * kw, n * ho * wo);
        // Columns (C·kh·kw, N·Ho·Wo) larger than the device's largest buffer:
        // the batch in chunks that fit, joined again.
        let cols_bytes = (c * kh * kw * nl * self.dtype().size_in_bytes()) as u64;
        if path != ConvPath::Pointwise && n > 1 && cols_bytes > backend.max_buffer_bytes() {
            let per = (backend.max_buffer_bytes() / (cols_bytes / n as u64).max(1)).max(1) as usize;
            let parts: Vec<Tensor> = (0..n)
                .step_by(per)
                .map(|s| self.narrow(0, s, per.min(n - s)).try_conv2d_act(weight, bias, opts, act))
                .collect::<Result<_>>()?;
            return Ok(Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0));
        }
        if path == ConvPath::Pointwise {
            // A pointwise convolution is W (Cout, C) · X_n (C, H·W) per image:
            // no im2col copy, and the gemm writes NCHW directly.
            if !records && self.dtype() == firebrand_tensor::DType::F32 && backend.has_fused(Fused::PointwiseConv) {
                // Inference: the bias and activation in the gemm's store.
                return rest(self.pointwise_inference(weight, None, bias, act)?);
            }
            let y = weight.try_reshape([cout, c])?.try_matmul(&self.try_reshape([n, c, h * w])?)?;
            let y = if bias.is_some() || fused.is_some() { y.try_channel_affine(None, bias, fused)? } else { y };
            return rest(y.try_reshape([n, cout, ho, wo])?);
        }
        let cols = self.im2col_batch_columns(win)?; // (C·kh·kw, N·L)
        if path == ConvPath::Dense {
            // Computed transposed, Yᵀ = colsᵀ · Wᵀ (N·L, Cout): our gemm is fastest
            // with many rows and few columns, and in this orientation the
            // gradients are its fast shapes too: the weight's (cols · dYᵀ,
            // no packing of the large cols) and the columns' (W · dYᵀ, in cols'
            // own layout).
            let wt = weight.try_reshape([cout, k])?.t().contiguous(); // (K, Cout)
            let yt = cols.t().try_matmul(&wt)?; // (N·L, Cout)
            return rest(epilogue(&yt, bias, [n, cout, ho, wo], fused)?);
        }
        // One gemm for the whole batch (per group): (G, Cout/G, K) · (G, K, N·L).
        let y = weight.try_reshape([g, cout / g, k])?.try_matmul(&cols.try_reshape([g, k, nl])?)?;
        let y = y.try_reshape([cout, n, ho * wo])?;
        // The bias is added while channels lead (a contiguous broadcast), then one
        // copy puts the batch first.
        let y = match bias {
            Some(b) => y.try_add(&b.try_reshape([cout, 1, 1])?)?,
            None => y,
        };
        let y = y.try_permute(&[1, 0, 2])?.contiguous().try_reshape([n, cout, ho, wo])?;
        match act {
            Some(op) => y.try_unary(op),
            None => Ok(y),
        }
    }

    /// `act(conv2d(x, weight)·scale[o] + shift[o])` per output channel `o`:
    /// a convolution followed by an inference-mode BatchNorm (its scale and
    /// shift) and an activation, which `Sequential` runs this way in
    /// evaluation mode. A depthwise convolution folds the scale into its
    /// filters and applies shift and activation as it stores; a 1x1
    /// convolution applies all three in its gemm's store when no graph is
    /// recorded; the others run the convolution, then one
    /// [`Tensor::try_channel_affine`] pass. Differentiable (the composite
    /// path is taken when a graph is recorded).
    ///
    /// # Errors
    /// As [`Tensor::try_conv2d`], and when `scale`/`shift` are not `(Cout,)`.
    ///
    /// ```
    /// use firebrand_autograd::{ConvOptions, Tensor, UnaryOp};
    /// let x = Tensor::randn([2, 3, 5, 5], 0.0, 1.0);
    /// let w = Tensor::randn([4, 3, 1, 1], 0.0, 1.0);
    /// let (s, t) = (Tensor::rand([4], 0.5, 2.0), Tensor::randn([4], 0.0, 1.0));
    /// let y = x.try_conv2d_affine(&w, ConvOptions::default(), Some(&s), Some(&t), Some(UnaryOp::Relu)).unwrap();
    /// let want = x.conv2d(&w, None, ConvOptions::default()).mul(&s.reshape([1, 4, 1, 1])).add(&t.reshape([1, 4, 1, 1])).relu();
    /// assert!(y.sub(&want).abs().max_all().item() < 1e-5);
    /// ```
    pub fn try_conv2d_affine(
        &self,
        weight: &Tensor,
        opts: ConvOptions,
        scale: Option<&Tensor>,
        shift: Option<&Tensor>,
        act: Option<UnaryOp>,
    ) -> Result<Tensor> {
        let ConvShape { cout, path, .. } = conv_shape(self, weight, None, opts)?;
        for v in scale.iter().chain(shift.iter()) {
            if v.dims() != [cout] {
                return Err(Error::ShapeMismatch {
                    op: "conv2d affine",
                    lhs: weight.shape().clone(),
                    rhs: v.shape().clone(),
                });
            }
        }
        let mut inputs = vec![self, weight];
        inputs.extend(scale);
        inputs.extend(shift);
        let backend = same_backend("conv2d", &inputs)?;
        if path == ConvPath::Pointwise
            && !records_graph(&inputs)
            && self.dtype() == firebrand_tensor::DType::F32
            && backend.has_fused(Fused::PointwiseConv)
        {
            return self.pointwise_inference(weight, scale, shift, act);
        }
        if path == ConvPath::Depthwise {
            let w = match scale {
                Some(s) => weight.try_mul(&s.try_reshape([cout, 1, 1, 1])?)?,
                None => weight.clone(),
            };
            return self.try_conv2d_act(&w, shift, opts, act);
        }
        self.try_conv2d(weight, None, opts)?.try_channel_affine(scale, shift, act)
    }

    /// The inference form of a 1x1 stride-1 convolution: one gemm per image
    /// with scale, shift and activation in its store (`Backend::pointwise_conv2d`).
    fn pointwise_inference(
        &self,
        weight: &Tensor,
        scale: Option<&Tensor>,
        shift: Option<&Tensor>,
        act: Option<UnaryOp>,
    ) -> Result<Tensor> {
        let op = "conv2d (pointwise)";
        let [n, c, h, w] = dims4(self, op)?;
        let cout = weight.dims()[0];
        let mut ts = vec![self, weight];
        ts.extend(scale);
        ts.extend(shift);
        let backend = same_backend(op, &ts)?;
        if let Some(t) = ts.iter().find(|t| t.dtype() != self.dtype()) {
            return Err(Error::msg(op, format!("input {} but weight, scale or shift {}", self.dtype(), t.dtype())));
        }
        let (x, wd) = (self.dense(op)?, weight.dense(op)?);
        let (sd, td) = (scale.map(|s| s.dense(op)).transpose()?, shift.map(|t| t.dense(op)).transpose()?);
        let (ss, tt) = (sd.as_ref().map(|s| s.storage()), td.as_ref().map(|t| t.storage()));
        let out = backend.pointwise_conv2d(
            &**x.storage(),
            &**wd.storage(),
            ss.as_deref().map(|s| &**s),
            tt.as_deref().map(|t| &**t),
            [n, c, cout, h * w],
            act,
        )?;
        Ok(Tensor::from_backend(out, [n, cout, h, w]))
    }

    /// The depthwise kernel: `(N, C, H, W)` with `(C·M, 1, kh, kw)` filters,
    /// `act` fused (the caller picks one its backward rule can handle).
    fn depthwise_conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        win: Window2d,
        m: usize,
        act: Option<UnaryOp>,
    ) -> Result<Tensor> {
        let op = "conv2d (depthwise)";
        let dims = dims4(self, op)?;
        let [n, c, h, w] = dims;
        let (ho, wo) = out_hw(op, self, &win, h, w)?;
        let backend = same_backend(op, &[self, weight])?;
        let (x, wd) = (self.dense(op)?, weight.dense(op)?);
        let bd = bias.map(|b| b.dense(op)).transpose()?;
        if let Some(b) = &bd
            && b.device() != self.device()
        {
            return Err(Error::DeviceMismatch { op, lhs: self.device(), rhs: b.device() });
        }
        if weight.dtype() != self.dtype() || bias.is_some_and(|b| b.dtype() != self.dtype()) {
            return Err(Error::msg(op, format!("input {} and weight {} dtypes differ", self.dtype(), weight.dtype())));
        }
        let out = {
            let bs = bd.as_ref().map(|b| b.storage());
            backend.depthwise_conv2d(
                &**x.storage(),
                &**wd.storage(),
                bs.as_deref().map(|s| &**s),
                dims,
                m,
                &win,
                act,
            )?
        };
        let out = Tensor::from_backend(out, [n, c * m, ho, wo]);
        let need = [self.requires_grad(), weight.requires_grad()];
        let has_bias = bias.is_some();
        let (xs, ws) = (x.detach(), wd.detach());
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Ok(record(out, op, &inputs, move |y, g| {
            let g = match act {
                Some(a) => {
                    let (gd, yd) = (g.dense(op).expect("dense"), y.dense(op).expect("dense"));
                    let gm = backend.unary_backward(a, &**yd.storage(), &**yd.storage(), &**gd.storage());
                    Tensor::from_backend(gm.expect("activation backward"), y.shape().clone())
                }
                None => g.dense(op).expect("dense"),
            };
            let (dx, dw) = backend
                .depthwise_conv2d_backward(&**g.storage(), &**xs.storage(), &**ws.storage(), dims, m, &win, need)
                .expect("depthwise conv backward: float tensors on one device");
            let mut grads = vec![
                dx.map(|d| Tensor::from_backend(d, dims)),
                dw.map(|d| Tensor::from_backend(d, ws.shape().clone())),
            ];
            if has_bias {
                grads.push(Some(g.sum(&[0, 2, 3], false)));
            }
            grads
        }))
    }

    /// `act(x·scale[c] + shift[c])` for `x` `(N, C, *)` and `(C,)` vectors,
    /// in one pass (a missing scale is 1, a missing shift 0): a convolution's
    /// bias and activation, or evaluation-mode BatchNorm. Differentiable in
    /// all three; when a graph is recorded, `act` other than ReLU and
    /// hardtanh runs as its own op after the affine map.
    ///
    /// # Errors
    /// When `x` has fewer than 2 dims or a vector is not `(C,)`.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [1, 2, 2]);
    /// let s = Tensor::from_vec(vec![2.0f32, -1.0], [2]);
    /// let t = Tensor::from_vec(vec![0.5f32, 0.0], [2]);
    /// let y = x.try_channel_affine(Some(&s), Some(&t), None).unwrap();
    /// assert_eq!(y.to_vec::<f32>(), [2.5, 4.5, -3.0, -4.0]);
    /// ```
    pub fn try_channel_affine(
        &self,
        scale: Option<&Tensor>,
        shift: Option<&Tensor>,
        act: Option<UnaryOp>,
    ) -> Result<Tensor> {
        let op = "channel_affine";
        let d = self.dims();
        if d.len() < 2 {
            return Err(Error::InvalidShape { op, shape: self.shape().clone(), msg: "expected (N, C, *)".into() });
        }
        let (n, c) = (d[0], d[1]);
        for v in scale.iter().chain(shift.iter()) {
            if v.dims() != [c] {
                return Err(Error::ShapeMismatch { op, lhs: self.shape().clone(), rhs: v.shape().clone() });
            }
        }
        let dims = [n, c, self.elem_count() / (n * c).max(1)];
        let mut ts = vec![self];
        ts.extend(scale);
        ts.extend(shift);
        let fused = fusable_act(act, records_graph(&ts));
        let backend = same_backend(op, &ts)?;
        if ts.iter().any(|t| t.dtype() != self.dtype()) {
            return Err(Error::msg(op, format!("the input is {} but a scale or shift differs", self.dtype())));
        }
        if !backend.has_fused(Fused::ChannelAffine) {
            return self.channel_affine_composite(scale, shift, act);
        }
        let (x, sd, td) =
            (self.dense(op)?, scale.map(|s| s.dense(op)).transpose()?, shift.map(|t| t.dense(op)).transpose()?);
        let out = {
            let (ss, tt) = (sd.as_ref().map(|s| s.storage()), td.as_ref().map(|t| t.storage()));
            backend.channel_affine(
                &**x.storage(),
                ss.as_deref().map(|s| &**s),
                tt.as_deref().map(|t| &**t),
                dims,
                fused,
            )?
        };
        let out = Tensor::from_backend(out, self.shape().clone());
        let need =
            [self.requires_grad(), scale.is_some_and(|s| s.requires_grad()), shift.is_some_and(|s| s.requires_grad())];
        let (has_scale, has_shift) = (scale.is_some(), shift.is_some());
        let (xs, ss) = (x.detach(), sd.map(|s| s.detach()));
        let y = record(out, op, &ts, move |y, g| {
            let (gd, yd) = (g.dense(op).expect("dense"), y.dense(op).expect("dense"));
            let sst = ss.as_ref().map(|s| s.storage());
            let (dx, ds, dt) = backend
                .channel_affine_backward(
                    &**gd.storage(),
                    &**xs.storage(),
                    &**yd.storage(),
                    sst.as_deref().map(|s| &**s),
                    dims,
                    fused,
                    need,
                )
                .expect("channel_affine backward: float tensors on one device");
            let mut grads = vec![dx.map(|d| Tensor::from_backend(d, xs.shape().clone()))];
            if has_scale {
                grads.push(ds.map(|d| Tensor::from_backend(d, [dims[1]])));
            }
            if has_shift {
                grads.push(dt.map(|d| Tensor::from_backend(d, [dims[1]])));
            }
            grads
        });
        activate_rest(y, act, fused)
    }

    /// [`Tensor::try_channel_affine`] from primitive ops (shapes already
    /// checked): `(1, C, 1, …)` views of the vectors broadcast over `(N, C, …)`,
    /// then the activation.
    pub(crate) fn channel_affine_composite(
        &self,
        scale: Option<&Tensor>,
        shift: Option<&Tensor>,
        act: Option<UnaryOp>,
    ) -> Result<Tensor> {
        let mut col = vec![1; self.rank()];
        col[1] = self.dims()[1];
        let mut y = self.clone();
        if let Some(s) = scale {
            y = y.try_mul(&s.try_reshape(col.clone())?)?;
        }
        if let Some(t) = shift {
            y = y.try_add(&t.try_reshape(col)?)?;
        }
        match act {
            Some(a) => y.try_unary(a),
            None => Ok(y),
        }
    }

    /// See [`Tensor::try_conv2d`].
    ///
    /// # Panics
    /// On shapes that do not fit together.
    #[track_caller]
    pub fn conv2d(&self, weight: &Tensor, bias: Option<&Tensor>, opts: ConvOptions) -> Tensor {
        self.try_conv2d(weight, bias, opts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// 1-D convolution of `(N, C, L)` with a weight `(Cout, C/groups, k)`; the
    /// second element of each `opts` pair applies (a 2-D convolution over a
    /// height of 1).
    ///
    /// # Errors
    /// On shapes that do not fit together.
    pub fn try_conv1d(&self, weight: &Tensor, bias: Option<&Tensor>, opts: ConvOptions) -> Result<Tensor> {
        let (&[n, c, l], &[cout, cin, k]) = (self.dims(), weight.dims()) else {
            return Err(Error::ShapeMismatch { op: "conv1d", lhs: self.shape().clone(), rhs: weight.shape().clone() });
        };
        let o2 = ConvOptions {
            stride: (1, opts.stride.1),
            padding: (0, opts.padding.1),
            dilation: (1, opts.dilation.1),
            ..opts
        };
        let y = self.try_reshape([n, c, 1, l])?.try_conv2d(&weight.try_reshape([cout, cin, 1, k])?, bias, o2)?;
        let lo = y.dims()[3];
        y.try_reshape([n, cout, lo])
    }

    /// See [`Tensor::try_conv1d`].
    ///
    /// # Panics
    /// On shapes that do not fit together.
    #[track_caller]
    pub fn conv1d(&self, weight: &Tensor, bias: Option<&Tensor>, opts: ConvOptions) -> Tensor {
        self.try_conv1d(weight, bias, opts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Max pooling of `(N, C, H, W)`; the gradient goes to each window's maximum.
    ///
    /// # Errors
    /// When the input is not 4-D `f32` or the window does not fit.
    pub fn try_max_pool2d(&self, win: Window2d) -> Result<Tensor> {
        let dims = dims4(self, "max_pool2d")?;
        let [n, c, h, w] = dims;
        let (ho, wo) = out_hw("max_pool2d", self, &win, h, w)?;
        let backend = self.backend("max_pool2d")?;
        let (vals, idx) = backend.max_pool2d(&**self.dense("max_pool2d")?.storage(), dims, &win)?;
        let out = Tensor::from_backend(vals, [n, c, ho, wo]);
        let idx = Tensor::from_backend(idx, [n, c, ho, wo]);
        Ok(record(out, "max_pool2d", &[self], move |_, g| {
            let gd = g.dense("max_pool2d backward").expect("dense");
            let dx = backend.max_pool2d_backward(&**gd.storage(), &**idx.storage(), dims, &win).expect("f32");
            vec![Some(Tensor::from_backend(dx, dims))]
        }))
    }

    /// See [`Tensor::try_max_pool2d`].
    ///
    /// # Panics
    /// When the input is not 4-D or the window does not fit.
    #[track_caller]
    pub fn max_pool2d(&self, win: Window2d) -> Tensor {
        self.try_max_pool2d(win).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Average pooling of `(N, C, H, W)`; `count_include_pad` divides by the
    /// full window even where it hangs over the padding (PyTorch's default).
    ///
    /// # Errors
    /// When the input is not 4-D `f32` or the window does not fit.
    pub fn try_avg_pool2d(&self, win: Window2d, count_include_pad: bool) -> Result<Tensor> {
        let dims = dims4(self, "avg_pool2d")?;
        let [n, c, h, w] = dims;
        let (ho, wo) = out_hw("avg_pool2d", self, &win, h, w)?;
        let backend = self.backend("avg_pool2d")?;
        let out = backend.avg_pool2d(&**self.dense("avg_pool2d")?.storage(), dims, &win, count_include_pad)?;
        let out = Tensor::from_backend(out, Shape::from([n, c, ho, wo]));
        Ok(record(out, "avg_pool2d", &[self], move |_, g| {
            let gd = g.dense("avg_pool2d backward").expect("dense");
            let dx = backend.avg_pool2d_backward(&**gd.storage(), dims, &win, count_include_pad).expect("f32");
            vec![Some(Tensor::from_backend(dx, dims))]
        }))
    }

    /// See [`Tensor::try_avg_pool2d`].
    ///
    /// # Panics
    /// When the input is not 4-D or the window does not fit.
    #[track_caller]
    pub fn avg_pool2d(&self, win: Window2d, count_include_pad: bool) -> Tensor {
        self.try_avg_pool2d(win, count_include_pad).unwrap_or_else(|e| panic!("{e}"))
    }
}
