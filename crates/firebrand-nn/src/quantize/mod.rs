//! Post-training quantization.
//!
//! **Dynamic int8** (PyTorch's
//! `torch.ao.quantization.quantize_dynamic`): every `Linear` of a model gets
//! an int8 form of its weight (symmetric, one scale per output channel), and
//! at inference its input is quantized on the fly to `u8` (one scale and
//! zero point per row, which loses less than PyTorch's one per batch; to
//! `0..=127` on CPUs whose int8 kernel is AVX2's, as PyTorch's
//! `reduce_range` there); the product runs in integers
//! (`firebrand_ops::gemm::int8`, AMX-INT8 or VNNI where the CPU has it) and
//! comes back as `f32` with the bias.
//!
//! The `f32` weights stay: with gradients recorded (training, fine-tuning)
//! or on another device the layer computes in `f32` as before, and
//! [`dequantize`] turns the int8 forms off. A weight changed after
//! quantizing needs [`quantize_dynamic`] again.
//!
//! **Block formats** (llama.cpp's): [`quantize_blocks`] puts every
//! `Linear` whose input width is a multiple of 32 into GGUF's `Q8_0`,
//! `Q4_0` or `Q4_1` blocks (a GGUF file's own blocks load through
//! [`Linear::set_block_weight`](crate::Linear::set_block_weight)); the
//! input is quantized on the fly per row to `i16` and each block's product
//! runs in integers (`firebrand_ops::gemm::blocks`).
//!
//! **Static int8** (PyTorch's `prepare`, calibrate, `convert`, for CNNs
//! above all): [`prepare`] attaches [`Observer`]s, [`calibrate`] runs a few
//! batches, [`convert`] fixes each layer's input range; see [`static_int8`].
//!
//! ```
//! use firebrand_nn::{Linear, Module, Sequential, ReLU};
//! use firebrand_nn::quantize::quantize_dynamic;
//! use firebrand_autograd::{Tensor, with_no_grad};
//! let model = Sequential::new().add(Linear::new(8, 16)).add(ReLU).add(Linear::new(16, 4));
//! let x = Tensor::randn([5, 8], 0.0, 1.0);
//! let before = with_no_grad(|| model.forward(&x)).to_vec::<f32>();
//! assert_eq!(quantize_dynamic(&model), 2);
//! let after = with_no_grad(|| model.forward(&x)).to_vec::<f32>();
//! assert!(before.iter().zip(&after).all(|(a, b)| (a - b).abs() < 0.05));
//! ```

mod observer;
pub mod static_int8;

pub use observer::{Observer, ObserverKind};
pub use static_int8::{StaticQuantError, calibrate, conv2d_static, convert, linear_static, prepare};

use crate::Module;
use crate::QuantizedForm;
use firebrand_autograd::{Tensor, UnaryOp, with_no_grad};
use firebrand_ops::gemm::Epilogue;
use firebrand_ops::gemm::blocks::{
    BlockFormat, BlockWeight, F32_PATH_MIN_ROWS, Q16Rows, gemm_blocks, linear_blocks_f32, quantize_rows_i16_into,
};
use firebrand_ops::gemm::int8::{
    InputQuant, QuantizedRows, QuantizedWeight, gemm_u8i8_act, quantize_rows_u8_into, quantize_rows_u8_static_into,
};
use std::cell::RefCell;

thread_local! {
    /// The quantized input of the last call, its buffers reused.
    static ROWS: RefCell<QuantizedRows> = const {
        RefCell::new(QuantizedRows::new())
    };
    /// The block-quantized input of the last call, its buffers reused.
    static Q16: RefCell<Q16Rows> = RefCell::new(Q16Rows::default());
}

/// `f` of `t`'s values detached, on the CPU, contiguous and in `f32`: what
/// quantizing a weight and observing an input read.
pub(crate) fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> R {
    let t = t.detach().to_device(firebrand_autograd::Device::Cpu).expect("the CPU").contiguous();
    t.to_dtype(firebrand_autograd::DType::F32).with_f32_slice(f).expect("f32 values")
}

/// A 2-D weight `(n, k)` quantized to `i8` per row (output channel).
pub(crate) fn quantize_per_row(w: &Tensor) -> QuantizedWeight {
    let (n, k) = (w.dims()[0], w.dims()[1]);
    with_cpu_f32(w, |v| QuantizedWeight::from_f32(v, n, k))
}

/// Whether a layer's quantized form may serve this call: no gradient is
/// recorded (gradients off, or neither `x` nor any of `params` needs one)
/// and `x` is `f32` on the CPU. Otherwise the layer computes in `f32`.
pub fn may_compute_quantized(x: &Tensor, params: &[&Tensor]) -> bool {
    let records =
        firebrand_autograd::is_grad_enabled() && (x.requires_grad() || params.iter().any(|p| p.requires_grad()));
    !records && x.device().is_cpu() && x.dtype() == firebrand_autograd::DType::F32
}

/// Turns on the dynamic int8 form of every layer that has one (`Linear`),
/// the model itself included; returns how many.
pub fn quantize_dynamic<M: Module + ?Sized>(model: &M) -> usize {
    set_all(model, Action::Int8(true))
}

/// Puts every layer that can take it (`Linear` with an input width that is
/// a multiple of 32) into `format`'s blocks; returns how many.
///
/// ```
/// use firebrand_nn::{Linear, Module};
/// use firebrand_nn::quantize::quantize_blocks;
/// use firebrand_ops::gemm::blocks::BlockFormat;
/// use firebrand_autograd::{Tensor, with_no_grad};
/// let layer = Linear::new(64, 8);
/// let x = Tensor::randn([3, 64], 0.0, 1.0);
/// let before = with_no_grad(|| layer.forward(&x)).to_vec::<f32>();
/// assert_eq!(quantize_blocks(&layer, BlockFormat::Q8_0), 1);
/// let after = with_no_grad(|| layer.forward(&x)).to_vec::<f32>();
/// assert!(before.iter().zip(&after).all(|(a, b)| (a - b).abs() < 0.05));
/// ```
pub fn quantize_blocks<M: Module + ?Sized>(model: &M, format: BlockFormat) -> usize {
    set_all(model, Action::Blocks(format))
}

/// Turns every quantized form off again (the layers compute in `f32`);
/// returns how many layers can have one.
pub fn dequantize<M: Module + ?Sized>(model: &M) -> usize {
    set_all(model, Action::Int8(false))
}

/// What [`set_all`] does to each layer.
#[derive(Clone, Copy)]
enum Action {
    Int8(bool),
    Blocks(BlockFormat),
}

fn apply<M: Module + ?Sized>(m: &M, a: Action) -> bool {
    match a {
        Action::Int8(on) => m.set_dynamic_int8(on),
        Action::Blocks(f) => m.set_block_quant(Some(f)),
    }
}

/// Applies `a` to the model and every layer inside it; counts the layers that took it.
fn set_all<M: Module + ?Sized>(model: &M, a: Action) -> usize {
    let inner = crate::ModuleExt::named_modules(model).into_iter().filter(|(_, m)| apply(*m, a)).count();
    usize::from(apply(model, a)) + inner
}

/// A weight stacked from several layers' quantized weights (q, k and v, say),
/// cached against the parts it was made from. The parts are held, so a part
/// dropped and another allocated at its address cannot match.
#[derive(Debug)]
pub struct StackedCache<W>(std::sync::Mutex<Option<Stacked<W>>>);

/// The parts and the weight stacked from them.
type Stacked<W> = (Vec<std::sync::Arc<W>>, std::sync::Arc<W>);

impl<W> Default for StackedCache<W> {
    fn default() -> Self {
        StackedCache(std::sync::Mutex::new(None))
    }
}

impl<W> StackedCache<W> {
    /// The weight stacked from `parts`: the cached one when it was made from
    /// these same parts, else `stack(parts)` (cached unless `None`).
    pub fn get_or_stack(
        &self,
        parts: Vec<std::sync::Arc<W>>,
        stack: impl FnOnce(&[&W]) -> Option<W>,
    ) -> Option<std::sync::Arc<W>> {
        let mut cache = self.0.lock().expect("not poisoned");
        if let Some((from, stacked)) = cache.as_ref()
            && from.len() == parts.len()
            && from.iter().zip(&parts).all(|(a, b)| std::sync::Arc::ptr_eq(a, b))
        {
            return Some(stacked.clone());
        }
        let refs: Vec<&W> = parts.iter().map(|p| &**p).collect();
        let stacked = std::sync::Arc::new(stack(&refs)?);
        *cache = Some((parts, stacked.clone()));
        Some(stacked)
    }

    /// Drops the cached weight and its parts.
    pub fn clear(&self) {
        *self.0.lock().expect("not poisoned") = None;
    }
}

/// `act(x (…, k) · wᵀ + bias)` with `x` quantized per row to `u8` and the
/// product in integers, the activation applied as the sums are
/// dequantized: `(…, n)`.
///
/// # Panics
/// When `x`'s last dim is not the weight's depth.
pub fn linear_int8(x: &Tensor, w: &QuantizedWeight, bias: Option<&Tensor>, act: Option<UnaryOp>) -> Tensor {
    linear_u8(x, w, None, bias, act)
}

/// The int8 product of [`linear_int8`] (`iq: None`, each row's own range)
/// and of [`linear_static`] (`iq` fixed by calibration).
pub(crate) fn linear_u8(
    x: &Tensor,
    w: &QuantizedWeight,
    iq: Option<InputQuant>,
    bias: Option<&Tensor>,
    act: Option<UnaryOp>,
) -> Tensor {
    let k = w.k;
    assert!(
        x.rank() >= 1 && x.dims()[x.rank() - 1] == k,
        "linear ({}): input {:?} for a weight ({}, {k})",
        if iq.is_some() { "static int8" } else { "int8" },
        x.dims(),
        w.n
    );
    let rows = x.dims()[..x.rank() - 1].iter().product::<usize>();
    let b = bias.map(|b| b.to_vec::<f32>());
    let mut out = firebrand_tensor::pool::take_f32(rows * w.n);
    ROWS.with(|q| {
        let mut q = q.borrow_mut();
        x.contiguous()
            .with_f32_slice(|v| match iq {
                Some(iq) => quantize_rows_u8_static_into(v, rows, k, iq, &mut q),
                None => quantize_rows_u8_into(v, rows, k, w.kernel().activation_top(), &mut q),
            })
            .expect("an f32 input");
        gemm_u8i8_act(&q, w, b.as_deref(), act, &mut out);
    });
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank ≥ 1") = w.n;
    Tensor::from_vec(out, dims)
}

/// `act(x (…, k) · wᵀ + bias)` on a block weight: `(…, n)`. Few rows (a
/// generation step) quantize `x` per row to `i16` and sum each block in
/// integers; from [`F32_PATH_MIN_ROWS`] rows (a prompt) the `f32` gemm runs
/// on panels widened from the blocks.
///
/// # Panics
/// When `x`'s last dim is not the weight's depth.
pub fn linear_blocks(x: &Tensor, w: &BlockWeight, bias: Option<&Tensor>, act: Option<UnaryOp>) -> Tensor {
    let k = w.k;
    assert!(
        x.rank() >= 1 && x.dims()[x.rank() - 1] == k,
        "linear ({:?}): input {:?} for a weight ({}, {k})",
        w.format,
        x.dims(),
        w.n
    );
    let rows = x.dims()[..x.rank() - 1].iter().product::<usize>();
    let mut out = firebrand_tensor::pool::take_f32(rows * w.n);
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank ≥ 1") = w.n;
    if rows >= F32_PATH_MIN_ROWS {
        // Many rows (a prompt): bound by arithmetic, so the f32 gemm on
        // panels widened from the blocks, bias and activation in its store.
        let b = bias.map(|b| b.to_vec::<f32>());
        let epi = Epilogue { col_shift: b.as_deref(), act, ..Default::default() };
        x.contiguous().with_f32_slice(|v| linear_blocks_f32(v, rows, w, &mut out, &epi)).expect("an f32 input");
        return Tensor::from_vec(out, dims);
    }
    Q16.with(|q| {
        let mut q = q.borrow_mut();
        x.contiguous().with_f32_slice(|v| quantize_rows_i16_into(v, rows, k, &mut q)).expect("an f32 input");
        gemm_blocks(&q, w, &mut out);
    });
    if let Some(b) = bias {
        let b = b.to_vec::<f32>();
        for row in out.chunks_exact_mut(w.n.max(1)) {
            row.iter_mut().zip(&b).for_each(|(o, b)| *o += b);
        }
    }
    let y = Tensor::from_vec(out, dims);
    match act {
        Some(op) => y.unary(op),
        None => y,
    }
}

/// The suffixes of a quantized weight's tensors in a file.
const INT8: &str = "weight_int8";
const SCALE: &str = "weight_scale";
/// A static int8 layer's input parameters: `[scale, zero point]`.
const INPUT: &str = "input_quant";
const BLOCKS: [(&str, BlockFormat); 3] =
    [("weight_q8_0", BlockFormat::Q8_0), ("weight_q4_0", BlockFormat::Q4_0), ("weight_q4_1", BlockFormat::Q4_1)];

/// Saves a model with its quantized forms, atomically, in safetensors: each
/// quantized `Linear`'s weight as its integers (`{name}.weight_int8`, `I8`
/// `(out, in)`, with `{name}.weight_scale`, `F32` `(out,)`; or
/// `{name}.weight_q4_1` etc., `U8` `(out, in/32, block bytes)`, GGUF's
/// blocks) in place of its `f32` weight, and every other tensor of the
/// state dict as [`save_weights`](crate::save_weights) writes it. An int8
/// model's file is about 4× smaller, a Q4_1 one 6×.
///
/// # Errors
/// [`WeightsError::Io`](crate::WeightsError::Io) when the file cannot be written.
pub fn save_quantized(
    model: &(impl Module + ?Sized),
    path: impl AsRef<std::path::Path>,
) -> Result<(), crate::WeightsError> {
    use crate::serialize::{encode, write_raw};
    use safetensors::Dtype;
    let forms = quantized_forms(model);
    let mut data = Vec::new();
    for (name, t) in crate::ModuleExt::state_dict(model) {
        let quantized = name.strip_suffix("weight").is_some_and(|p| forms.contains_key(p));
        if !quantized {
            data.push(encode(&name, &t));
        }
    }
    let shapes: std::collections::BTreeMap<String, Vec<usize>> =
        crate::ModuleExt::state_dict(model).into_iter().map(|(n, t)| (n, t.dims().to_vec())).collect();
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    for (p, form) in &forms {
        match form {
            QuantizedForm::Int8(q) | QuantizedForm::Static(q, _) => {
                // A convolution's integers go back to its weight's layout (Cout, Cin, kh, kw).
                let shape = shapes.get(&format!("{p}weight")).cloned().unwrap_or(vec![q.n, q.k]);
                let ints = match shape[..] {
                    [_, cin, kh, kw] => firebrand_ops::conv_int8::conv_weight_to_i8(q, cin, kh, kw),
                    _ => q.data.clone(),
                };
                data.push((format!("{p}{INT8}"), Dtype::I8, shape, ints.iter().map(|&v| v as u8).collect()));
                data.push((format!("{p}{SCALE}"), Dtype::F32, vec![q.n], f32_bytes(&q.scale)));
                if let QuantizedForm::Static(_, iq) = form {
                    data.push((format!("{p}{INPUT}"), Dtype::F32, vec![2], f32_bytes(&[iq.scale, iq.zero as f32])));
                }
            }
            QuantizedForm::Blocks(b) => {
                let suffix = BLOCKS.iter().find(|(_, f)| *f == b.format).expect("every format").0;
                let bb = b.format.gguf_block_bytes();
                data.push((format!("{p}{suffix}"), Dtype::U8, vec![b.n, b.k / 32, bb], b.to_gguf_bytes()));
            }
        }
    }
    let meta = std::collections::HashMap::from([("format".to_string(), "firebrand-quantized".to_string())]);
    write_raw(path.as_ref(), &data, Some(meta))
}

/// Every quantized layer's form, by its name prefix (`"0."`, `"encoder.q."`; `""` for the model itself).
fn quantized_forms(model: &(impl Module + ?Sized)) -> std::collections::BTreeMap<String, QuantizedForm> {
    let inner =
        crate::ModuleExt::named_modules(model).into_iter().map(|(name, m)| (format!("{name}."), m.quantized_form()));
    std::iter::once((String::new(), model.quantized_form())).chain(inner).filter_map(|(p, f)| Some((p, f?))).collect()
}

/// Loads a file [`save_quantized`] wrote into a model of the same
/// architecture: every tensor checked by name, shape and dtype before
/// anything is copied; each quantized layer gets its form back exactly
/// (the same integers and scales, so the same outputs) and its `f32`
/// weight the dequantized values (for training and the `f32` paths).
///
/// # Errors
/// On I/O failure, a corrupt file, a missing or unexpected tensor, a shape
/// or dtype mismatch, or a quantized weight for a layer that cannot take
/// it, each naming the file and the tensor.
pub fn load_quantized(
    model: &(impl Module + ?Sized),
    path: impl AsRef<std::path::Path>,
) -> Result<crate::LoadReport, crate::WeightsError> {
    use crate::WeightsError;
    use safetensors::{Dtype, SafeTensors};
    let path = path.as_ref();
    let bad = |msg: String| WeightsError::Format { path: path.to_path_buf(), msg };
    let bytes = std::fs::read(path).map_err(|source| WeightsError::Io { path: path.to_path_buf(), source })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let mut tensors = std::collections::BTreeMap::new();
    let mut ints: std::collections::BTreeMap<String, (Vec<i8>, Vec<usize>)> = Default::default();
    let mut inputs: std::collections::BTreeMap<String, InputQuant> = Default::default();
    let mut scales: std::collections::BTreeMap<String, Vec<f32>> = Default::default();
    let mut forms: Vec<(String, QuantizedForm)> = Vec::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        if let Some(p) = name.strip_suffix(INT8) {
            if view.dtype() != Dtype::I8 || !(shape.len() == 2 || shape.len() == 4) {
                return Err(bad(format!(
                    "{name}: expected I8 (out, in) or (out, in, kh, kw), got {:?} {shape:?}",
                    view.dtype()
                )));
            }
            ints.insert(p.to_string(), (view.data().iter().map(|&b| b as i8).collect(), shape));
        } else if let Some(p) = name.strip_suffix(INPUT) {
            let t = crate::serialize::decode(&view).filter(|_| view.dtype() == Dtype::F32 && shape == [2]);
            let v = t.ok_or_else(|| bad(format!("{name}: expected F32 (2,), got {:?} {shape:?}", view.dtype())))?;
            let v = v.to_vec::<f32>();
            if !(v[0] > 0.0 && v[0].is_finite() && (0.0..=255.0).contains(&v[1]) && v[1].fract() == 0.0) {
                return Err(bad(format!("{name}: scale {} and zero point {} are not valid", v[0], v[1])));
            }
            inputs.insert(p.to_string(), InputQuant { scale: v[0], zero: v[1] as u8 });
        } else if let Some(p) = name.strip_suffix(SCALE) {
            let t = crate::serialize::decode(&view).filter(|_| view.dtype() == Dtype::F32 && shape.len() == 1);
            let t = t.ok_or_else(|| bad(format!("{name}: expected F32 (out,), got {:?} {shape:?}", view.dtype())))?;
            scales.insert(p.to_string(), t.to_vec::<f32>());
        } else if let Some((p, format)) = BLOCKS.iter().find_map(|(s, f)| name.strip_suffix(s).map(|p| (p, *f))) {
            if view.dtype() != Dtype::U8 || shape.len() != 3 || shape[2] != format.gguf_block_bytes() {
                return Err(bad(format!(
                    "{name}: expected U8 (out, in/32, {}), got {:?} {shape:?}",
                    format.gguf_block_bytes(),
                    view.dtype()
                )));
            }
            let w = BlockWeight::from_gguf_bytes(format, view.data(), shape[0], shape[1] * 32)
                .map_err(|e| bad(format!("{name}: {e}")))?;
            tensors.insert(format!("{p}weight"), Tensor::from_vec(w.dequantize(), [w.n, w.k]));
            forms.push((p.to_string(), QuantizedForm::Blocks(w.into())));
        } else {
            let t = crate::serialize::decode(&view).ok_or_else(|| WeightsError::DType {
                path: path.to_path_buf(),
                name: name.clone(),
                found: format!("{:?}", view.dtype()),
            })?;
            tensors.insert(name, t);
        }
    }
    for (p, (data, shape)) in ints {
        let scale = scales.remove(&p).ok_or_else(|| bad(format!("{p}{INT8} has no {p}{SCALE}")))?;
        let (n, k) = (shape[0], shape[1..].iter().product::<usize>());
        if scale.len() != n {
            return Err(bad(format!("{p}{SCALE}: {} scales for {n} channels", scale.len())));
        }
        // The f32 weight: the integers times their channel's scale, in the file's layout.
        let values = data.iter().enumerate().map(|(i, &q)| q as f32 * scale[i / k.max(1)]).collect();
        tensors.insert(format!("{p}weight"), Tensor::from_vec(values, shape.clone()));
        let w = match shape[..] {
            [_, cin, kh, kw] => firebrand_ops::conv_int8::conv_weight_from_i8(&data, scale, n, cin, kh, kw),
            _ => QuantizedWeight::from_i8(data, scale, n, k),
        };
        let form = match inputs.remove(&p) {
            Some(iq) => QuantizedForm::Static(w.into(), iq),
            None if shape.len() == 4 => {
                return Err(bad(format!("{p}{INT8}: a convolution's int8 weight needs {p}{INPUT}")));
            }
            None => QuantizedForm::Int8(w.into()),
        };
        forms.push((p, form));
    }
    if let Some(p) = inputs.keys().next() {
        return Err(bad(format!("{p}{INPUT} has no {p}{INT8}")));
    }
    if let Some(p) = scales.keys().next() {
        return Err(bad(format!("{p}{SCALE} has no {p}{INT8}")));
    }
    let plan = crate::serialize::plan_load(&crate::ModuleExt::state_dict(model), tensors, path, true)?;
    // Every form must find a layer that takes it before anything else
    // changes; on a refusal the forms already set are put back.
    let layers: std::collections::BTreeMap<String, &dyn Module> =
        crate::ModuleExt::named_modules(model).into_iter().map(|(n, m)| (format!("{n}."), m)).collect();
    let mut done: Vec<(&dyn Module, Option<QuantizedForm>)> = Vec::new();
    for (p, form) in forms {
        let layer = layers.get(&p).copied();
        let old = layer.and_then(|l| l.quantized_form());
        match layer {
            Some(l) if l.set_quantized_form(form) => done.push((l, old)),
            _ => {
                for (l, old) in done {
                    match old {
                        Some(f) => l.set_quantized_form(f),
                        None => l.set_dynamic_int8(false),
                    };
                }
                return Err(bad(format!("{p}weight: no layer of that name takes a quantized weight of that shape")));
            }
        }
    }
    let report = with_no_grad(|| plan.apply());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Activation, Linear, ModuleExt, ReLU, Sequential};
    use firebrand_autograd::with_no_grad;

    fn mlp() -> Sequential {
        firebrand_autograd::manual_seed(3);
        Sequential::new().add(Linear::new(37, 64).with_activation(Activation::Gelu)).add(ReLU).add(Linear::new(64, 5))
    }

    /// Quantized inference stays close to f32 (a 3-D input too), the
    /// weights and the state dict are untouched, training still computes in
    /// f32, and `dequantize` gives the f32 outputs back exactly.
    #[test]
    fn dynamic_int8_is_close_leaves_weights_and_trains_in_f32() {
        let model = mlp();
        let x = Tensor::randn([3, 7, 37], 0.0, 1.0);
        let f32_out = with_no_grad(|| model.forward(&x)).to_vec::<f32>();
        let state: Vec<Vec<f32>> = model.state_dict().iter().map(|(_, t)| t.to_vec::<f32>()).collect();
        assert_eq!(quantize_dynamic(&model), 2);
        let q_out = with_no_grad(|| model.forward(&x));
        assert_eq!(q_out.dims(), &[3, 7, 5]);
        let q_out = q_out.to_vec::<f32>();
        let scale = f32_out.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = q_out.iter().zip(&f32_out).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff <= 0.03 * scale && diff > 0.0, "int8 vs f32: {diff} (scale {scale})");
        let after: Vec<Vec<f32>> = model.state_dict().iter().map(|(_, t)| t.to_vec::<f32>()).collect();
        assert_eq!(state, after, "quantizing changed the f32 weights");
        // With gradients recorded the layers compute in f32.
        let y = model.forward(&x);
        assert_eq!(y.to_vec::<f32>(), f32_out);
        y.sum_all().backward();
        assert!(model.parameters().iter().all(|p| p.grad().is_some()));
        assert_eq!(dequantize(&model), 2);
        assert_eq!(with_no_grad(|| model.forward(&x)).to_vec::<f32>(), f32_out);
    }

    /// LSTM, GRU and RNN: both projections of every cell in int8, close to
    /// f32 (every step's output and the final state), one-hot input too;
    /// with gradients recorded and after `dequantize`, f32 exactly.
    #[test]
    fn recurrent_layers_quantize_both_projections() {
        use crate::{GRU, LSTM, OneHot, RNN};
        firebrand_autograd::manual_seed(9);
        let x = Tensor::randn([3, 7, 10], 0.0, 1.0);
        let layers: Vec<Box<dyn crate::AnyModule>> = vec![
            Box::new(LSTM::with_layers(10, 32, 2, true, true)),
            Box::new(GRU::new(10, 32)),
            Box::new(RNN::new(10, 32)),
        ];
        for layer in &layers {
            let f32_out = with_no_grad(|| layer.forward(&x)).to_vec::<f32>();
            assert_eq!(quantize_dynamic(&**layer), 1, "{}", layer.describe());
            let q = with_no_grad(|| layer.forward(&x)).to_vec::<f32>();
            let diff = q.iter().zip(&f32_out).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(diff > 0.0 && diff < 0.03, "{}: int8 vs f32 {diff}", layer.describe());
            assert_eq!(layer.forward(&x).to_vec::<f32>(), f32_out, "{}: with gradients, f32", layer.describe());
            dequantize(&**layer);
            assert_eq!(with_no_grad(|| layer.forward(&x)).to_vec::<f32>(), f32_out, "{}", layer.describe());
        }
        // Ids into OneHot → LSTM (the row-gather input projection, the hidden one in int8).
        let model = Sequential::new().add(OneHot(6)).add(LSTM::new(6, 16).return_sequences(false));
        let ids = Tensor::from_vec(vec![0i64, 5, 2, 1, 3, 3, 4, 0], [2, 4]);
        let f32_out = with_no_grad(|| model.forward(&ids)).to_vec::<f32>();
        assert_eq!(quantize_dynamic(&model), 1);
        let q = with_no_grad(|| model.forward(&ids)).to_vec::<f32>();
        let diff = q.iter().zip(&f32_out).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff > 0.0 && diff < 0.03, "one-hot LSTM: {diff}");
    }

    /// Multi-head attention: the stacked q/k/v projection in int8 (and
    /// `out_proj`, a `Linear`), for self-attention, shared keys/values and
    /// separate ones; f32 with gradients and after `dequantize`.
    #[test]
    fn attention_projections_quantize() {
        use crate::MultiHeadAttention;
        firebrand_autograd::manual_seed(11);
        let mha = MultiHeadAttention::new(32, 4);
        let (x, kv, v) = (
            Tensor::randn([2, 5, 32], 0.0, 1.0),
            Tensor::randn([2, 7, 32], 0.0, 1.0),
            Tensor::randn([2, 7, 32], 0.0, 1.0),
        );
        let run = || {
            with_no_grad(|| {
                [mha.attend(&x, &x, &x, None), mha.attend(&x, &kv, &kv, None), mha.attend(&x, &kv, &v, None)]
                    .map(|t| t.to_vec::<f32>())
            })
        };
        let f32_out = run();
        assert_eq!(quantize_dynamic(&mha), 2, "in_proj and out_proj");
        let q = run();
        for (i, (a, b)) in q.iter().zip(&f32_out).enumerate() {
            let diff = a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(diff > 0.0 && diff < 0.03, "case {i}: int8 vs f32 {diff}");
        }
        assert_eq!(mha.forward(&x).to_vec::<f32>(), f32_out[0], "with gradients, f32");
        dequantize(&mha);
        assert_eq!(run(), f32_out);
    }

    /// Block forms: each format close to f32 (Q8_0 closer than the 4-bit
    /// ones), bias and fused activation kept, a layer 37 wide left in f32,
    /// gradients recorded in f32, `dequantize` back to f32 exactly.
    #[test]
    fn block_forms_are_close_skip_odd_widths_and_train_in_f32() {
        firebrand_autograd::manual_seed(5);
        let model = Sequential::new()
            .add(Linear::new(64, 96).with_activation(Activation::Gelu))
            .add(Linear::new(96, 37))
            .add(ReLU)
            .add(Linear::new(37, 5));
        let x = Tensor::randn([2, 3, 64], 0.0, 1.0);
        let f32_out = with_no_grad(|| model.forward(&x)).to_vec::<f32>();
        let scale = f32_out.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (format, tol) in [(BlockFormat::Q8_0, 0.02), (BlockFormat::Q4_0, 0.15), (BlockFormat::Q4_1, 0.15)] {
            assert_eq!(quantize_blocks(&model, format), 2, "{format:?}: the 37-wide layer stays f32");
            let q = with_no_grad(|| model.forward(&x));
            assert_eq!(q.dims(), &[2, 3, 5]);
            let diff = q.to_vec::<f32>().iter().zip(&f32_out).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(diff <= tol * scale && diff > 0.0, "{format:?} vs f32: {diff} (scale {scale})");
            assert_eq!(model.forward(&x).to_vec::<f32>(), f32_out, "{format:?}: with gradients, f32");
        }
        dequantize(&model);
        assert_eq!(with_no_grad(|| model.forward(&x)).to_vec::<f32>(), f32_out);
    }

    /// Quantized models save and load back exactly: the same outputs, bit
    /// for bit, in a fresh model; the file about 4× (int8) or 6× (Q4_1)
    /// smaller; a file for another model is refused with nothing changed.
    #[test]
    fn quantized_models_save_and_load_back_exactly() {
        let dir = std::env::temp_dir().join(format!("fb-quantized-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let make = |seed| {
            firebrand_autograd::manual_seed(seed);
            Sequential::new()
                .add(Linear::new(256, 128).with_activation(Activation::Relu))
                .add(Linear::new(128, 64))
                .add(ReLU)
                .add(Linear::new(64, 10))
        };
        let x = Tensor::randn([4, 256], 0.0, 1.0);
        let f32_file = dir.join("f32.safetensors");
        crate::save_weights(&make(1), &f32_file).unwrap();
        let f32_bytes = std::fs::metadata(&f32_file).unwrap().len() as f64;
        for (tag, ratio) in [("int8", 3.5), ("q4_1", 5.0)] {
            let model = make(1);
            match tag {
                "int8" => assert_eq!(quantize_dynamic(&model), 3),
                _ => assert_eq!(quantize_blocks(&model, BlockFormat::Q4_1), 3),
            }
            let want = with_no_grad(|| model.forward(&x)).to_vec::<f32>();
            let file = dir.join(format!("{tag}.safetensors"));
            save_quantized(&model, &file).unwrap();
            let size = std::fs::metadata(&file).unwrap().len() as f64;
            assert!(f32_bytes / size >= ratio, "{tag}: {size} bytes against f32's {f32_bytes}");
            let fresh = make(2);
            load_quantized(&fresh, &file).unwrap();
            assert_eq!(with_no_grad(|| fresh.forward(&x)).to_vec::<f32>(), want, "{tag}: loaded outputs");
            // The f32 weights are the dequantized ones: close to the original.
            let w0 = fresh.get::<Linear>(0).unwrap().weight.to_vec::<f32>();
            let orig = make(1).get::<Linear>(0).unwrap().weight.to_vec::<f32>();
            let err = w0.iter().zip(&orig).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(err < 0.01, "{tag}: dequantized weight off by {err}");
            // Another architecture: refused, the model untouched.
            let other = Sequential::new().add(Linear::new(256, 128)).add(Linear::new(128, 64)).add(Linear::new(64, 11));
            let before = other.get::<Linear>(2).unwrap().weight.to_vec::<f32>();
            let e = load_quantized(&other, &file).unwrap_err().to_string();
            assert!(e.contains("2.") && e.contains(&file.display().to_string()), "{e}");
            assert_eq!(other.get::<Linear>(2).unwrap().weight.to_vec::<f32>(), before);
            assert!(other.get::<Linear>(0).unwrap().quantized().is_none(), "{tag}: a refused load set a form");
        }
        let e = load_quantized(&make(3), dir.join("missing.safetensors")).unwrap_err().to_string();
        assert!(e.contains("missing.safetensors"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The stacked weight is reused for the same parts only, and holds them.
    #[test]
    fn a_stacked_cache_is_reused_for_the_same_parts_only() {
        use std::sync::Arc;
        let cache = StackedCache::<Vec<u8>>::default();
        let (a, b) = (Arc::new(vec![1u8]), Arc::new(vec![2u8]));
        let stack = |p: &[&Vec<u8>]| Some(p.iter().flat_map(|v| v.iter().copied()).collect::<Vec<u8>>());
        let first = cache.get_or_stack(vec![a.clone(), b.clone()], stack).unwrap();
        assert_eq!(*first, [1, 2]);
        let again = cache.get_or_stack(vec![a.clone(), b.clone()], |_| panic!("rebuilt")).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(Arc::strong_count(&a), 2, "the cache holds its parts");
        let c = Arc::new(vec![3u8]);
        assert_eq!(*cache.get_or_stack(vec![a.clone(), c], stack).unwrap(), [1, 3]);
        assert!(cache.get_or_stack(vec![a.clone()], |_| None).is_none());
        cache.clear();
        assert_eq!(Arc::strong_count(&a), 1);
    }

    #[test]
    fn a_block_weight_of_another_shape_is_refused() {
        let l = Linear::new(64, 3);
        let w = BlockWeight::quantize(&[0.0; 4 * 64], 4, 64, BlockFormat::Q4_1);
        let e =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l.set_block_weight(Some(w.into())))).unwrap_err();
        let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("Q4_1 weight (4, 64)") && msg.contains("layer (3, 64)"), "{msg}");
    }

    #[test]
    fn a_wrong_input_width_names_the_shapes() {
        let l = Linear::new(4, 3);
        quantize_dynamic(&l);
        let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_no_grad(|| l.forward(&Tensor::zeros([2, 5])));
        }))
        .unwrap_err();
        let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
        assert_eq!(msg, "Linear(4 -> 3): expected input (…, 4), got [2, 5]");
    }
}
