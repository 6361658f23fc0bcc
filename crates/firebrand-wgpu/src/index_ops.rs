//! The index primitives on the device: selection, gathering, their
//! scatter-adds, concatenation and `where`.

use crate::backend::{WgpuBackend, WgpuStorage, element_words, kind_of, layout_words, u32_of};
use crate::gpu::{Gpu, INDEX_OPS};
use crate::kernels;
use firebrand_tensor::backend::BackendStorage;
use firebrand_tensor::{DType, Error, Layout, Result};

impl WgpuBackend {
    /// An `i64` index storage.
    fn indices<'a>(&self, s: &'a dyn BackendStorage, op: &'static str) -> Result<&'a WgpuStorage> {
        let w = self.storage(s, op)?;
        if w.dtype != DType::I64 {
            return Err(Error::DType { op, got: w.dtype, expected: "i64 indices" });
        }
        Ok(w)
    }

    /// Runs an index kernel (bindings `x, ix, out, params, flag`) without
    /// waiting: the kernel checks each index against `size` and records the
    /// first bad one in the device's shared flag, with the op's code (the
    /// params' last word), which the next readback or `synchronize` reports
    /// as `IndexOutOfRange` (`Gpu::read_words`).
    fn run_indexed(
        &self,
        source: &str,
        [x, ix, out]: [&WgpuStorage; 3],
        params: &[u32],
        threads: usize,
        op: &'static str,
    ) -> Result<()> {
        let code = INDEX_OPS.iter().position(|&o| o == op).unwrap_or(0) as u32;
        let pb = self.gpu.upload_words(&[params, &[code]].concat(), op)?;
        let flag = self.gpu.index_flag();
        self.gpu.dispatch(source, &[&x.buf, &ix.buf, &out.buf, &pb, flag], Gpu::groups_1d(threads));
        Ok(())
    }

    pub(crate) fn index_select_(
        &self,
        x: &dyn BackendStorage,
        l: &Layout,
        d: usize,
        idx: &dyn BackendStorage,
    ) -> Result<WgpuStorage> {
        let op = "index_select";
        let (x, idx) = (self.storage(x, op)?, self.indices(idx, op)?);
        let dims = l.dims();
        let (size, inner) = (dims[d], dims[d + 1..].iter().product::<usize>());
        let n = dims[..d].iter().product::<usize>() * idx.len * inner;
        let out = self.new_storage(n, x.dtype, op)?;
        if n == 0 {
            return Ok(out);
        }
        let mut p = vec![u32_of(n, op)?, u32_of(size, op)?, u32_of(inner, op)?, u32_of(idx.len, op)?];
        p.extend(layout_words(l, op)?);
        let src = kernels::index_select(element_words(x.dtype, op)?);
        self.run_indexed(&src, [x, idx, &out], &p, n, op)?;
        Ok(out)
    }

    pub(crate) fn gather_(
        &self,
        x: &dyn BackendStorage,
        [outer, size, inner]: [usize; 3],
        index: &dyn BackendStorage,
    ) -> Result<WgpuStorage> {
        let op = "gather";
        let (x, idx) = (self.storage(x, op)?, self.indices(index, op)?);
        let n = idx.len;
        let out = self.new_storage(n, x.dtype, op)?;
        if n == 0 {
            return Ok(out);
        }
        let len = n / (outer * inner).max(1);
        let p = [n, size, inner, len].iter().map(|&v| u32_of(v, op)).collect::<Result<Vec<_>>>()?;
        let src = kernels::gather(element_words(x.dtype, op)?);
        self.run_indexed(&src, [x, idx, &out], &p, n, op)?;
        Ok(out)
    }

    /// index_add (`per_row`: one index per middle row) or scatter_add (one
    /// per element) of `f32` `src` `(outer, len, inner)` into zeros of
    /// `(outer, size, inner)`. The additions are atomic, in no fixed order.
    pub(crate) fn scatter_add_(
        &self,
        src: &dyn BackendStorage,
        [outer, size, inner]: [usize; 3],
        idx: &dyn BackendStorage,
        per_row: bool,
        op: &'static str,
    ) -> Result<WgpuStorage> {
        let (src, idx) = (self.f32s(src, op)?, self.indices(idx, op)?);
        let out = self.zeros_storage(outer * size * inner, DType::F32, op)?;
        let n = src.len;
        if n == 0 {
            return Ok(out);
        }
        let len = n / (outer * inner).max(1);
        let expected = if per_row { len } else { n };
        if idx.len != expected {
            return Err(Error::msg(op, format!("{} indices for a source of {:?}", idx.len, [outer, len, inner])));
        }
        let p = [n, size, inner, len].iter().map(|&v| u32_of(v, op)).collect::<Result<Vec<_>>>()?;
        self.run_indexed(&kernels::scatter_add(per_row), [src, idx, &out], &p, n, op)?;
        Ok(out)
    }

    pub(crate) fn concat_(
        &self,
        parts: &[(&dyn BackendStorage, &Layout)],
        outer: usize,
        sizes: &[usize],
        inner: usize,
    ) -> Result<WgpuStorage> {
        let op = "cat";
        let parts = parts
            .iter()
            .map(|&(s, l)| Ok((self.storage(s, op)?, l)))
            .collect::<Result<Vec<(&WgpuStorage, &Layout)>>>()?;
        let dt = parts.first().map(|p| p.0.dtype).unwrap_or(DType::F32);
        if let Some((p, _)) = parts.iter().find(|p| p.0.dtype != dt) {
            return Err(Error::msg(op, format!("parts of dtypes {dt} and {} (promote them to one first)", p.dtype)));
        }
        let total: usize = sizes.iter().sum();
        let out = self.new_storage(outer * total * inner, dt, op)?;
        let src = kernels::concat_part(element_words(dt, op)?);
        let mut offset = 0;
        for (&(part, l), &size) in parts.iter().zip(sizes) {
            let n = outer * size * inner;
            if n > 0 {
                let mut p =
                    [n, total, offset, size, inner].iter().map(|&v| u32_of(v, op)).collect::<Result<Vec<_>>>()?;
                p.extend(layout_words(l, op)?);
                let pb = self.gpu.upload_words(&p, op)?;
                self.gpu.dispatch(&src, &[&part.buf, &out.buf, &pb], Gpu::groups_1d(n));
            }
            offset += size;
        }
        Ok(out)
    }

    pub(crate) fn where_select_(
        &self,
        cond: &dyn BackendStorage,
        a: &dyn BackendStorage,
        b: &dyn BackendStorage,
    ) -> Result<WgpuStorage> {
        let op = "where";
        let (c, a, b) = (self.storage(cond, op)?, self.storage(a, op)?, self.storage(b, op)?);
        if a.dtype != b.dtype {
            return Err(Error::msg(op, format!("operands of dtypes {} and {}", a.dtype, b.dtype)));
        }
        if c.len != a.len || a.len != b.len {
            return Err(Error::msg(op, format!("lengths {}, {} and {} differ", c.len, a.len, b.len)));
        }
        element_words(c.dtype, op)?;
        let out = self.new_storage(a.len, a.dtype, op)?;
        let pb = self.gpu.upload_words(&[u32_of(a.len, op)?], op)?;
        let src = kernels::where_select(kind_of(c.dtype), element_words(a.dtype, op)?);
        self.gpu.dispatch(&src, &[&c.buf, &a.buf, &b.buf, &out.buf, &pb], Gpu::groups_1d(a.len));
        Ok(out)
    }
}
