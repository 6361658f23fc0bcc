//! The sliding-window primitives on the device: im2col/col2im and pooling.

use crate::backend::{WgpuBackend, WgpuStorage, u32_of};
use crate::gpu::Gpu;
use crate::kernels;
use firebrand_tensor::backend::BackendStorage;
use firebrand_tensor::op::Window2d;
use firebrand_tensor::{DType, Error, Result};

impl WgpuBackend {
    /// The window kernels' params `[threads, N, C, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, dh, dw]`.
    fn window_params(
        &self,
        threads: usize,
        [n, c, h, w]: [usize; 4],
        win: &Window2d,
        op: &'static str,
    ) -> Result<Vec<u32>> {
        let (ho, wo) = win
            .output_size(h, w)
            .ok_or_else(|| Error::msg(op, format!("window {win:?} does not fit an input of {:?}", [n, c, h, w])))?;
        let v = [
            threads,
            n,
            c,
            h,
            w,
            ho,
            wo,
            win.kernel.0,
            win.kernel.1,
            win.stride.0,
            win.stride.1,
            win.padding.0,
            win.padding.1,
            win.dilation.0,
            win.dilation.1,
        ];
        v.iter().map(|&x| u32_of(x, op)).collect()
    }

    /// Runs a one-input window kernel over `threads` outputs into a new `f32` storage.
    fn window_map(
        &self,
        source: &str,
        x: &WgpuStorage,
        threads: usize,
        params: &[u32],
        op: &'static str,
    ) -> Result<WgpuStorage> {
        let out = self.new_storage(threads, DType::F32, op)?;
        let pb = self.gpu.upload_words(params, op)?;
        self.gpu.dispatch(source, &[&x.buf, &out.buf, &pb], Gpu::groups_1d(threads));
        Ok(out)
    }

    pub(crate) fn im2col_(&self, x: &dyn BackendStorage, dims: [usize; 4], win: &Window2d) -> Result<WgpuStorage> {
        let op = "im2col";
        let x = self.f32s(x, op)?;
        let [n, c, h, w] = dims;
        let (ho, wo) = win.output_size(h, w).unwrap_or((0, 0));
        let threads = c * win.kernel.0 * win.kernel.1 * n * ho * wo;
        let p = self.window_params(threads, dims, win, op)?;
        self.window_map(&kernels::im2col(), x, threads, &p, op)
    }

    pub(crate) fn col2im_(&self, cols: &dyn BackendStorage, dims: [usize; 4], win: &Window2d) -> Result<WgpuStorage> {
        let op = "col2im";
        let cols = self.f32s(cols, op)?;
        let threads = dims.iter().product();
        let p = self.window_params(threads, dims, win, op)?;
        self.window_map(&kernels::col2im(), cols, threads, &p, op)
    }

    pub(crate) fn max_pool2d_(
        &self,
        x: &dyn BackendStorage,
        dims: [usize; 4],
        win: &Window2d,
    ) -> Result<(WgpuStorage, WgpuStorage)> {
        let op = "max_pool2d";
        let x = self.f32s(x, op)?;
        let (ho, wo) = win.output_size(dims[2], dims[3]).unwrap_or((0, 0));
        let threads = dims[0] * dims[1] * ho * wo;
        let p = self.window_params(threads, dims, win, op)?;
        let out = self.new_storage(threads, DType::F32, op)?;
        let idx = self.new_storage(threads, DType::I64, op)?;
        let pb = self.gpu.upload_words(&p, op)?;
        self.gpu.dispatch(&kernels::max_pool2d(), &[&x.buf, &out.buf, &pb, &idx.buf], Gpu::groups_1d(threads));
        Ok((out, idx))
    }

    pub(crate) fn max_pool2d_backward_(
        &self,
        g: &dyn BackendStorage,
        idx: &dyn BackendStorage,
        dims: [usize; 4],
        win: &Window2d,
    ) -> Result<WgpuStorage> {
        let op = "max_pool2d_backward";
        let (g, idx) = (self.f32s(g, op)?, self.storage(idx, op)?);
        if idx.dtype != DType::I64 || idx.len != g.len {
            return Err(Error::msg(op, format!("{} {} indices for {} gradients", idx.len, idx.dtype, g.len)));
        }
        let threads = dims.iter().product();
        let p = self.window_params(threads, dims, win, op)?;
        let out = self.new_storage(threads, DType::F32, op)?;
        let pb = self.gpu.upload_words(&p, op)?;
        self.gpu.dispatch(&kernels::max_pool2d_backward(), &[&g.buf, &idx.buf, &out.buf, &pb], Gpu::groups_1d(threads));
        Ok(out)
    }

    pub(crate) fn avg_pool2d_(
        &self,
        x: &dyn BackendStorage,
        dims: [usize; 4],
        win: &Window2d,
        include_pad: bool,
    ) -> Result<WgpuStorage> {
        let op = "avg_pool2d";
        let x = self.f32s(x, op)?;
        let (ho, wo) = win.output_size(dims[2], dims[3]).unwrap_or((0, 0));
        let threads = dims[0] * dims[1] * ho * wo;
        let p = self.window_params(threads, dims, win, op)?;
        self.window_map(&kernels::avg_pool2d(include_pad), x, threads, &p, op)
    }

    pub(crate) fn avg_pool2d_backward_(
        &self,
        g: &dyn BackendStorage,
        dims: [usize; 4],
        win: &Window2d,
        include_pad: bool,
    ) -> Result<WgpuStorage> {
        let op = "avg_pool2d_backward";
        let g = self.f32s(g, op)?;
        let threads = dims.iter().product();
        let p = self.window_params(threads, dims, win, op)?;
        self.window_map(&kernels::avg_pool2d_backward(include_pad), g, threads, &p, op)
    }

    /// The window params with `[M, has_bias]` after them.
    fn depthwise_params(
        &self,
        threads: usize,
        dims: [usize; 4],
        win: &Window2d,
        m: usize,
        has_bias: bool,
        op: &'static str,
    ) -> Result<Vec<u32>> {
        let mut p = self.window_params(threads, dims, win, op)?;
        p.extend([u32_of(m, op)?, has_bias as u32]);
        Ok(p)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn depthwise_conv2d_(
        &self,
        x: &dyn BackendStorage,
        weight: &dyn BackendStorage,
        bias: Option<&dyn BackendStorage>,
        dims: [usize; 4],
        m: usize,
        win: &Window2d,
        act: Option<firebrand_tensor::op::UnaryOp>,
    ) -> Result<WgpuStorage> {
        let op = "conv2d (depthwise)";
        let (x, w) = (self.f32s(x, op)?, self.f32s(weight, op)?);
        let [n, c, h, wd] = dims;
        let (ho, wo) = win.output_size(h, wd).unwrap_or((0, 0));
        if x.len != n * c * h * wd || w.len != c * m * win.kernel.0 * win.kernel.1 {
            return Err(Error::msg(op, format!("x {} and weight {} for {dims:?}, multiplier {m}", x.len, w.len)));
        }
        let b = bias.map(|b| self.f32s(b, op)).transpose()?;
        let threads = n * c * m * ho * wo;
        let p = self.depthwise_params(threads, dims, win, m, b.is_some(), op)?;
        let out = self.new_storage(threads, DType::F32, op)?;
        let pb = self.gpu.upload_words(&p, op)?;
        let bufs: [&wgpu::Buffer; 5] = [&x.buf, &w.buf, &b.unwrap_or(w).buf, &out.buf, &pb];
        self.gpu.dispatch(&kernels::depthwise_conv2d(act), &bufs, Gpu::groups_1d(threads));
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn depthwise_conv2d_backward_(
        &self,
        g: &dyn BackendStorage,
        x: &dyn BackendStorage,
        weight: &dyn BackendStorage,
        dims: [usize; 4],
        m: usize,
        win: &Window2d,
        [need_x, need_w]: [bool; 2],
    ) -> Result<(Option<WgpuStorage>, Option<WgpuStorage>)> {
        let op = "conv2d (depthwise) backward";
        let (g, x, w) = (self.f32s(g, op)?, self.f32s(x, op)?, self.f32s(weight, op)?);
        let dx = if need_x {
            let threads = dims.iter().product();
            let p = self.depthwise_params(threads, dims, win, m, false, op)?;
            let dx = self.new_storage(threads, DType::F32, op)?;
            let pb = self.gpu.upload_words(&p, op)?;
            let bufs: [&wgpu::Buffer; 4] = [&g.buf, &w.buf, &dx.buf, &pb];
            self.gpu.dispatch(&kernels::depthwise_conv2d_backward_input(), &bufs, Gpu::groups_1d(threads));
            Some(dx)
        } else {
            None
        };
        let dw = if need_w {
            let p = self.depthwise_params(w.len, dims, win, m, false, op)?;
            let dw = self.new_storage(w.len, DType::F32, op)?;
            let pb = self.gpu.upload_words(&p, op)?;
            let bufs: [&wgpu::Buffer; 4] = [&g.buf, &x.buf, &dw.buf, &pb];
            self.gpu.dispatch(&kernels::depthwise_conv2d_backward_weight(), &bufs, Gpu::spread(w.len as u32));
            Some(dw)
        } else {
            None
        };
        Ok((dx, dw))
    }
}
