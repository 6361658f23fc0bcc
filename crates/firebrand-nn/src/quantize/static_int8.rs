//! Static int8 quantization (PyTorch's eager mode: `prepare`, calibrate,
//! `convert`).
//!
//! 1. [`prepare`] attaches an [`Observer`] to the input of every layer
//!    that can compute in int8 (`Linear`, and `Conv2d` with one group).
//! 2. [`calibrate`] (or any forward passes) runs a few representative
//!    batches; each observer records its layer's inputs.
//! 3. [`convert`] fixes each layer's input scale and zero point from its
//!    observer ([`InputQuant`]) and quantizes its weight per output channel.
//!
//! A converted layer quantizes its input with those fixed parameters (no
//! range pass; values past the range saturate), sums in `i32` on the int8
//! gemm (AMX-INT8 here), and applies the bias and a fused activation
//! (ReLU, GELU, …) as the sums are dequantized: a convolution, its bias
//! and its ReLU run as one pass ([`firebrand_ops::conv_int8`]). Outputs
//! are `f32`, so pooling, flattening and the other layers run unchanged
//! between the quantized ones.
//!
//! As with the dynamic form, the `f32` weights stay: with gradients
//! recorded the layers compute in `f32`, and
//! [`dequantize`](super::dequantize) turns the int8 forms off.
//!
//! ```
//! use firebrand_nn::{Conv2d, Linear, Flatten, Module, Padding, Sequential, Activation};
//! use firebrand_nn::quantize::{ObserverKind, calibrate, convert, prepare};
//! use firebrand_autograd::{Tensor, with_no_grad};
//! let mut model = Sequential::new()
//!     .add(Conv2d::new(1, 4, 3).padding(Padding::Same).with_activation(Activation::Relu))
//!     .add(Flatten)
//!     .add(Linear::new(4 * 6 * 6, 3));
//! let batches: Vec<Tensor> = (0..4).map(|_| Tensor::randn([8, 1, 6, 6], 0.0, 1.0)).collect();
//! assert_eq!(prepare(&model, ObserverKind::Histogram), 2);
//! calibrate(&mut model, &batches);
//! assert_eq!(convert(&model).unwrap(), 2);
//! let y = with_no_grad(|| model.forward(&batches[0])); // in int8
//! assert_eq!(y.dims(), &[8, 3]);
//! ```

use super::observer::{Observer, ObserverKind};
use crate::Module;
use firebrand_autograd::{Tensor, UnaryOp, with_no_grad};
use firebrand_ops::conv_int8::{ConvGeometry, InputQuant, conv2d_u8i8};
use firebrand_ops::gemm::int8::QuantizedWeight;
use std::sync::Mutex;

/// Why [`convert`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StaticQuantError {
    /// A prepared layer saw no finite input: calibration did not reach it.
    #[error(
        "static quantization: layer `{layer}` ({describe}) was prepared but saw no input; calibrate before convert"
    )]
    NotCalibrated {
        /// Its path in the model (`"0"`, `"encoder.q"`; `""` for the model itself).
        layer: String,
        /// What it is (`Conv2d(1 -> 32, 3x3, …)`).
        describe: String,
    },
    /// No layer had an observer.
    #[error("static quantization: no layer was prepared; call prepare (and calibrate) before convert")]
    NotPrepared,
}

/// Step 1: attaches a fresh observer of `kind` to every layer that can
/// compute in static int8, the model itself included; returns how many.
/// Preparing again starts the observers afresh.
pub fn prepare<M: Module>(model: &M, kind: ObserverKind) -> usize {
    layers(model).filter(|(_, m)| m.set_observer(Some(kind))).count()
}

/// Step 2: runs `batches` through the model in evaluation mode without
/// gradients, so that the observers see them (any forward pass after
/// [`prepare`] is observed too); returns how many batches ran.
pub fn calibrate<M: Module + ?Sized>(model: &mut M, batches: &[Tensor]) -> usize {
    model.set_training(false);
    with_no_grad(|| batches.iter().for_each(|b| drop(model.forward(b))));
    batches.len()
}

/// Step 3: gives every prepared layer its static int8 form (input
/// parameters from its observer, weight per output channel) and removes
/// the observers; returns how many layers were converted.
///
/// # Errors
/// [`StaticQuantError::NotCalibrated`] (naming the layer) when a prepared
/// layer saw no input, before any layer changes; [`StaticQuantError::NotPrepared`]
/// when no layer was prepared.
pub fn convert<M: Module>(model: &M) -> Result<usize, StaticQuantError> {
    let prepared: Vec<(String, &dyn Module, Observer)> =
        layers(model).filter_map(|(name, m)| m.observer().map(|o| (name, m, o))).collect();
    if prepared.is_empty() {
        return Err(StaticQuantError::NotPrepared);
    }
    if let Some((name, m, _)) = prepared.iter().find(|(_, _, o)| o.input_quant().is_none()) {
        return Err(StaticQuantError::NotCalibrated { layer: name.clone(), describe: m.describe() });
    }
    for (_, m, o) in &prepared {
        m.convert_static(o.input_quant().expect("checked above"));
        m.set_observer(None);
    }
    Ok(prepared.len())
}

/// The model and every layer inside it, by path.
fn layers(model: &dyn Module) -> impl Iterator<Item = (String, &dyn Module)> {
    let inner = crate::ModuleExt::named_modules(model);
    std::iter::once((String::new(), model as &dyn Module)).chain(inner)
}

/// A layer's place for an observer (empty until [`prepare`]).
#[derive(Debug, Default)]
pub(crate) struct ObserverSlot(Mutex<Option<Observer>>);

impl ObserverSlot {
    /// Attaches a fresh observer, or removes it.
    pub(crate) fn set(&self, kind: Option<ObserverKind>) {
        *self.0.lock().expect("not poisoned") = kind.map(Observer::new);
    }

    /// A copy of the observer.
    pub(crate) fn get(&self) -> Option<Observer> {
        self.0.lock().expect("not poisoned").clone()
    }

    /// Records `x` when an observer is attached (calibration).
    pub(crate) fn observe(&self, x: &Tensor) {
        let mut slot = self.0.lock().expect("not poisoned");
        if let Some(o) = slot.as_mut() {
            super::with_cpu_f32(x, |v| o.observe(v));
        }
    }
}

/// `act(x (…, k) · wᵀ + bias)` with `x` quantized by the fixed `iq` and the
/// product in integers: `(…, n)`.
///
/// # Panics
/// When `x`'s last dim is not the weight's depth.
pub fn linear_static(
    x: &Tensor,
    w: &QuantizedWeight,
    iq: InputQuant,
    bias: Option<&Tensor>,
    act: Option<UnaryOp>,
) -> Tensor {
    super::linear_u8(x, w, Some(iq), bias, act)
}

/// `act(conv2d(x, W) + bias)` for `x` `(N, C, H, W)` quantized by the
/// fixed `iq`, the weight from
/// [`quantize_conv_weight`](firebrand_ops::conv_int8::quantize_conv_weight):
/// `(N, Cout, Ho, Wo)`.
///
/// # Panics
/// When `x` is not 4-D, its channels do not match the weight, or the
/// window does not fit.
pub fn conv2d_static(
    x: &Tensor,
    w: &QuantizedWeight,
    iq: InputQuant,
    bias: Option<&Tensor>,
    geo: &ConvGeometry,
    act: Option<UnaryOp>,
) -> Tensor {
    let &[n, c, h, wd] = x.dims() else {
        panic!("Conv2d (static int8): expected input (N, C, H, W), got {:?}", x.dims());
    };
    let (kh, kw) = geo.kernel;
    assert_eq!(
        w.k,
        c * kh * kw,
        "Conv2d (static int8): input {:?} has {c} channels, the weight expects {}",
        x.dims(),
        w.k / (kh * kw).max(1)
    );
    let (ho, wo) = geo
        .output_size(h, wd)
        .unwrap_or_else(|| panic!("Conv2d (static int8): window {geo:?} does not fit input {:?}", x.dims()));
    let b = bias.map(|b| b.to_vec::<f32>());
    let out = x
        .contiguous()
        .with_f32_slice(|v| conv2d_u8i8(v, [n, c, h, wd], geo, iq, w, b.as_deref(), act))
        .expect("an f32 input");
    Tensor::from_vec(out, [n, w.n, ho, wo])
}

/// A static convolution's parts, for the int8 chain (`fuse::static_chain`).
pub(crate) struct StaticStage {
    pub(crate) weight: std::sync::Arc<QuantizedWeight>,
    pub(crate) input: InputQuant,
    pub(crate) geo: ConvGeometry,
    pub(crate) bias: Option<Vec<f32>>,
    pub(crate) act: Option<UnaryOp>,
    /// Whether `act` came from the elementwise layer after the convolution.
    pub(crate) fused_next: bool,
}

/// A static `Linear`'s parts, for the head of the int8 chain.
pub(crate) struct StaticHead {
    pub(crate) weight: std::sync::Arc<QuantizedWeight>,
    pub(crate) input: InputQuant,
    pub(crate) bias: Option<Vec<f32>>,
    pub(crate) act: Option<UnaryOp>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::{dequantize, load_quantized, save_quantized};
    use crate::{Activation, Conv2d, Flatten, Linear, MaxPool2d, ModuleExt, Padding, Sequential};

    fn cnn(seed: u64) -> Sequential {
        firebrand_autograd::manual_seed(seed);
        Sequential::new()
            .add(Conv2d::new(3, 8, 3).padding(Padding::Same).with_activation(Activation::Relu))
            .add(MaxPool2d::new(2))
            .add(Conv2d::new(8, 6, 3).stride(2).padding(Padding::Same).with_activation(Activation::Relu))
            .add(Flatten)
            .add(Linear::new(6 * 3 * 3, 5))
    }

    /// Prepare, calibrate, convert: close to f32 (within a few percent of
    /// the output's scale), the f32 weights untouched, f32 with gradients
    /// recorded and after `dequantize`; the saved file loads back to the
    /// same outputs bit for bit, and about 4× smaller.
    #[test]
    fn a_converted_cnn_is_close_saves_and_loads_back_exactly() {
        let mut model = cnn(1);
        let x = Tensor::randn([16, 3, 10, 10], 0.0, 1.0);
        let batches: Vec<Tensor> = (0..3).map(|_| Tensor::randn([16, 3, 10, 10], 0.0, 1.0)).collect();
        let f32_out = with_no_grad(|| model.forward(&x)).to_vec::<f32>();
        let state: Vec<Vec<f32>> = model.state_dict().iter().map(|(_, t)| t.to_vec::<f32>()).collect();
        assert_eq!(prepare(&model, ObserverKind::MinMax), 3);
        assert_eq!(with_no_grad(|| model.forward(&x)).to_vec::<f32>(), f32_out, "observing leaves the outputs alone");
        calibrate(&mut model, &batches);
        assert_eq!(convert(&model).unwrap(), 3);
        let q = with_no_grad(|| model.forward(&x)).to_vec::<f32>();
        let scale = f32_out.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = q.iter().zip(&f32_out).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff <= 0.05 * scale && diff > 0.0, "static int8 vs f32: {diff} (scale {scale})");
        let after: Vec<Vec<f32>> = model.state_dict().iter().map(|(_, t)| t.to_vec::<f32>()).collect();
        assert_eq!(state, after, "converting changed the f32 weights");
        assert_eq!(model.forward(&x).to_vec::<f32>(), f32_out, "with gradients recorded: f32");

        let dir = std::env::temp_dir().join(format!("fb-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (qf, ff) = (dir.join("int8.safetensors"), dir.join("f32.safetensors"));
        save_quantized(&model, &qf).unwrap();
        crate::save_weights(&model, &ff).unwrap();
        let fresh = cnn(2);
        load_quantized(&fresh, &qf).unwrap();
        assert_eq!(with_no_grad(|| fresh.forward(&x)).to_vec::<f32>(), q, "loaded outputs");
        let ratio = std::fs::metadata(&ff).unwrap().len() as f64 / std::fs::metadata(&qf).unwrap().len() as f64;
        // A tiny model: the file's header, scales and biases weigh (the CNN workload measures a real one).
        assert!(ratio > 1.8, "the int8 file is only {ratio}× smaller");
        std::fs::remove_dir_all(&dir).ok();

        assert_eq!(dequantize(&model), 3);
        assert_eq!(with_no_grad(|| model.forward(&x)).to_vec::<f32>(), f32_out);
    }

    /// In a `Sequential`, the converted convolutions, their activations
    /// (fused or a ReLU layer) and max pools, and the flatten and static
    /// head run as one chain, `u8` between the layers: the same values as
    /// the layers one by one.
    #[test]
    fn a_converted_cnn_runs_as_one_chain_in_a_sequential() {
        firebrand_autograd::manual_seed(4);
        let mut model = Sequential::new()
            .add(Conv2d::new(2, 16, 3).padding(Padding::Same).with_activation(Activation::Relu))
            .add(MaxPool2d::new(2))
            .add(Conv2d::new(16, 8, 3).padding(Padding::Same))
            .add(crate::ReLU)
            .add(MaxPool2d::new(2))
            .add(Flatten)
            .add(Linear::new(8 * 2 * 2, 3));
        let x = Tensor::randn([5, 2, 9, 9], 0.0, 1.0);
        prepare(&model, ObserverKind::Histogram);
        calibrate(&mut model, std::slice::from_ref(&x));
        convert(&model).unwrap();
        let fused = with_no_grad(|| model.forward(&x));
        let mut y = x.clone();
        for layer in model.layers() {
            y = with_no_grad(|| layer.forward(&y));
        }
        assert_eq!(fused.dims(), &[5, 3]);
        assert_eq!(fused.to_vec::<f32>(), y.to_vec::<f32>());
        let covered = |from: usize, x: &Tensor| {
            with_no_grad(|| crate::fuse::static_chain(&model.layers[from..], x)).map(|(_, n)| n)
        };
        let h = with_no_grad(|| model.layers[1].forward(&model.layers[0].forward(&x)));
        assert_eq!(
            (covered(0, &x), covered(2, &h)),
            (Some(7), Some(5)),
            "the whole model, and from the second conv, as one chain"
        );
        // A head that is not static ends the chain before the flatten.
        model.get::<Linear>(6).unwrap().set_dynamic_int8(true);
        assert_eq!(covered(0, &x), Some(5));
        let mixed = with_no_grad(|| model.forward(&x)).to_vec::<f32>();
        let scale = y.to_vec::<f32>().iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = mixed.iter().zip(y.to_vec::<f32>()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 0.05 * scale, "dynamic head after the chain: {diff} (scale {scale})");
    }

    /// A static file with bad input parameters, or a convolution's integers
    /// without them, is refused naming the tensor; nothing changes.
    #[test]
    fn bad_static_files_are_refused() {
        let mut model = cnn(5);
        prepare(&model, ObserverKind::MinMax);
        calibrate(&mut model, &[Tensor::randn([2, 3, 10, 10], 0.0, 1.0)]);
        convert(&model).unwrap();
        let dir = std::env::temp_dir().join(format!("fb-static-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.safetensors");
        save_quantized(&model, &good).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let raw: Vec<crate::serialize::RawTensor> =
            st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
        let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let cases: Vec<(Vec<crate::serialize::RawTensor>, &str)> = vec![
            (
                raw.iter()
                    .map(|t| {
                        if t.0 == "0.input_quant" {
                            (t.0.clone(), t.1, t.2.clone(), f32_bytes(&[0.0, 300.0]))
                        } else {
                            t.clone()
                        }
                    })
                    .collect(),
                "0.input_quant: scale 0 and zero point 300 are not valid",
            ),
            (
                raw.iter().filter(|t| t.0 != "0.input_quant").cloned().collect(),
                "0.weight_int8: a convolution's int8 weight needs 0.input_quant",
            ),
        ];
        for (i, (tensors, want)) in cases.into_iter().enumerate() {
            let file = dir.join(format!("bad{i}.safetensors"));
            crate::serialize::write_raw(&file, &tensors, None).unwrap();
            let fresh = cnn(6);
            let e = load_quantized(&fresh, &file).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(&file.display().to_string()), "{e}");
            assert!(fresh.get::<Conv2d>(0).unwrap().quantized_form().is_none(), "a refused load set a form");
        }
        std::fs::remove_dir_all(&dir).ok();
        // A wrong channel count into the converted model names the shapes.
        let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_no_grad(|| model.forward(&Tensor::zeros([1, 4, 10, 10])));
        }))
        .unwrap_err();
        let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("Conv2d(3 -> ") && msg.contains("expected input (N, 3, H, W), got [1, 4, 10, 10]"),
            "{msg}"
        );
    }

    #[test]
    fn convert_names_a_layer_that_saw_nothing() {
        let mut model = cnn(3);
        assert_eq!(convert(&model), Err(StaticQuantError::NotPrepared));
        prepare(&model, ObserverKind::Histogram);
        let e = convert(&model).unwrap_err().to_string();
        assert!(e.contains("`0`") && e.contains("Conv2d(3 -> 8"), "{e}");
        // Nothing changed: the model still computes in f32 and can be calibrated.
        assert!(model.get::<Conv2d>(0).unwrap().quantized_form().is_none());
        calibrate(&mut model, &[Tensor::randn([2, 3, 10, 10], 0.0, 1.0)]);
        assert_eq!(convert(&model), Ok(3));
    }

    /// A NaN in the input reaches the outputs whose windows cover it.
    #[test]
    fn non_finite_inputs_give_nan_outputs() {
        let mut model =
            Sequential::new().add(Conv2d::new(1, 2, 3).padding(Padding::Same)).add(Flatten).add(Linear::new(50, 2));
        prepare(&model, ObserverKind::MinMax);
        calibrate(&mut model, &[Tensor::randn([4, 1, 5, 5], 0.0, 1.0)]);
        convert(&model).unwrap();
        let mut v = Tensor::randn([2, 1, 5, 5], 0.0, 1.0).to_vec::<f32>();
        v[3] = f32::NAN;
        let y = with_no_grad(|| model.forward(&Tensor::from_vec(v, [2, 1, 5, 5]))).to_vec::<f32>();
        assert!(y[0].is_nan() && y[1].is_nan() && y[2].is_finite() && y[3].is_finite(), "{y:?}");
    }
}
