//! Fused attention on the device (`Backend::attention` and its backward):
//! the kernels of [`kernels::attention`](crate::kernels) over the operands'
//! own strided views, the masks gathered into one buffer.

use crate::backend::{WgpuBackend, WgpuStorage, u32_of};
use crate::gpu::Gpu;
use crate::kernels;
use firebrand_tensor::backend::{AttentionInputs, AttentionSpec, BackendStorage, HeadLayout, HeadOrder};
use firebrand_tensor::{DType, Error, Layout, Result};

/// The device's attention operands: q, k, v, the masks' buffer and the params.
struct Bound<'a> {
    q: &'a WgpuStorage,
    k: &'a WgpuStorage,
    v: &'a WgpuStorage,
    /// The one mask given, read in place.
    mask: Option<&'a WgpuStorage>,
    /// Both masks, padding then additive, copied into one buffer.
    masks: Option<WgpuStorage>,
    /// The shared params of every attention kernel.
    params: Vec<u32>,
}

impl Bound<'_> {
    /// The masks' buffer, or `q` bound in its place (not read).
    fn aux(&self) -> &wgpu::Buffer {
        self.masks.as_ref().or(self.mask).map_or(&self.q.buf, |a| &a.buf)
    }
}

impl WgpuBackend {
    /// Checks the operands against `spec` and lays out the params (the
    /// kernels' module doc lists them; the orders are filled in later).
    fn bind_attention<'a>(&self, x: &AttentionInputs<'a>, spec: &AttentionSpec, op: &'static str) -> Result<Bound<'a>> {
        let s = spec;
        if s.head_dim == 0 {
            return Err(Error::msg(op, "head dim 0 (the wgpu kernels need d ≥ 1)"));
        }
        let (q, k, v) = (self.f32s(x.q, op)?, self.f32s(x.k, op)?, self.f32s(x.v, op)?);
        for (name, w, at, len) in [("q", q, &x.q_at, s.q_len), ("k", k, &x.k_at, s.kv_len), ("v", v, &x.v_at, s.kv_len)]
        {
            if s.batch > 0 && s.heads > 0 && len > 0 {
                let last = at.offset + (s.batch - 1) * at.batch + (s.heads - 1) * at.head + (len - 1) * at.row;
                if last + s.head_dim > w.len {
                    return Err(Error::msg(op, format!("{name} at {at:?} overruns its buffer of {}", w.len)));
                }
            }
        }
        let masks = [
            (x.key_padding, s.batch * s.kv_len, "key padding mask (B, S)"),
            (x.attn_mask, s.q_len * s.kv_len, "attn_mask (T, S)"),
        ];
        let mut parts = Vec::new();
        let mut at = [0usize; 2];
        for (n, (m, len, what)) in masks.into_iter().enumerate() {
            if let Some(m) = m {
                let m = self.f32s(m, op)?;
                if m.len != len {
                    return Err(Error::msg(op, format!("{what} of {} elements for {len}", m.len)));
                }
                at[n] = parts.iter().map(|(w, _): &(&WgpuStorage, Layout)| w.len).sum();
                parts.push((m, Layout::contiguous([len])));
            }
        }
        let (mut mask, mut masks) = (None, None);
        match parts.len() {
            0 => {}
            1 => mask = Some(parts[0].0),
            _ => {
                let sizes: Vec<usize> = parts.iter().map(|(w, _)| w.len).collect();
                let views: Vec<(&dyn BackendStorage, &Layout)> =
                    parts.iter().map(|(w, l)| (*w as &dyn BackendStorage, l)).collect();
                masks = Some(self.concat_(&views, 1, &sizes, 1)?);
            }
        }
        u32_of(s.batch * s.heads * s.q_len.max(s.kv_len), op)?;
        u32_of(s.batch * s.heads * s.q_len * s.head_dim.max(1), op)?;
        u32_of(s.batch * s.heads * s.kv_len * s.head_dim.max(1) * 2, op)?;
        let (p, seed) = s.dropout.unwrap_or((0.0, 0));
        let layout = |at: &HeadLayout| [at.offset, at.batch, at.head, at.row];
        let mut words = vec![
            s.batch,
            s.heads,
            s.q_len,
            s.kv_len,
            s.scale.to_bits() as usize,
            s.causal.is_some() as usize,
            s.causal.unwrap_or(0).min(s.kv_len),
            x.key_padding.is_some() as usize,
            x.attn_mask.is_some() as usize,
            s.dropout.is_some() as usize,
            p.to_bits() as usize,
            (seed & 0xffff_ffff) as usize,
            (seed >> 32) as usize,
            (1.0 / (1.0 - p)).to_bits() as usize,
            at[0],
            at[1],
        ];
        words.extend([x.q_at, x.k_at, x.v_at].iter().flat_map(layout));
        words.extend([0, 0, 0]);
        let params = words.into_iter().map(|w| u32_of(w, op)).collect::<Result<Vec<u32>>>()?;
        Ok(Bound { q, k, v, mask, masks, params })
    }

    /// `(workgroups)` for the kernels' tasks: one per (batch, head, 64 rows of `len`).
    fn attention_groups(spec: &AttentionSpec, len: usize) -> [u32; 3] {
        let tasks = spec.batch * spec.heads * len.div_ceil(kernels::ATTENTION_ROWS);
        Gpu::spread(tasks as u32)
    }

    pub(crate) fn attention_(
        &self,
        x: &AttentionInputs<'_>,
        spec: &AttentionSpec,
    ) -> Result<(WgpuStorage, WgpuStorage)> {
        let op = "attention";
        let s = spec;
        let bound = self.bind_attention(x, spec, op)?;
        let out = self.new_storage(s.batch * s.q_len * s.heads * s.head_dim, DType::F32, op)?;
        let lse = self.new_storage(s.batch * s.heads * s.q_len, DType::F32, op)?;
        let pb = self.gpu.upload_words(&bound.params, op)?;
        let bufs = [&bound.q.buf, &bound.k.buf, &bound.v.buf, bound.aux(), &out.buf, &lse.buf, &pb];
        self.gpu.dispatch(&kernels::attention(s.head_dim), &bufs, Self::attention_groups(s, s.q_len));
        Ok((out, lse))
    }

    pub(crate) fn attention_backward_(
        &self,
        x: &AttentionInputs<'_>,
        spec: &AttentionSpec,
        out: &dyn BackendStorage,
        lse: &dyn BackendStorage,
        g: &dyn BackendStorage,
        orders: [HeadOrder; 3],
    ) -> Result<(WgpuStorage, WgpuStorage, WgpuStorage)> {
        let op = "attention_backward";
        let s = spec;
        let mut bound = self.bind_attention(x, spec, op)?;
        let (out, lse, g) = (self.f32s(out, op)?, self.f32s(lse, op)?, self.f32s(g, op)?);
        let (nq, nk) = (s.batch * s.q_len * s.heads * s.head_dim, s.batch * s.kv_len * s.heads * s.head_dim);
        let rows = s.batch * s.heads * s.q_len;
        if out.len != nq || g.len != nq || lse.len != rows {
            return Err(Error::msg(
                op,
                format!("output {}, gradient {} and statistics {} for {spec:?}", out.len, g.len, lse.len),
            ));
        }
        let n = bound.params.len();
        for (w, o) in bound.params[n - 3..].iter_mut().zip(orders) {
            *w = (o == HeadOrder::HeadsMajor) as u32;
        }
        let pb = self.gpu.upload_words(&bound.params, op)?;
        // [lse | rowsum(dO ∘ O)]
        let stats = self.new_storage(2 * rows, DType::F32, op)?;
        let bufs = [&g.buf, &out.buf, &lse.buf, &stats.buf, &pb];
        self.gpu.dispatch(&kernels::attention_rows(s.head_dim), &bufs, Gpu::groups_1d(rows));
        let dq = self.new_storage(nq, DType::F32, op)?;
        let dkv = self.new_storage(2 * nk, DType::F32, op)?;
        let (q, k, v, aux) = (&bound.q.buf, &bound.k.buf, &bound.v.buf, bound.aux());
        let bufs = [q, k, v, aux, &g.buf, &stats.buf, &dkv.buf, &pb];
        self.gpu.dispatch(&kernels::attention_backward_kv(s.head_dim), &bufs, Self::attention_groups(s, s.kv_len));
        let bufs = [q, k, v, aux, &g.buf, &stats.buf, &dq.buf, &pb];
        self.gpu.dispatch(&kernels::attention_backward_q(s.head_dim), &bufs, Self::attention_groups(s, s.q_len));
        let half = |i| Layout::contiguous([2, nk]).narrow(0, i, 1).and_then(|l| self.copy(&dkv, &l, op));
        Ok((dq, half(0)?, half(1)?))
    }
}
