//! Post-training quantization.
//!
//! **Dynamic int8** (PyTorch's
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
//! **Block formats** (llama.cpp's): [`quantize_blocks`] puts every
//! `Linear` whose input width is a multiple of 32 into GGUF's `Q8_0`,
//! `Q4_0` or `Q4_1` blocks (a GGUF file's own blocks load through
//! [`Linear::set_block_weight`](crate::Linear::set_block_weight)); the
//! input is quantized on the fly per row to `i16` and each block's product
//! runs in integers (`firebrand_ops::gemm::blocks`).
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
use firebrand_ops::gemm::Epilogue;
use firebrand_ops::gemm::blocks::{
    BlockFormat, BlockWeight, F32_PATH_MIN_ROWS, Q16Rows, gemm_blocks, linear_blocks_f32, quantize_rows_i16_into,
};
use firebrand_ops::gemm::int8::{QuantizedRows, QuantizedWeight, gemm_u8i8_act, quantize_rows_u8_into};
use std::cell::RefCell;

thread_local! {
    /// The quantized input of the last call, its buffers reused.
    static ROWS: RefCell<QuantizedRows> = const {
        RefCell::new(QuantizedRows { m: 0, k: 0, data: Vec::new(), scale: Vec::new(), zero: Vec::new() })
    };
    /// The block-quantized input of the last call, its buffers reused.
    static Q16: RefCell<Q16Rows> = RefCell::new(Q16Rows::default());
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
    fn walk(m: &dyn Module, a: Action) -> usize {
        let mut n = usize::from(apply(m, a));
        m.visit_children("", &mut |_, c| n += walk(c, a));
        n
    }
    let mut n = usize::from(apply(model, a));
    model.visit_children("", &mut |_, c| n += walk(c, a));
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
        assert!(msg.contains("int8") && msg.contains("[2, 5]") && msg.contains("(3, 4)"), "{msg}");
    }
}
