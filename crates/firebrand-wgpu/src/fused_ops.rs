//! The fused primitives this device has (`Backend::has_fused`): layer norm,
//! the convolution epilogue, the per-channel affine map, the LSTM cell and
//! batch norm (attention is in `attention_ops.rs`, the depthwise
//! convolution in `window_ops.rs`). The inference 1x1 convolution runs as
//! its composite.

use crate::backend::{WgpuBackend, WgpuStorage, u32_of};
use crate::gpu::Gpu;
use crate::kernels;
use firebrand_tensor::backend::{BackendStorage, Rows};
use firebrand_tensor::op::UnaryOp;
use firebrand_tensor::{DType, Error, Result};

impl WgpuBackend {
    /// The affine vectors, or `x` bound in their place (not read).
    fn affine_or<'a>(
        &self,
        v: Option<&'a dyn BackendStorage>,
        x: &'a WgpuStorage,
        cols: usize,
        op: &'static str,
    ) -> Result<(&'a WgpuStorage, bool)> {
        match v {
            Some(v) => {
                let v = self.f32s(v, op)?;
                if v.len != cols {
                    return Err(Error::msg(op, format!("weight or bias of {} for rows of {cols}", v.len)));
                }
                Ok((v, true))
            }
            None => Ok((x, false)),
        }
    }

    pub(crate) fn layer_norm_(
        &self,
        x: &dyn BackendStorage,
        weight: Option<&dyn BackendStorage>,
        bias: Option<&dyn BackendStorage>,
        [rows, cols]: [usize; 2],
        eps: f32,
    ) -> Result<(WgpuStorage, WgpuStorage)> {
        let op = "layer_norm";
        let x = self.f32s(x, op)?;
        if x.len != rows * cols {
            return Err(Error::msg(op, format!("{} elements for ({rows}, {cols})", x.len)));
        }
        let ((w, has_w), (b, has_b)) = (self.affine_or(weight, x, cols, op)?, self.affine_or(bias, x, cols, op)?);
        let out = self.new_storage(rows * cols, DType::F32, op)?;
        let stats = self.new_storage(2 * rows, DType::F32, op)?;
        let p = [u32_of(rows, op)?, u32_of(cols, op)?, has_w as u32, has_b as u32, eps.to_bits()];
        let pb = self.gpu.upload_words(&p, op)?;
        let bufs: [&wgpu::Buffer; 6] = [&x.buf, &w.buf, &b.buf, &out.buf, &stats.buf, &pb];
        self.gpu.dispatch(&kernels::layer_norm(), &bufs, Gpu::spread(rows as u32));
        Ok((out, stats))
    }

    pub(crate) fn layer_norm_backward_(
        &self,
        x: &dyn BackendStorage,
        weight: Option<&dyn BackendStorage>,
        stats: &dyn BackendStorage,
        g: &dyn BackendStorage,
        [rows, cols]: [usize; 2],
    ) -> Result<(WgpuStorage, WgpuStorage)> {
        let op = "layer_norm_backward";
        let (x, stats, g) = (self.f32s(x, op)?, self.f32s(stats, op)?, self.f32s(g, op)?);
        if x.len != rows * cols || g.len != x.len || stats.len != 2 * rows {
            return Err(Error::msg(op, format!("x {}, g {}, stats {} for ({rows}, {cols})", x.len, g.len, stats.len)));
        }
        let (w, has_w) = self.affine_or(weight, x, cols, op)?;
        let dx = self.new_storage(rows * cols, DType::F32, op)?;
        let dwb = self.new_storage(2 * cols, DType::F32, op)?;
        let pb = self.gpu.upload_words(&[u32_of(rows, op)?, u32_of(cols, op)?, has_w as u32], op)?;
        let bufs: [&wgpu::Buffer; 6] = [&x.buf, &w.buf, &stats.buf, &g.buf, &dx.buf, &pb];
        self.gpu.dispatch(&kernels::layer_norm_backward(), &bufs, Gpu::spread(rows as u32));
        let bufs: [&wgpu::Buffer; 5] = [&x.buf, &stats.buf, &g.buf, &dwb.buf, &pb];
        self.gpu.dispatch(&kernels::layer_norm_affine_backward(), &bufs, Gpu::groups_1d(cols));
        Ok((dx, dwb))
    }

    /// `[threads, N, C, L, has_a, has_b]` for the epilogue kernels.
    fn affine_params(
        &self,
        threads: usize,
        [n, c, l]: [usize; 3],
        has: [bool; 2],
        op: &'static str,
    ) -> Result<wgpu::Buffer> {
        let p = [u32_of(threads, op)?, u32_of(n, op)?, u32_of(c, op)?, u32_of(l, op)?, has[0] as u32, has[1] as u32];
        self.gpu.upload_words(&p, op)
    }

    /// `[Σ d·x | Σ d]` per channel of `(N, C, L)` with `d = g·act'(y)`
    /// (`x` absent: `g` stands in and the first half is not wanted).
    fn channel_sums(
        &self,
        g: &WgpuStorage,
        y: &WgpuStorage,
        x: Option<&WgpuStorage>,
        dims: [usize; 3],
        act: Option<UnaryOp>,
        op: &'static str,
    ) -> Result<WgpuStorage> {
        let c = dims[1];
        let out = self.new_storage(2 * c, DType::F32, op)?;
        let pb = self.affine_params(c, dims, [false, false], op)?;
        let bufs: [&wgpu::Buffer; 5] = [&g.buf, &y.buf, &x.unwrap_or(g).buf, &out.buf, &pb];
        self.gpu.dispatch(&kernels::channel_sums(act), &bufs, Gpu::spread(c as u32));
        Ok(out)
    }

    /// The second half (`Σ d`) or the first (`Σ d·x`) of [`Self::channel_sums`] as its own storage.
    fn half(&self, sums: &WgpuStorage, c: usize, second: bool, op: &'static str) -> Result<WgpuStorage> {
        let l = firebrand_tensor::Layout::contiguous([2, c]).narrow(0, second as usize, 1)?;
        self.copy(sums, &l, op)
    }

    pub(crate) fn bias_act_to_nchw_(
        &self,
        yt: &dyn BackendStorage,
        bias: Option<&dyn BackendStorage>,
        [n, l, c]: [usize; 3],
        act: Option<UnaryOp>,
    ) -> Result<WgpuStorage> {
        let op = "conv2d epilogue";
        let yt = self.f32s(yt, op)?;
        if yt.len != n * l * c {
            return Err(Error::msg(op, format!("{} elements for ({n}·{l}, {c})", yt.len)));
        }
        let (b, has_b) = self.affine_or(bias, yt, c, op)?;
        let out = self.new_storage(n * c * l, DType::F32, op)?;
        let pb = self.affine_params(out.len, [n, c, l], [false, has_b], op)?;
        let bufs: [&wgpu::Buffer; 4] = [&yt.buf, &b.buf, &out.buf, &pb];
        self.gpu.dispatch(&kernels::bias_act_to_nchw(act), &bufs, Gpu::groups_1d(out.len));
        Ok(out)
    }

    pub(crate) fn bias_act_to_nchw_backward_(
        &self,
        g: &dyn BackendStorage,
        y: &dyn BackendStorage,
        [n, l, c]: [usize; 3],
        act: Option<UnaryOp>,
    ) -> Result<(WgpuStorage, WgpuStorage)> {
        let op = "conv2d epilogue backward";
        let (g, y) = (self.f32s(g, op)?, self.f32s(y, op)?);
        if g.len != n * c * l || y.len != g.len {
            return Err(Error::msg(op, format!("g {} and y {} for ({n}, {c}, {l})", g.len, y.len)));
        }
        let dyt = self.new_storage(g.len, DType::F32, op)?;
        let pb = self.affine_params(g.len, [n, c, l], [false, false], op)?;
        let bufs: [&wgpu::Buffer; 4] = [&g.buf, &y.buf, &dyt.buf, &pb];
        self.gpu.dispatch(&kernels::bias_act_to_nchw_backward(act), &bufs, Gpu::groups_1d(g.len));
        let sums = self.channel_sums(g, y, None, [n, c, l], act, op)?;
        Ok((dyt, self.half(&sums, c, true, op)?))
    }

    pub(crate) fn channel_affine_(
        &self,
        x: &dyn BackendStorage,
        scale: Option<&dyn BackendStorage>,
        shift: Option<&dyn BackendStorage>,
        dims: [usize; 3],
        act: Option<UnaryOp>,
    ) -> Result<WgpuStorage> {
        let op = "channel_affine";
        let x = self.f32s(x, op)?;
        let c = dims[1];
        if x.len != dims.iter().product::<usize>() {
            return Err(Error::msg(op, format!("{} elements for {dims:?}", x.len)));
        }
        let ((s, has_s), (t, has_t)) = (self.affine_or(scale, x, c, op)?, self.affine_or(shift, x, c, op)?);
        let out = self.new_storage(x.len, DType::F32, op)?;
        let pb = self.affine_params(x.len, dims, [has_s, has_t], op)?;
        let bufs: [&wgpu::Buffer; 5] = [&x.buf, &s.buf, &t.buf, &out.buf, &pb];
        self.gpu.dispatch(&kernels::channel_affine(act), &bufs, Gpu::groups_1d(x.len));
        Ok(out)
    }

    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    pub(crate) fn channel_affine_backward_(
        &self,
        g: &dyn BackendStorage,
        x: &dyn BackendStorage,
        y: &dyn BackendStorage,
        scale: Option<&dyn BackendStorage>,
        dims: [usize; 3],
        act: Option<UnaryOp>,
        need: [bool; 3],
    ) -> Result<(Option<WgpuStorage>, Option<WgpuStorage>, Option<WgpuStorage>)> {
        let op = "channel_affine backward";
        let (g, x, y) = (self.f32s(g, op)?, self.f32s(x, op)?, self.f32s(y, op)?);
        let c = dims[1];
        if g.len != x.len || y.len != x.len || x.len != dims.iter().product::<usize>() {
            return Err(Error::msg(op, format!("g {}, x {}, y {} for {dims:?}", g.len, x.len, y.len)));
        }
        let dx = if need[0] {
            let (s, has_s) = self.affine_or(scale, x, c, op)?;
            let dx = self.new_storage(x.len, DType::F32, op)?;
            let pb = self.affine_params(x.len, dims, [has_s, false], op)?;
            let bufs: [&wgpu::Buffer; 5] = [&g.buf, &y.buf, &s.buf, &dx.buf, &pb];
            self.gpu.dispatch(&kernels::channel_affine_backward(act), &bufs, Gpu::groups_1d(x.len));
            Some(dx)
        } else {
            None
        };
        let (ds, dt) = if need[1] || need[2] {
            let sums = self.channel_sums(g, y, Some(x), dims, act, op)?;
            let ds = need[1].then(|| self.half(&sums, c, false, op)).transpose()?;
            let dt = need[2].then(|| self.half(&sums, c, true, op)).transpose()?;
            (ds, dt)
        } else {
            (None, None)
        };
        Ok((dx, ds, dt))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn lstm_cell_(
        &self,
        xw: &dyn BackendStorage,
        xw_at: Rows,
        hw: &dyn BackendStorage,
        c_prev: &dyn BackendStorage,
        c_at: Rows,
        b: usize,
        h: usize,
    ) -> Result<WgpuStorage> {
        let op = "lstm_cell";
        let (xw, hw, cp) = (self.f32s(xw, op)?, self.f32s(hw, op)?, self.f32s(c_prev, op)?);
        let fits = |v: &WgpuStorage, at: Rows, w: usize| b == 0 || at.offset + (b - 1) * at.stride + w <= v.len;
        if hw.len != b * 4 * h || !fits(xw, xw_at, 4 * h) || !fits(cp, c_at, h) {
            return Err(Error::msg(op, format!("views do not fit (B, H) = ({b}, {h})")));
        }
        let out = self.new_storage(b * 6 * h, DType::F32, op)?;
        let p = [b * h, h, xw_at.offset, xw_at.stride, c_at.offset, c_at.stride];
        let pb = self.gpu.upload_words(&p.iter().map(|&v| u32_of(v, op)).collect::<Result<Vec<_>>>()?, op)?;
        let bufs: [&wgpu::Buffer; 5] = [&xw.buf, &hw.buf, &cp.buf, &out.buf, &pb];
        self.gpu.dispatch(&kernels::lstm_cell(), &bufs, Gpu::groups_1d(b * h));
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn lstm_cell_backward_(
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
    ) -> Result<WgpuStorage> {
        let op = "lstm_cell_backward";
        let (st, cp, go) = (self.f32s(state, op)?, self.f32s(c_prev, op)?, self.f32s(g_out, op)?);
        let (dhn, dcn) = (self.f32s(dh_next, op)?, self.f32s(dc_next, op)?);
        let fits = |v: &WgpuStorage, at: Rows, w: usize| b == 0 || at.offset + (b - 1) * at.stride + w <= v.len;
        if st.len != b * 6 * h
            || dhn.len != b * h
            || !fits(cp, c_at, h)
            || !fits(go, g_at, 2 * h)
            || !fits(dcn, dc_at, h)
        {
            return Err(Error::msg(op, format!("views do not fit (B, H) = ({b}, {h})")));
        }
        let out = self.new_storage(b * 5 * h, DType::F32, op)?;
        let p = [b * h, h, c_at.offset, c_at.stride, g_at.offset, g_at.stride, dc_at.offset, dc_at.stride];
        let pb = self.gpu.upload_words(&p.iter().map(|&v| u32_of(v, op)).collect::<Result<Vec<_>>>()?, op)?;
        let bufs: [&wgpu::Buffer; 7] = [&st.buf, &cp.buf, &go.buf, &dhn.buf, &dcn.buf, &out.buf, &pb];
        self.gpu.dispatch(&kernels::lstm_cell_backward(), &bufs, Gpu::groups_1d(b * h));
        Ok(out)
    }

    pub(crate) fn batch_norm_stats_(&self, x: &dyn BackendStorage, dims: [usize; 3]) -> Result<WgpuStorage> {
        let op = "batch_norm_stats";
        let x = self.f32s(x, op)?;
        if x.len != dims.iter().product::<usize>() {
            return Err(Error::msg(op, format!("{} elements for {dims:?}", x.len)));
        }
        let c = dims[1];
        let out = self.new_storage(2 * c, DType::F32, op)?;
        let pb = self.affine_params(c, dims, [false, false], op)?;
        let bufs: [&wgpu::Buffer; 3] = [&x.buf, &out.buf, &pb];
        self.gpu.dispatch(&kernels::batch_norm_stats(), &bufs, Gpu::spread(c as u32));
        Ok(out)
    }

    #[allow(clippy::type_complexity)]
    pub(crate) fn batch_norm_backward_(
        &self,
        g: &dyn BackendStorage,
        x: &dyn BackendStorage,
        stats: &dyn BackendStorage,
        weight: Option<&dyn BackendStorage>,
        dims: [usize; 3],
        act: Option<(UnaryOp, &dyn BackendStorage)>,
    ) -> Result<(WgpuStorage, WgpuStorage)> {
        let op = "batch_norm backward";
        let (g, x, stats) = (self.f32s(g, op)?, self.f32s(x, op)?, self.f32s(stats, op)?);
        let c = dims[1];
        if g.len != x.len || x.len != dims.iter().product::<usize>() || stats.len != 2 * c {
            return Err(Error::msg(op, format!("g {}, x {}, stats {} for {dims:?}", g.len, x.len, stats.len)));
        }
        let (op_act, y) = match act {
            Some((a, y)) => {
                let y = self.f32s(y, op)?;
                if y.len != g.len {
                    return Err(Error::msg(op, format!("{} outputs for {} gradients", y.len, g.len)));
                }
                (Some(a), y)
            }
            None => (None, g),
        };
        let (w, has_w) = self.affine_or(weight, x, c, op)?;
        let daff = self.new_storage(2 * c, DType::F32, op)?;
        let pb = self.affine_params(c, dims, [has_w, false], op)?;
        let bufs: [&wgpu::Buffer; 6] = [&g.buf, &y.buf, &x.buf, &stats.buf, &daff.buf, &pb];
        self.gpu.dispatch(&kernels::batch_norm_affine_backward(op_act), &bufs, Gpu::spread(c as u32));
        let dx = self.new_storage(x.len, DType::F32, op)?;
        let pb = self.affine_params(x.len, dims, [has_w, false], op)?;
        let bufs: [&wgpu::Buffer; 8] = [&g.buf, &y.buf, &x.buf, &stats.buf, &w.buf, &daff.buf, &dx.buf, &pb];
        self.gpu.dispatch(&kernels::batch_norm_backward(op_act), &bufs, Gpu::groups_1d(x.len));
        Ok((dx, daff))
    }
}
