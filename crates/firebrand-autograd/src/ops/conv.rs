//! Convolution and pooling. `conv2d` is a composite — `im2col` (a primitive
//! whose backward is col2im, laid out `(C·kh·kw, N·Ho·Wo)` with the batch in
//! the columns) followed by one matmul with the weight for the whole batch —
//! so its gradients come from those rules and both are single large gemms;
//! pooling ops are primitives with their own backward kernels.

use super::record;
use crate::tensor::Tensor;
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

/// `act(transpose(yt) + bias)`: `(N·L, Cout)` to `(N, Cout, Ho, Wo)` in one
/// fused kernel, and its backward in one too.
fn epilogue(yt: &Tensor, bias: Option<&Tensor>, dims: [usize; 4], relu: bool) -> Result<Tensor> {
    let [n, cout, ho, wo] = dims;
    let l = ho * wo;
    if yt.dtype() == firebrand_tensor::DType::F64 {
        // The composite form: lay out, add the bias, activate.
        let y = yt.try_reshape([n, l, cout])?.try_permute(&[0, 2, 1])?.contiguous().try_reshape(dims)?;
        let y = match bias {
            Some(b) => y.try_add(&b.try_reshape([cout, 1, 1])?)?,
            None => y,
        };
        return Ok(if relu { y.relu() } else { y });
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
        backend.bias_act_to_nchw(&**ys, bs.as_deref().map(|s| &**s), n, l, cout, relu)?
    };
    let out = Tensor::from_backend(out, dims);
    let has_bias = bias.is_some();
    let mut inputs = vec![yt];
    inputs.extend(bias);
    Ok(record(out, "conv2d epilogue", &inputs, move |y, g| {
        let gd = g.dense("conv2d epilogue backward").expect("dense");
        let yd = y.dense("conv2d epilogue backward").expect("dense");
        let (dyt, db) = backend
            .bias_act_to_nchw_backward(&**gd.storage(), &**yd.storage(), n, l, cout, relu)
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
        self.try_conv2d_with(weight, bias, opts, false)
    }

    /// `relu(conv2d(x, weight, bias))`, with the bias and the ReLU applied in
    /// the same pass that lays the output out (the layer `Conv2d` with a ReLU
    /// activation uses it). Same arguments and errors as [`Tensor::try_conv2d`].
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
        self.try_conv2d_with(weight, bias, opts, true)
    }

    fn try_conv2d_with(&self, weight: &Tensor, bias: Option<&Tensor>, opts: ConvOptions, relu: bool) -> Result<Tensor> {
        let [n, c, h, w] = dims4(self, "conv2d")?;
        let [cout, cin_g, kh, kw] = dims4(weight, "conv2d")?;
        let g = opts.groups;
        let mismatch = || Error::ShapeMismatch { op: "conv2d", lhs: self.shape().clone(), rhs: weight.shape().clone() };
        if g == 0 || c % g != 0 || cout % g != 0 || cin_g != c / g {
            return Err(mismatch());
        }
        if let Some(b) = bias
            && b.dims() != [cout]
        {
            return Err(Error::ShapeMismatch {
                op: "conv2d bias",
                lhs: weight.shape().clone(),
                rhs: b.shape().clone(),
            });
        }
        let win = Window2d { kernel: (kh, kw), stride: opts.stride, padding: opts.padding, dilation: opts.dilation };
        let (ho, wo) = out_hw("conv2d", self, &win, h, w)?;
        let (k, nl) = (cin_g * kh * kw, n * ho * wo);
        let cols = self.im2col_batch_columns(win)?; // (C·kh·kw, N·L)
        if g == 1 {
            // Computed transposed, Yᵀ = colsᵀ · Wᵀ (N·L, Cout): our gemm is fastest
            // with many rows and few columns, and in this orientation the
            // gradients are its fast shapes too: the weight's (cols · dYᵀ,
            // no packing of the large cols) and the columns' (W · dYᵀ, in cols'
            // own layout).
            let wt = weight.try_reshape([cout, k])?.t().contiguous(); // (K, Cout)
            let yt = cols.t().try_matmul(&wt)?; // (N·L, Cout)
            return epilogue(&yt, bias, [n, cout, ho, wo], relu);
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
        Ok(if relu { y.relu() } else { y })
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
