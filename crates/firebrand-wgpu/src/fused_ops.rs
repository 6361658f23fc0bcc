//! The fused primitives this device has (`Backend::has_fused`): layer norm.
//! The others run as their composites.

use crate::backend::{WgpuBackend, WgpuStorage, u32_of};
use crate::gpu::Gpu;
use crate::kernels;
use firebrand_tensor::backend::BackendStorage;
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
}
