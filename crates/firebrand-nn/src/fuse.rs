//! Layer fusion: an eval-mode BatchNorm folded into the convolution or
//! linear layer before it (PyTorch's `fuse_conv_bn_eval` /
//! `torch.ao.quantization.fuse_modules`), so inference skips the
//! normalization pass entirely; and the run-time fusions `Sequential` makes
//! as it runs (conv → BatchNorm → activation in inference, one-hot ids into
//! a recurrent layer always).

use crate::Module;
use crate::sequential::AnyModule;
use crate::{BatchNorm, BatchNorm1d, BatchNorm2d, Conv2d, GRU, LSTM, Linear, OneHot, RNN, Recurrent, Sequential};
use firebrand_autograd::{Error, Result, Tensor, is_grad_enabled, with_no_grad};

/// The per-channel scale and shift of `bn` (evaluation mode) applied after
/// a layer with `bias`: `(z + b)·scale + shift = z·scale + (b·scale + shift)`.
fn folded_scale_shift(bn: &BatchNorm, bias: Option<&Tensor>) -> (Tensor, Tensor) {
    let (scale, shift) = bn.eval_scale_shift(); // (C,)
    let shift = match bias {
        Some(b) => b.mul(&scale).add(&shift),
        None => shift,
    };
    (scale, shift)
}

/// `bn` folded into a layer's `weight` `(C, …)` and `bias` `(C,)`: each
/// output channel's row scaled, its bias moved; detached copies that train if
/// asked to. `layer` and `units` (`"Conv2d"`, `"output channels"`) name the
/// layer and its outputs in errors.
fn fold(
    op: &'static str,
    (layer, units): (&str, &str),
    weight: &Tensor,
    bias: Option<&Tensor>,
    activation: Option<crate::Activation>,
    bn: &BatchNorm,
) -> Result<(Tensor, Tensor)> {
    let c = weight.dims()[0];
    if bn.num_features() != c {
        return Err(Error::msg(op, format!("{layer} has {c} {units}, BatchNorm {}", bn.num_features())));
    }
    if let Some(a) = activation {
        return Err(Error::msg(op, format!("{layer} has a fused {} before the BatchNorm", a.name())));
    }
    with_no_grad(|| {
        let (scale, shift) = folded_scale_shift(bn, bias); // (C,)
        let mut dims = vec![1; weight.rank()];
        dims[0] = c;
        let w = weight.mul(&scale.reshape(dims));
        Ok((w.detach_copy().requires_grad_(true), shift.detach_copy().requires_grad_(true)))
    })
}

/// `conv` followed by `bn` (in evaluation mode, with its running statistics)
/// as one convolution: each output channel's filter scaled by
/// `γ / sqrt(var + ε)` and its bias moved to `β + (b − mean)·γ / sqrt(var + ε)`.
/// The result computes the same outputs in one layer.
///
/// ```
/// use firebrand_nn::{BatchNorm2d, Conv2d, Module, ModuleExt, fuse_conv_bn};
/// use firebrand_autograd::Tensor;
/// let conv = Conv2d::new(3, 8, 3);
/// let mut bn = BatchNorm2d::new(8);
/// bn.forward(&conv.forward(&Tensor::randn([4, 3, 9, 9], 0.5, 2.0))); // running statistics move
/// bn.eval();
/// let fused = fuse_conv_bn(&conv, &bn).unwrap();
/// let x = Tensor::randn([2, 3, 9, 9], 0.0, 1.0);
/// let (a, b) = (bn.forward(&conv.forward(&x)), fused.forward(&x));
/// assert!(a.sub(&b).abs().max_all().item() < 1e-4);
/// ```
///
/// # Errors
/// When the channel counts differ, or the convolution has a fused
/// activation (the BatchNorm then follows the activation and cannot move
/// before it).
pub fn fuse_conv_bn(conv: &Conv2d, bn: &BatchNorm) -> Result<Conv2d> {
    let (w, b) =
        fold("fuse_conv_bn", ("Conv2d", "output channels"), &masked(conv), conv.bias.as_ref(), conv.activation(), bn)?;
    Ok(Conv2d::from_parts(w, Some(b), *conv.config()))
}

/// A layer's weight with its pruning mask applied, unrecorded.
fn masked(layer: &dyn crate::prune::Prunable) -> Tensor {
    firebrand_autograd::with_no_grad(|| crate::prune::masked_weight(layer))
}

/// `linear` followed by `bn` (a `BatchNorm1d` over its features, in
/// evaluation mode) as one linear layer; see [`fuse_conv_bn`].
///
/// # Errors
/// When the feature counts differ or the linear layer has a fused activation.
pub fn fuse_linear_bn(linear: &Linear, bn: &BatchNorm) -> Result<Linear> {
    let (w, b) =
        fold("fuse_linear_bn", ("Linear", "outputs"), &masked(linear), linear.bias.as_ref(), linear.activation(), bn)?;
    Ok(Linear::from_parts(w, Some(b)))
}

impl Sequential {
    /// Folds every `Conv2d → BatchNorm2d` and `Linear → BatchNorm1d` pair
    /// into one layer (see [`fuse_conv_bn`]), for inference; returns how many
    /// pairs were folded. Pairs that cannot fold (a fused activation between)
    /// are left as they are. Parameter names shift with the removed layers.
    ///
    /// ```
    /// use firebrand_nn::{Activation, BatchNorm2d, Conv2d, Flatten, Linear, Module, ModuleExt, ReLU, Sequential};
    /// use firebrand_autograd::Tensor;
    /// let mut net = Sequential::new()
    ///     .add(Conv2d::new(1, 4, 3)).add(BatchNorm2d::new(4)).add(ReLU)
    ///     .add(Flatten).add(Linear::new(4 * 6 * 6, 3));
    /// net.eval();
    /// let x = Tensor::randn([2, 1, 8, 8], 0.0, 1.0);
    /// let before = net.forward(&x);
    /// assert_eq!(net.fuse_batch_norms(), 1);
    /// assert_eq!(net.len(), 4);
    /// assert!(net.forward(&x).sub(&before).abs().max_all().item() < 1e-5);
    /// ```
    pub fn fuse_batch_norms(&mut self) -> usize {
        let mut fused = 0;
        let mut i = 0;
        while i + 1 < self.len() {
            let conv = match (self.get::<Conv2d>(i), self.get::<BatchNorm2d>(i + 1)) {
                (Some(c), Some(bn)) => fuse_conv_bn(c, bn).ok(),
                _ => None,
            };
            if let Some(c) = conv {
                self.set(i, c);
                self.remove(i + 1);
                fused += 1;
            } else if let (Some(l), Some(bn)) = (self.get::<Linear>(i), self.get::<BatchNorm1d>(i + 1))
                && let Ok(l) = fuse_linear_bn(l, bn)
            {
                self.set(i, l);
                self.remove(i + 1);
                fused += 1;
            }
            i += 1;
        }
        fused
    }
}

/// Run-time inference fusion, used by `Sequential::forward`: when `layers`
/// starts with `Conv2d → BatchNorm2d` (evaluation mode, no activation on the
/// convolution) and nothing would record a graph, the pair — and an
/// elementwise activation layer after it — runs as one convolution: a
/// depthwise one with the BatchNorm folded into its filters and bias (the
/// kernel applies bias and activation as it stores), any other with the
/// BatchNorm's scale, shift and the activation in the one pass that follows
/// the gemm ([`Tensor::try_channel_affine`]). The same outputs as the layers
/// one by one, up to rounding, with two fewer passes over the activations.
/// Returns the output and how many layers it covered.
pub(crate) fn conv_bn_act_eval(layers: &[Box<dyn AnyModule>], x: &Tensor) -> Option<(Tensor, usize)> {
    // `**`: the boxed module itself, not the box (which is a module too).
    let conv = (**layers.first()?).as_any().downcast_ref::<Conv2d>()?;
    let bn = (**layers.get(1)?).as_any().downcast_ref::<BatchNorm2d>()?;
    let cout = conv.weight.dims()[0];
    if bn.is_training() || conv.activation().is_some() || bn.num_features() != cout || crate::module::recording_active()
    {
        return None;
    }
    if is_grad_enabled() {
        let mut any = x.requires_grad();
        conv.visit_parameters("", &mut |_, t| any |= t.requires_grad());
        bn.visit_parameters("", &mut |_, t| any |= t.requires_grad());
        if any {
            return None; // training through an eval-mode BatchNorm: layer by layer
        }
    }
    let act = layers.get(2).and_then(|l| (**l).elementwise_op());
    let (scale, shift) = folded_scale_shift(bn, conv.bias.as_ref()); // (Cout,)
    let y = crate::conv::conv_forward_affine(x, &crate::prune::masked_weight(conv), conv.config(), &scale, &shift, act);
    Some((y, if act.is_some() { 3 } else { 2 }))
}

/// Run-time training fusion, used by `Sequential::forward`: a
/// `BatchNorm1d`/`BatchNorm2d` in training mode followed by an elementwise
/// activation runs as [`BatchNorm::forward_activated`]: for ReLU and
/// hardtanh (ReLU6) the activation rides in the normalization's output pass
/// and its derivative inside the normalization's backward passes (two fewer
/// passes over the activations each step); others run as their own op after
/// it while a graph is recorded. Not while module outputs are being recorded
/// (`summary`). Returns the output and the two layers it covered.
pub(crate) fn bn_act_train(layers: &[Box<dyn AnyModule>], x: &Tensor) -> Option<(Tensor, usize)> {
    let first = (**layers.first()?).as_any();
    let bn: &BatchNorm = (first.downcast_ref::<BatchNorm2d>().map(|b| &**b))
        .or_else(|| first.downcast_ref::<BatchNorm1d>().map(|b| &**b))?;
    let act = (**layers.get(1)?).elementwise_op()?;
    if !bn.is_training() || crate::module::recording_active() {
        return None;
    }
    Some((bn.forward_activated(x, Some(act)), 2))
}

/// `OneHot(n)` followed by an LSTM, GRU or RNN, run as
/// [`Recurrent::forward_one_hot`]: the recurrent layer's input projection
/// becomes a row gather (the same outputs, bit for bit, in training too).
/// Not while module outputs are being recorded (`summary`), which lists the
/// one-hot tensor. Returns the output and the two layers it covered.
pub(crate) fn one_hot_recurrent(layers: &[Box<dyn AnyModule>], ids: &Tensor) -> Option<(Tensor, usize)> {
    let classes = (**layers.first()?).as_any().downcast_ref::<OneHot>()?.0;
    let next = (**layers.get(1)?).as_any();
    let rnn: &Recurrent = (next.downcast_ref::<LSTM>().map(|l| &**l))
        .or_else(|| next.downcast_ref::<GRU>().map(|g| &**g))
        .or_else(|| next.downcast_ref::<RNN>().map(|r| &**r))?;
    if crate::module::recording_active() || ids.dtype().is_float() || ids.rank() != 2 {
        return None; // the layers one by one (and their errors for a wrong input)
    }
    Some((rnn.forward_one_hot(ids, classes), 2))
}

/// Inference on a statically quantized CNN ([`crate::quantize::convert`]):
/// one or more static `Conv2d`s, each with its activation (fused, or an
/// elementwise layer after it) and a `MaxPool2d` or not, then optionally
/// `Flatten` → a static `Linear`, run as one chain
/// ([`firebrand_ops::conv_int8::conv_chain_u8i8`]): chunk by chunk of
/// images, the activations between the layers stay `u8` in cache, and no
/// layer's full output is written. The values equal the layers one by one.
/// Not while module outputs are being recorded (`summary`). Returns the
/// output and the layers it covered.
pub(crate) fn static_chain(layers: &[Box<dyn AnyModule>], x: &Tensor) -> Option<(Tensor, usize)> {
    use firebrand_ops::conv_int8::{ConvStage, HeadStage, conv_chain_u8i8};
    if crate::module::recording_active() {
        return None;
    }
    let &[n, c, h, w] = x.dims() else { return None };
    let layer = |i: usize| layers.get(i).map(|l| (**l).as_any());
    // The stages as owned parts (weights, biases), then borrowed by the kernel.
    let mut parts = Vec::new();
    let (mut i, mut dims) = (0, (c, h, w));
    while let Some(conv) = layer(i).and_then(|l| l.downcast_ref::<Conv2d>()) {
        let mut used = 1;
        let after = layers.get(i + 1).and_then(|l| (**l).elementwise_op());
        let Some(stage) = conv.static_stage(x, dims, after) else { break };
        if stage.fused_next {
            used += 1;
        }
        let pool = layer(i + used).and_then(|l| l.downcast_ref::<crate::MaxPool2d>()).map(|p| p.window());
        if pool.is_some() {
            used += 1;
        }
        let (ho, wo) = stage.geo.output_size(dims.1, dims.2)?;
        let (hp, wp) = match &pool {
            Some(win) => win.output_size(ho, wo)?,
            None => (ho, wo),
        };
        dims = (stage.weight.n, hp, wp);
        parts.push((stage, pool));
        i += used;
    }
    if parts.is_empty() {
        return None;
    }
    let head = match (
        layer(i).and_then(|l| l.downcast_ref::<crate::Flatten>()),
        layer(i + 1).and_then(|l| l.downcast_ref::<crate::Linear>()),
    ) {
        (Some(_), Some(lin)) => lin.static_head(x, dims.0 * dims.1 * dims.2),
        _ => None,
    };
    let stages: Vec<ConvStage> = parts
        .iter()
        .map(|(s, pool)| ConvStage {
            weight: &s.weight,
            input: s.input,
            geo: s.geo,
            bias: s.bias.as_deref(),
            act: s.act,
            pool: *pool,
        })
        .collect();
    let head_stage = head.as_ref().map(|hd| HeadStage {
        weight: &hd.weight,
        input: hd.input,
        bias: hd.bias.as_deref(),
        act: hd.act,
    });
    let (out, out_dims) =
        x.contiguous().with_f32_slice(|v| conv_chain_u8i8(v, [n, c, h, w], &stages, head_stage.as_ref())).ok()?;
    let y = Tensor::from_vec(out, out_dims);
    Some((y, i + if head.is_some() { 2 } else { 0 }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ReLU6, SiLU};

    /// The run-time fusions cover the layers they should: the activation
    /// after a BatchNorm is read through the `Box` (a box is a module too, and
    /// once answered for itself that it had no elementwise op, so the
    /// activation ran as a pass of its own while the outputs still matched).
    #[test]
    fn run_time_fusions_take_the_layers_they_cover() {
        let mut bn = BatchNorm2d::new(4);
        bn.set_training(false);
        for act in [Box::new(ReLU6) as Box<dyn AnyModule>, Box::new(SiLU)] {
            let mut bn2 = BatchNorm2d::new(4);
            bn2.set_training(false);
            let layers: Vec<Box<dyn AnyModule>> = vec![Box::new(Conv2d::new(3, 4, 3)), Box::new(bn2), act];
            let x = Tensor::randn([1, 3, 6, 6], 0.0, 1.0);
            let (_, used) = with_no_grad(|| conv_bn_act_eval(&layers, &x)).expect("fused");
            assert_eq!(used, 3, "conv, batch norm and activation in one");
        }
        let layers: Vec<Box<dyn AnyModule>> = vec![Box::new(Conv2d::new(3, 4, 3)), Box::new(bn)];
        let (_, used) = with_no_grad(|| conv_bn_act_eval(&layers, &Tensor::randn([1, 3, 6, 6], 0.0, 1.0))).unwrap();
        assert_eq!(used, 2);
        for act in [Box::new(ReLU6) as Box<dyn AnyModule>, Box::new(crate::ReLU), Box::new(SiLU)] {
            let layers: Vec<Box<dyn AnyModule>> = vec![Box::new(BatchNorm2d::new(3)), act];
            assert_eq!(bn_act_train(&layers, &Tensor::randn([2, 3, 4, 4], 0.0, 1.0)).expect("fused").1, 2);
        }
        let mut eval_bn = BatchNorm2d::new(3);
        eval_bn.set_training(false);
        let layers: Vec<Box<dyn AnyModule>> = vec![Box::new(eval_bn), Box::new(ReLU6)];
        assert!(bn_act_train(&layers, &Tensor::randn([2, 3, 4, 4], 0.0, 1.0)).is_none(), "training mode only");
        let layers: Vec<Box<dyn AnyModule>> = vec![Box::new(OneHot(5)), Box::new(LSTM::new(5, 3))];
        let ids = Tensor::from_vec(vec![0i64, 4, 2, 1], [2, 2]);
        assert_eq!(one_hot_recurrent(&layers, &ids).expect("fused").1, 2);
    }
}
