//! The device seam: a second device registered through the `Backend` trait
//! (here a proxy that keeps its buffers in a different storage type and counts
//! the primitive calls it serves) runs the same user code, and mixing devices
//! in one op is a clear error.

use firebrand_autograd::{Device, Error, Tensor};
use firebrand_ops::CPU;
use firebrand_tensor::backend::{
    AttentionInputs, AttentionSpec, Backend, BackendStorage, HeadOrder, Rows, Storage, register_backend,
};
use firebrand_tensor::op::{BinaryOp, ReduceOp, UnaryOp, Window2d};
use firebrand_tensor::{CpuStorage, DType, Layout, Result};
use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};

const DEV: Device = Device::Wgpu(7);
static CALLS: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
struct Proxy(Storage);

impl BackendStorage for Proxy {
    fn device(&self) -> Device {
        DEV
    }
    fn dtype(&self) -> DType {
        self.0.dtype()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn to_cpu(&self) -> CpuStorage {
        self.0.to_cpu()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

fn inner(s: &dyn BackendStorage) -> &dyn BackendStorage {
    &*s.as_any().downcast_ref::<Proxy>().expect("a proxy-device storage").0
}

fn wrap(r: Result<Storage>) -> Result<Storage> {
    CALLS.fetch_add(1, Ordering::Relaxed);
    Ok(Box::new(Proxy(r?)))
}

fn unwrap_inputs<'a>(x: &AttentionInputs<'a>) -> AttentionInputs<'a> {
    AttentionInputs {
        q: inner(x.q),
        k: inner(x.k),
        v: inner(x.v),
        key_padding: x.key_padding.map(inner),
        attn_mask: x.attn_mask.map(inner),
        ..*x
    }
}

struct ProxyBackend;

impl Backend for ProxyBackend {
    fn device(&self) -> Device {
        DEV
    }
    fn upload(&self, data: CpuStorage) -> Result<Storage> {
        wrap(CPU.upload(data))
    }
    fn contiguous(&self, x: &dyn BackendStorage, l: &Layout) -> Result<Storage> {
        wrap(CPU.contiguous(inner(x), l))
    }
    fn to_dtype(&self, x: &dyn BackendStorage, l: &Layout, dtype: firebrand_tensor::DType) -> Result<Storage> {
        wrap(CPU.to_dtype(inner(x), l, dtype))
    }
    fn unary(&self, op: UnaryOp, x: &dyn BackendStorage, l: &Layout) -> Result<Storage> {
        wrap(CPU.unary(op, inner(x), l))
    }
    fn unary_backward(
        &self,
        op: UnaryOp,
        x: &dyn BackendStorage,
        y: &dyn BackendStorage,
        g: &dyn BackendStorage,
    ) -> Result<Storage> {
        wrap(CPU.unary_backward(op, inner(x), inner(y), inner(g)))
    }
    fn binary(
        &self,
        op: BinaryOp,
        a: &dyn BackendStorage,
        la: &Layout,
        b: &dyn BackendStorage,
        lb: &Layout,
    ) -> Result<Storage> {
        wrap(CPU.binary(op, inner(a), la, inner(b), lb))
    }
    fn reduce(&self, op: ReduceOp, x: &dyn BackendStorage, l: &Layout, axes: &[bool]) -> Result<Storage> {
        wrap(CPU.reduce(op, inner(x), l, axes))
    }
    fn matmul(&self, a: &dyn BackendStorage, la: &Layout, b: &dyn BackendStorage, lb: &Layout) -> Result<Storage> {
        wrap(CPU.matmul(inner(a), la, inner(b), lb))
    }
    fn softmax(&self, x: &dyn BackendStorage, l: &Layout, log: bool) -> Result<Storage> {
        wrap(CPU.softmax(inner(x), l, log))
    }
    fn softmax_backward(
        &self,
        y: &dyn BackendStorage,
        g: &dyn BackendStorage,
        cols: usize,
        log: bool,
    ) -> Result<Storage> {
        wrap(CPU.softmax_backward(inner(y), inner(g), cols, log))
    }
    fn index_select(&self, x: &dyn BackendStorage, l: &Layout, d: usize, idx: &dyn BackendStorage) -> Result<Storage> {
        wrap(CPU.index_select(inner(x), l, d, inner(idx)))
    }
    fn index_add(
        &self,
        src: &dyn BackendStorage,
        o: usize,
        n: usize,
        i: usize,
        idx: &dyn BackendStorage,
    ) -> Result<Storage> {
        wrap(CPU.index_add(inner(src), o, n, i, inner(idx)))
    }
    fn gather(
        &self,
        x: &dyn BackendStorage,
        o: usize,
        n: usize,
        i: usize,
        index: &dyn BackendStorage,
    ) -> Result<Storage> {
        wrap(CPU.gather(inner(x), o, n, i, inner(index)))
    }
    fn scatter_add(
        &self,
        src: &dyn BackendStorage,
        o: usize,
        n: usize,
        i: usize,
        index: &dyn BackendStorage,
    ) -> Result<Storage> {
        wrap(CPU.scatter_add(inner(src), o, n, i, inner(index)))
    }
    fn concat(&self, parts: &[(&dyn BackendStorage, &Layout)], o: usize, sizes: &[usize], i: usize) -> Result<Storage> {
        let parts: Vec<(&dyn BackendStorage, &Layout)> = parts.iter().map(|&(p, l)| (inner(p), l)).collect();
        wrap(CPU.concat(&parts, o, sizes, i))
    }
    fn where_select(&self, c: &dyn BackendStorage, a: &dyn BackendStorage, b: &dyn BackendStorage) -> Result<Storage> {
        wrap(CPU.where_select(inner(c), inner(a), inner(b)))
    }
    fn im2col(&self, x: &dyn BackendStorage, dims: [usize; 4], win: &Window2d) -> Result<Storage> {
        wrap(CPU.im2col(inner(x), dims, win))
    }
    fn col2im(&self, cols: &dyn BackendStorage, dims: [usize; 4], win: &Window2d) -> Result<Storage> {
        wrap(CPU.col2im(inner(cols), dims, win))
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
        let (y, s) = CPU.layer_norm(inner(x), weight.map(inner), bias.map(inner), rows, cols, eps)?;
        Ok((wrap(Ok(y))?, wrap(Ok(s))?))
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
        let (dx, dwb) = CPU.layer_norm_backward(inner(x), weight.map(inner), inner(stats), inner(g), rows, cols)?;
        Ok((wrap(Ok(dx))?, wrap(Ok(dwb))?))
    }
    fn attention(&self, x: &AttentionInputs<'_>, spec: &AttentionSpec) -> Result<(Storage, Storage)> {
        let (o, l) = CPU.attention(&unwrap_inputs(x), spec)?;
        Ok((wrap(Ok(o))?, wrap(Ok(l))?))
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
        let (dq, dk, dv) = CPU.attention_backward(&unwrap_inputs(x), spec, inner(out), inner(lse), inner(g), orders)?;
        Ok((wrap(Ok(dq))?, wrap(Ok(dk))?, wrap(Ok(dv))?))
    }
    fn max_pool2d(&self, x: &dyn BackendStorage, dims: [usize; 4], win: &Window2d) -> Result<(Storage, Storage)> {
        let (v, i) = CPU.max_pool2d(inner(x), dims, win)?;
        Ok((wrap(Ok(v))?, wrap(Ok(i))?))
    }
    fn max_pool2d_backward(
        &self,
        g: &dyn BackendStorage,
        idx: &dyn BackendStorage,
        dims: [usize; 4],
        win: &Window2d,
    ) -> Result<Storage> {
        wrap(CPU.max_pool2d_backward(inner(g), inner(idx), dims, win))
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
        wrap(CPU.lstm_cell(inner(xw), xw_at, inner(hw), inner(c_prev), c_at, b, h))
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
        let (s, c, g, dh, dc) = (inner(state), inner(c_prev), inner(g_out), inner(dh_next), inner(dc_next));
        wrap(CPU.lstm_cell_backward(s, c, c_at, g, g_at, dh, dc, dc_at, b, h))
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
        wrap(CPU.bias_act_to_nchw(inner(yt), bias.map(inner), n, l, c, act))
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
        let (a, b) = CPU.bias_act_to_nchw_backward(inner(g), inner(y), n, l, c, act)?;
        Ok((wrap(Ok(a))?, wrap(Ok(b))?))
    }
    fn depthwise_conv2d(
        &self,
        x: &dyn BackendStorage,
        weight: &dyn BackendStorage,
        bias: Option<&dyn BackendStorage>,
        dims: [usize; 4],
        m: usize,
        win: &Window2d,
        act: Option<UnaryOp>,
    ) -> Result<Storage> {
        wrap(CPU.depthwise_conv2d(inner(x), inner(weight), bias.map(inner), dims, m, win, act))
    }
    fn depthwise_conv2d_backward(
        &self,
        g: &dyn BackendStorage,
        x: &dyn BackendStorage,
        weight: &dyn BackendStorage,
        dims: [usize; 4],
        m: usize,
        win: &Window2d,
        need: [bool; 2],
    ) -> Result<(Option<Storage>, Option<Storage>)> {
        let (a, b) = CPU.depthwise_conv2d_backward(inner(g), inner(x), inner(weight), dims, m, win, need)?;
        Ok((a.map(|a| wrap(Ok(a))).transpose()?, b.map(|b| wrap(Ok(b))).transpose()?))
    }
    fn pointwise_conv2d(
        &self,
        x: &dyn BackendStorage,
        w: &dyn BackendStorage,
        scale: Option<&dyn BackendStorage>,
        shift: Option<&dyn BackendStorage>,
        dims: [usize; 4],
        act: Option<UnaryOp>,
    ) -> Result<Storage> {
        wrap(CPU.pointwise_conv2d(inner(x), inner(w), scale.map(inner), shift.map(inner), dims, act))
    }
    fn channel_affine(
        &self,
        x: &dyn BackendStorage,
        scale: Option<&dyn BackendStorage>,
        shift: Option<&dyn BackendStorage>,
        dims: [usize; 3],
        act: Option<UnaryOp>,
    ) -> Result<Storage> {
        wrap(CPU.channel_affine(inner(x), scale.map(inner), shift.map(inner), dims, act))
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
        let (a, b, c) = CPU.channel_affine_backward(inner(g), inner(x), inner(y), scale.map(inner), dims, act, need)?;
        let w = |s: Option<Storage>| s.map(|s| wrap(Ok(s))).transpose();
        Ok((w(a)?, w(b)?, w(c)?))
    }
    fn batch_norm_stats(&self, x: &dyn BackendStorage, dims: [usize; 3]) -> Result<Storage> {
        wrap(CPU.batch_norm_stats(inner(x), dims))
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
        let act = act.map(|(op, y)| (op, inner(y)));
        let (a, b) = CPU.batch_norm_backward(inner(g), inner(x), inner(stats), weight.map(inner), dims, act)?;
        Ok((wrap(Ok(a))?, wrap(Ok(b))?))
    }
    fn avg_pool2d(&self, x: &dyn BackendStorage, dims: [usize; 4], win: &Window2d, cip: bool) -> Result<Storage> {
        wrap(CPU.avg_pool2d(inner(x), dims, win, cip))
    }
    fn avg_pool2d_backward(
        &self,
        g: &dyn BackendStorage,
        dims: [usize; 4],
        win: &Window2d,
        cip: bool,
    ) -> Result<Storage> {
        wrap(CPU.avg_pool2d_backward(inner(g), dims, win, cip))
    }
}

#[test]
fn same_code_runs_on_a_registered_device() {
    // Before registration the device is reported unavailable.
    let x = Tensor::from_vec(vec![0.5f32, -1.0, 2.0, 0.25, 1.5, -0.75], [2, 3]);
    if !matches!(x.to_device(Device::Wgpu(8)), Err(Error::DeviceUnavailable { .. })) {
        panic!("an unregistered device must be unavailable");
    }
    register_backend(Box::new(ProxyBackend));

    let model = |x: &Tensor, w: &Tensor, labels: &Tensor| -> Tensor {
        let logits = x.matmul(w).tanh();
        let logp = logits.log_softmax(-1);
        let picked = logp.gather(1, labels);
        -picked.mean_all() + w.square().sum_all() * 0.01
    };
    let w_cpu = Tensor::from_vec(vec![0.1f32, -0.2, 0.3, 0.4, 0.5, -0.6, 0.7, -0.8, 0.9, 0.2, -0.1, 0.05], [3, 4])
        .requires_grad_(true);
    let labels_cpu = Tensor::from_vec(vec![1i64, 3], [2, 1]);
    let loss_cpu = model(&x, &w_cpu, &labels_cpu);
    loss_cpu.backward();

    let before = CALLS.load(Ordering::Relaxed);
    let xd = x.to_device(DEV).unwrap();
    let wd = w_cpu.detach().to_device(DEV).unwrap().requires_grad_(true);
    let labels = labels_cpu.to_device(DEV).unwrap();
    assert_eq!(xd.device(), DEV);
    let loss = model(&xd, &wd, &labels);
    assert_eq!(loss.device(), DEV);
    loss.backward();
    assert!(CALLS.load(Ordering::Relaxed) > before + 10, "the ops ran through the device's backend");
    assert_eq!(loss.to_vec::<f32>(), loss_cpu.to_vec::<f32>());
    let g = wd.grad().unwrap();
    assert_eq!(g.device(), DEV);
    assert_eq!(g.to_vec::<f32>(), w_cpu.grad().unwrap().to_vec::<f32>());
    assert_eq!(xd.to_device(Device::Cpu).unwrap().device(), Device::Cpu);

    // Mixing devices in one op is an error that names the op and both devices.
    let e = xd.try_add(&x).unwrap_err();
    assert_eq!(e.to_string(), "add: tensors on different devices (Wgpu(7) and Cpu)");
    assert!(matches!(xd.try_matmul(&w_cpu), Err(Error::DeviceMismatch { op: "matmul", .. })));
    // Host-only in-place updates refuse device tensors.
    assert!(matches!(xd.update_f32("sgd", |_| {}), Err(Error::DeviceUnavailable { .. })));
}
