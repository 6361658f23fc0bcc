//! Post-training dynamic quantization (PyTorch's
//! `torch.ao.quantization.quantize_dynamic`): every `Linear` of a model gets
//! an int8 form of its weight (symmetric, one scale per output channel), and
//! at inference its input is quantized on the fly to `u8` (one scale and
//! zero point per row, which loses less than PyTorch's one per batch); the
//! product runs in integers (`firebrand_ops::gemm::int8`, AMX-INT8 where the
//! CPU has it) and comes back as `f32` with the bias.
//!
//! The `f32` weights stay: with gradients recorded (training, fine-tuning)
//! or on another device the layer computes in `f32` as before, and
//! [`dequantize`] turns the int8 forms off. A weight changed after
//! quantizing needs [`quantize_dynamic`] again.
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

use crate::Module;
use firebrand_autograd::{Tensor, UnaryOp};
use firebrand_ops::gemm::int8::{QuantizedRows, QuantizedWeight, gemm_u8i8_act, quantize_rows_u8_into};
use std::cell::RefCell;

thread_local! {
    /// The quantized input of the last call, its buffers reused.
    static ROWS: RefCell<QuantizedRows> = const {
        RefCell::new(QuantizedRows { m: 0, k: 0, data: Vec::new(), scale: Vec::new(), zero: Vec::new() })
    };
}

/// Turns on the dynamic int8 form of every layer that has one (`Linear`),
/// the model itself included; returns how many.
pub fn quantize_dynamic<M: Module + ?Sized>(model: &M) -> usize {
    set_all(model, true)
}

/// Turns every dynamic int8 form off again (the layers compute in `f32`);
/// returns how many layers have one.
pub fn dequantize<M: Module + ?Sized>(model: &M) -> usize {
    set_all(model, false)
}

fn set_all<M: Module + ?Sized>(model: &M, on: bool) -> usize {
    fn walk(m: &dyn Module, on: bool) -> usize {
        let mut n = usize::from(m.set_dynamic_int8(on));
        m.visit_children("", &mut |_, c| n += walk(c, on));
        n
    }
    let mut n = usize::from(model.set_dynamic_int8(on));
    model.visit_children("", &mut |_, c| n += walk(c, on));
    n
}

/// `act(x (…, k) · wᵀ + bias)` with `x` quantized per row to `u8` and the
/// product in integers, the activation applied as the sums are
/// dequantized: `(…, n)`.
///
/// # Panics
/// When `x`'s last dim is not the weight's depth.
pub fn linear_int8(x: &Tensor, w: &QuantizedWeight, bias: Option<&Tensor>, act: Option<UnaryOp>) -> Tensor {
    let k = w.k;
    assert!(
        x.rank() >= 1 && x.dims()[x.rank() - 1] == k,
        "linear (int8): input {:?} for a weight ({}, {k})",
        x.dims(),
        w.n
    );
    let rows = x.dims()[..x.rank() - 1].iter().product::<usize>();
    let b = bias.map(|b| b.to_vec::<f32>());
    let mut out = firebrand_tensor::pool::take_f32(rows * w.n);
    ROWS.with(|q| {
        let mut q = q.borrow_mut();
        x.contiguous().with_f32_slice(|v| quantize_rows_u8_into(v, rows, k, &mut q)).expect("an f32 input");
        gemm_u8i8_act(&q, w, b.as_deref(), act, &mut out);
    });
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank ≥ 1") = w.n;
    Tensor::from_vec(out, dims)
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

    #[test]
    fn a_wrong_input_width_names_the_shapes() {
        let l = Linear::new(4, 3);
        quantize_dynamic(&l);
        let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_no_grad(|| l.forward(&Tensor::zeros([2, 5])));
        }))
        .unwrap_err();
        let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("int8") && msg.contains("[2, 5]") && msg.contains("(3, 4)"), "{msg}");
    }
}
