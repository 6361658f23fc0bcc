//! Pruning, with PyTorch's semantics (`torch.nn.utils.prune`) and a
//! structural form that makes the model smaller and faster.
//!
//! **Masks.** [`l1_unstructured`], [`random_unstructured`],
//! [`ln_structured`] and [`global_unstructured`] give a layer a mask (1
//! keeps a weight, 0 prunes it). The layer then computes with `weight ⊙
//! mask` (PyTorch's `weight_orig · weight_mask`), so the pruned weights
//! stay zero through training whatever the optimizer does, and their
//! gradients are zero. Pruning a pruned layer again prunes `amount` of the
//! weights (or channels) still unpruned, as PyTorch's `PruningContainer`.
//! The mask is saved with the weights as the buffer `weight_mask`.
//! [`remove`] makes it permanent: the weight becomes `weight ⊙ mask` and the
//! mask goes.
//!
//! **Structure.** A mask saves no work: the product is as dense as before.
//! [`shrink`] removes the output channels of a `Linear` or `Conv2d` in a
//! [`Sequential`] with the smallest Lₙ norms, and the matching inputs of the
//! next layer that has weights (a `Conv2d`, or a `Linear` after a
//! `Flatten`, each channel's block of features), with a `BatchNorm` between
//! them shrunk too. The layers are rebuilt smaller; an optimizer built
//! before holds the old parameters and must be built again.
//!
//! ```
//! use firebrand_nn::{Linear, Module, prune};
//! use firebrand_autograd::Tensor;
//! let layer = Linear::new(10, 4);
//! prune::l1_unstructured(&layer, 0.5);
//! assert!((prune::sparsity(&layer) - 0.5).abs() < 1e-9);
//! layer.forward(&Tensor::ones([2, 10])).sum_all().backward();
//! let (g, w) = (layer.weight.grad().unwrap().to_vec::<f32>(), prune::masked_weight(&layer).to_vec::<f32>());
//! assert!(g.iter().zip(&w).all(|(g, w)| *w != 0.0 || *g == 0.0)); // pruned weights get no gradient
//! prune::remove(&layer);
//! assert!(!prune::is_pruned(&layer));
//! assert_eq!(layer.weight.to_vec::<f32>().iter().filter(|v| **v == 0.0).count(), 20);
//! ```

use crate::{BatchNorm2d, Conv2d, Linear, Module, Sequential};
use firebrand_autograd::{Tensor, with_no_grad};
use std::sync::RwLock;

/// A layer's pruning mask (`None` until pruned), the shape of its weight.
#[derive(Debug, Default)]
pub struct PruneMask(RwLock<Option<Tensor>>);

impl PruneMask {
    /// The mask, if the layer is pruned.
    pub fn get(&self) -> Option<Tensor> {
        self.0.read().expect("not poisoned").clone()
    }

    fn set(&self, m: Option<Tensor>) {
        *self.0.write().expect("not poisoned") = m;
    }
}

/// A layer whose weight can be pruned (`Linear`, `Conv2d`).
pub trait Prunable {
    /// The weight (PyTorch's `weight_orig` once pruned).
    fn weight(&self) -> &Tensor;
    /// Its mask.
    fn mask(&self) -> &PruneMask;
    /// A name for messages.
    fn layer_name(&self) -> String;
}

/// `Prunable` for a layer with `weight` and `mask` fields.
macro_rules! prunable {
    ($($t:ty),*) => {$(
        impl Prunable for $t {
            fn weight(&self) -> &Tensor {
                &self.weight
            }
            fn mask(&self) -> &PruneMask {
                &self.mask
            }
            fn layer_name(&self) -> String {
                self.describe()
            }
        }
    )*};
}
prunable!(Linear, Conv2d);

/// The weight the layer computes with: `weight ⊙ mask`, or the weight when
/// it is not pruned (recorded by autograd, so the gradient is masked).
pub fn masked_weight(layer: &dyn Prunable) -> Tensor {
    match layer.mask().get() {
        Some(m) => layer.weight().mul(&m),
        None => layer.weight().clone(),
    }
}

/// How much to prune: a fraction in `[0, 1]` of what is still unpruned, or a count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// A fraction of the unpruned entries (rounded to the nearest count).
    Fraction(f64),
    /// A number of entries.
    Count(usize),
}

impl From<f64> for Amount {
    fn from(f: f64) -> Self {
        Amount::Fraction(f)
    }
}

impl From<usize> for Amount {
    fn from(n: usize) -> Self {
        Amount::Count(n)
    }
}

impl Amount {
    /// How many of `n` entries.
    ///
    /// # Panics
    /// When a fraction is outside `[0, 1]` or a count above `n`, naming `op`.
    fn of(self, n: usize, op: &str) -> usize {
        match self {
            Amount::Fraction(f) => {
                assert!((0.0..=1.0).contains(&f), "{op}: amount {f} is not a fraction in [0, 1]");
                (f * n as f64).round() as usize
            }
            Amount::Count(c) => {
                assert!(c <= n, "{op}: amount {c} is more than the {n} unpruned entries");
                c
            }
        }
    }
}

/// The current mask as values (all ones when unpruned).
fn mask_values(layer: &dyn Prunable) -> Vec<f32> {
    match layer.mask().get() {
        Some(m) => m.to_vec::<f32>(),
        None => vec![1.0; layer.weight().elem_count()],
    }
}

fn set_mask(layer: &dyn Prunable, mask: Vec<f32>) {
    let w = layer.weight();
    let m = Tensor::from_vec(mask, w.dims().to_vec()).to_device(w.device()).expect("the weight's device");
    layer.mask().set(Some(m));
}

/// Zeroes, among the unpruned entries with the smallest `score`, `k` of
/// them in `mask` (ties broken by position).
fn prune_smallest(mask: &mut [f32], score: &[f32], k: usize) {
    let mut live: Vec<usize> = (0..mask.len()).filter(|&i| mask[i] != 0.0).collect();
    live.sort_by(|&a, &b| score[a].total_cmp(&score[b]).then(a.cmp(&b)));
    for &i in &live[..k] {
        mask[i] = 0.0;
    }
}

/// Prunes `amount` of the layer's unpruned weights with the smallest
/// magnitude (PyTorch's `prune.l1_unstructured`).
///
/// # Panics
/// On an amount that is not a fraction in `[0, 1]` or a count of at most the unpruned weights.
pub fn l1_unstructured(layer: &dyn Prunable, amount: impl Into<Amount>) {
    let mut mask = mask_values(layer);
    let live = mask.iter().filter(|&&m| m != 0.0).count();
    let k = amount.into().of(live, "l1_unstructured");
    let score: Vec<f32> = layer.weight().to_vec::<f32>().iter().map(|w| w.abs()).collect();
    prune_smallest(&mut mask, &score, k);
    set_mask(layer, mask);
}

/// Prunes `amount` of the unpruned weights chosen at random (the global
/// generator; PyTorch's `prune.random_unstructured`).
///
/// # Panics
/// As [`l1_unstructured`].
pub fn random_unstructured(layer: &dyn Prunable, amount: impl Into<Amount>) {
    let mut mask = mask_values(layer);
    let live = mask.iter().filter(|&&m| m != 0.0).count();
    let k = amount.into().of(live, "random_unstructured");
    let score = Tensor::rand([mask.len()], 0.0, 1.0).to_vec::<f32>();
    prune_smallest(&mut mask, &score, k);
    set_mask(layer, mask);
}

/// Prunes, across `layers` together, `amount` of their unpruned weights
/// with the smallest magnitude (PyTorch's `prune.global_unstructured` with
/// `L1Unstructured`): a layer whose weights matter less loses more.
///
/// # Panics
/// As [`l1_unstructured`].
pub fn global_unstructured(layers: &[&dyn Prunable], amount: impl Into<Amount>) {
    let masks: Vec<Vec<f32>> = layers.iter().map(|l| mask_values(*l)).collect();
    let mut all_mask: Vec<f32> = masks.concat();
    let score: Vec<f32> = layers.iter().flat_map(|l| l.weight().to_vec::<f32>()).map(f32::abs).collect();
    let live = all_mask.iter().filter(|&&m| m != 0.0).count();
    let k = amount.into().of(live, "global_unstructured");
    prune_smallest(&mut all_mask, &score, k);
    let mut at = 0;
    for (l, m) in layers.iter().zip(&masks) {
        set_mask(*l, all_mask[at..at + m.len()].to_vec());
        at += m.len();
    }
}

/// Lₙ norm of each slice of `w` (`dims`) along `dim`, over `mask`ed values.
fn slice_norms(w: &[f32], mask: &[f32], dims: &[usize], dim: usize, n: f64) -> Vec<f32> {
    let inner: usize = dims[dim + 1..].iter().product();
    let len = dims[dim];
    let mut acc = vec![0.0f64; len];
    for (i, (&v, &m)) in w.iter().zip(mask).enumerate() {
        let c = (i / inner) % len;
        acc[c] += ((v * m).abs() as f64).powf(n);
    }
    acc.into_iter().map(|a| a.powf(1.0 / n) as f32).collect()
}

/// Prunes `amount` of the channels along `dim` (0: output channels) still
/// unpruned, those with the smallest Lₙ norm (`n` = 1, 2, …), whole
/// (PyTorch's `prune.ln_structured`).
///
/// # Panics
/// When `dim` is not a dim of the weight, `n` is not positive, or the amount is out of range.
pub fn ln_structured(layer: &dyn Prunable, amount: impl Into<Amount>, n: f64, dim: usize) {
    let dims = layer.weight().dims().to_vec();
    assert!(dim < dims.len(), "ln_structured: dim {dim} for a weight {dims:?} of {}", layer.layer_name());
    assert!(n > 0.0, "ln_structured: the norm's order must be positive, got {n}");
    let mut mask = mask_values(layer);
    let w = layer.weight().to_vec::<f32>();
    let norms = slice_norms(&w, &mask, &dims, dim, n);
    let inner: usize = dims[dim + 1..].iter().product();
    let len = dims[dim];
    // A channel is live while any of its weights is.
    let mut chan = vec![0.0f32; len];
    for (i, &m) in mask.iter().enumerate() {
        if m != 0.0 {
            chan[(i / inner) % len] = 1.0;
        }
    }
    let live = chan.iter().filter(|&&c| c != 0.0).count();
    let k = amount.into().of(live, "ln_structured");
    prune_smallest(&mut chan, &norms, k);
    for (i, m) in mask.iter_mut().enumerate() {
        *m *= chan[(i / inner) % len];
    }
    set_mask(layer, mask);
}

/// The gradual schedule of Zhu & Gupta (2017, "To prune, or not to
/// prune"): the sparsity to reach after step `t` of `steps`,
/// `s_f + (s_i − s_f)·(1 − t/steps)³`. Pruning fast at first and slowly at
/// the end, with fine-tuning between steps, loses less than pruning at once.
///
/// ```
/// use firebrand_nn::prune::gradual_sparsity;
/// assert_eq!(gradual_sparsity(0, 4, 0.0, 0.9), 0.0);
/// assert!((gradual_sparsity(2, 4, 0.0, 0.9) - 0.7875).abs() < 1e-12);
/// assert_eq!(gradual_sparsity(4, 4, 0.0, 0.9), 0.9);
/// ```
pub fn gradual_sparsity(t: usize, steps: usize, initial: f64, target: f64) -> f64 {
    let f = 1.0 - (t.min(steps) as f64 / steps.max(1) as f64);
    target + (initial - target) * f.powi(3)
}

/// Prunes `layers` globally by magnitude until `target` (a fraction) of
/// their weights are pruned, counting what their masks already prune: one
/// step of a gradual schedule.
///
/// # Panics
/// When `target` is not in `[0, 1]`.
pub fn global_unstructured_to(layers: &[&dyn Prunable], target: f64) {
    assert!((0.0..=1.0).contains(&target), "global_unstructured_to: target {target} is not in [0, 1]");
    let masks: Vec<Vec<f32>> = layers.iter().map(|l| mask_values(*l)).collect();
    let total: usize = masks.iter().map(Vec::len).sum();
    let pruned = masks.iter().flatten().filter(|&&m| m == 0.0).count();
    let k = ((target * total as f64).round() as usize).saturating_sub(pruned);
    global_unstructured(layers, Amount::Count(k));
}

/// Whether the layer has a mask.
pub fn is_pruned(layer: &dyn Prunable) -> bool {
    layer.mask().get().is_some()
}

/// The fraction of the weights the layer computes with that are zero.
pub fn sparsity(layer: &dyn Prunable) -> f64 {
    let w = with_no_grad(|| masked_weight(layer)).to_vec::<f32>();
    w.iter().filter(|&&v| v == 0.0).count() as f64 / w.len().max(1) as f64
}

/// Makes the pruning permanent: the weight becomes `weight ⊙ mask` (in
/// place: optimizers keep their handle on it) and the mask goes
/// (PyTorch's `prune.remove`).
///
/// # Panics
/// When the layer is not pruned (as PyTorch).
pub fn remove(layer: &dyn Prunable) {
    let m = layer.mask().get().unwrap_or_else(|| panic!("prune::remove: {} is not pruned", layer.layer_name()));
    with_no_grad(|| layer.weight().copy_(&layer.weight().mul(&m))).expect("the weight's shape");
    layer.mask().set(None);
}

/// Why [`shrink`] cannot shrink a layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("prune::shrink: {0}")]
pub struct ShrinkError(pub String);

/// The output channels of `seq[i]` (a `Linear` or `Conv2d`) to keep: all
/// but `amount` with the smallest Lₙ norm, in order.
fn channels_to_keep(w: &Tensor, amount: Amount, n: f64) -> Vec<usize> {
    let dims = w.dims().to_vec();
    let v = w.to_vec::<f32>();
    let norms = slice_norms(&v, &vec![1.0; v.len()], &dims, 0, n);
    let mut chan = vec![1.0f32; dims[0]];
    let k = amount.of(dims[0], "shrink");
    assert!(k < dims[0], "prune::shrink: removing all {} channels", dims[0]);
    prune_smallest(&mut chan, &norms, k);
    (0..dims[0]).filter(|&c| chan[c] != 0.0).collect()
}

/// Removes `amount` of the output channels of layer `i` of `seq` (a
/// `Linear` or `Conv2d`), those with the smallest Lₙ norm of their
/// weights (their masks applied), and the matching inputs of the next
/// layer with weights: a `Conv2d`'s input channels, or a `Linear`'s inputs
/// (after a `Flatten`, each channel's block of `in / channels` features).
/// A `BatchNorm2d` between them loses the same channels; layers without
/// weights (activations, pooling, dropout, `Flatten`) pass. Both layers
/// are rebuilt without masks. Returns how many channels went.
///
/// # Errors
/// When layer `i` is not a `Linear` or `Conv2d`, no such layer follows it,
/// another layer with weights sits between, the features do not divide
/// into channels, or a grouped convolution is involved.
pub fn shrink(seq: &mut Sequential, i: usize, amount: impl Into<Amount>, n: f64) -> Result<usize, ShrinkError> {
    let amount = amount.into();
    let err = |m: String| Err(ShrinkError(m));
    let (keep, channels) = if let Some(l) = seq.get::<Linear>(i) {
        let w = with_no_grad(|| masked_weight(l));
        (channels_to_keep(&w, amount, n), l.out_features())
    } else if let Some(c) = seq.get::<Conv2d>(i) {
        if c.config().groups != 1 {
            return err(format!("layer {i} ({}) is a grouped convolution", c.describe()));
        }
        let w = with_no_grad(|| masked_weight(c));
        (channels_to_keep(&w, amount, n), c.weight.dims()[0])
    } else {
        return err(format!("layer {i} is neither Linear nor Conv2d"));
    };
    // The next layer with weights, and any BatchNorm2d before it.
    let mut j = i + 1;
    let mut norms = Vec::new();
    loop {
        if j >= seq.len() {
            return err(format!("no Linear or Conv2d follows layer {i}"));
        }
        if seq.get::<Linear>(j).is_some() || seq.get::<Conv2d>(j).is_some() {
            break;
        }
        if seq.get::<BatchNorm2d>(j).is_some() {
            norms.push(j);
        } else {
            let layer = seq.layers().nth(j).expect("j < len");
            let mut params = 0;
            layer.visit_parameters("", &mut |_, _| params += 1);
            if params > 0 {
                return err(format!("layer {j} ({}) between them has weights", layer.describe()));
            }
        }
        j += 1;
    }
    if let Some(l) = seq.get::<Linear>(i) {
        let new = l.select_outputs(&keep);
        seq.set(i, new);
    } else {
        let c = seq.get::<Conv2d>(i).expect("checked");
        let new = c.select_out_channels(&keep);
        seq.set(i, new);
    }
    for k in norms {
        let bn = seq.get::<BatchNorm2d>(k).expect("found above").select_channels(&keep);
        seq.set(k, bn);
    }
    if let Some(next) = seq.get::<Linear>(j) {
        let inf = next.in_features();
        if !inf.is_multiple_of(channels) {
            return err(format!("layer {j} ({}) has {inf} inputs for {channels} channels", next.describe()));
        }
        let per = inf / channels;
        let cols: Vec<usize> = keep.iter().flat_map(|&c| c * per..(c + 1) * per).collect();
        let new = next.select_inputs(&cols);
        seq.set(j, new);
    } else {
        let next = seq.get::<Conv2d>(j).expect("found above");
        if next.config().groups != 1 {
            return err(format!("layer {j} ({}) is a grouped convolution", next.describe()));
        }
        let new = next.select_in_channels(&keep);
        seq.set(j, new);
    }
    Ok(channels - keep.len())
}

/// `t`'s entries at `idx` along `dim`, a fresh tensor that requires grad
/// as `t` did.
pub(crate) fn select(t: &Tensor, dim: usize, idx: &[usize]) -> Tensor {
    let index = Tensor::from_vec(idx.iter().map(|&i| i as i64).collect::<Vec<_>>(), [idx.len()]);
    let out = with_no_grad(|| t.index_select(dim as isize, &index.to_device(t.device()).expect("a device")));
    out.contiguous().detach().requires_grad_(t.requires_grad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Activation, Flatten, MaxPool2d, Padding, ReLU};
    use firebrand_autograd::manual_seed;

    fn zeros(t: &Tensor) -> usize {
        t.to_vec::<f32>().iter().filter(|&&v| v == 0.0).count()
    }

    /// L1 pruning removes the smallest weights; pruning again takes the
    /// fraction of what is left (PyTorch's iterative rule); counts work.
    #[test]
    fn l1_prunes_the_smallest_and_iterates_on_the_rest() {
        let l = Linear::from_parts(Tensor::from_vec(vec![0.1f32, -5.0, 0.3, 2.0, -0.2, 1.0, 4.0, -0.05], [2, 4]), None);
        l1_unstructured(&l, 0.25);
        assert_eq!(masked_weight(&l).to_vec::<f32>(), [0.0, -5.0, 0.3, 2.0, -0.2, 1.0, 4.0, 0.0]);
        l1_unstructured(&l, 0.5); // half of the 6 left: 0.2, 0.3, 1.0
        assert_eq!(masked_weight(&l).to_vec::<f32>(), [0.0, -5.0, 0.0, 2.0, 0.0, 0.0, 4.0, 0.0]);
        l1_unstructured(&l, 1usize);
        assert_eq!(zeros(&masked_weight(&l)), 6);
        assert_eq!(l.weight.to_vec::<f32>()[0], 0.1, "the weight itself stays until remove");
        let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l1_unstructured(&l, 1.5))).unwrap_err();
        assert!(e.downcast_ref::<String>().unwrap().contains("amount 1.5"));
    }

    /// Masks hold through training: pruned weights get zero gradients, the
    /// forward pass sees zeros even when an optimizer moves the weight
    /// behind the mask, and the state dict carries the mask.
    #[test]
    fn masks_hold_through_training_and_save_with_the_weights() {
        manual_seed(1);
        let l = Linear::new(6, 5);
        l1_unstructured(&l, 0.6);
        let x = Tensor::randn([3, 6], 0.0, 1.0);
        l.forward(&x).sum_all().backward();
        let (g, m) = (l.weight.grad().unwrap().to_vec::<f32>(), l.mask.get().unwrap().to_vec::<f32>());
        assert!(g.iter().zip(&m).all(|(g, m)| *m != 0.0 || *g == 0.0));
        assert!(g.iter().zip(&m).any(|(g, m)| *m != 0.0 && *g != 0.0));
        // Move every weight (as momentum or weight decay might).
        with_no_grad(|| l.weight.copy_(&l.weight.affine(1.0, 0.5))).unwrap();
        let y = with_no_grad(|| l.forward(&x));
        let w = with_no_grad(|| masked_weight(&l));
        let want = with_no_grad(|| x.matmul(&w.t()).add(l.bias.as_ref().unwrap()));
        assert_eq!(y.to_vec::<f32>(), want.to_vec::<f32>());
        assert_eq!(zeros(&w), 18);
        let names: Vec<String> = crate::ModuleExt::state_dict(&l).into_iter().map(|(n, _)| n).collect();
        assert!(names.contains(&"weight_mask".to_string()), "{names:?}");
        remove(&l);
        assert_eq!(zeros(&l.weight), 18);
        assert!(!crate::ModuleExt::state_dict(&l).iter().any(|(n, _)| n == "weight_mask"));
    }

    /// Global pruning thresholds across layers: the layer of small weights loses more.
    #[test]
    fn global_pruning_takes_more_from_the_layer_of_small_weights() {
        let small =
            Linear::from_parts(Tensor::from_vec((1..=8).map(|i| i as f32 * 0.01).collect::<Vec<_>>(), [2, 4]), None);
        let big = Linear::from_parts(Tensor::from_vec((1..=8).map(|i| i as f32).collect::<Vec<_>>(), [2, 4]), None);
        global_unstructured(&[&small, &big], 0.5);
        assert_eq!(zeros(&masked_weight(&small)), 8);
        assert_eq!(zeros(&masked_weight(&big)), 0);
    }

    #[test]
    fn global_unstructured_to_reaches_the_target_over_steps() {
        manual_seed(4);
        let (a, b) = (Linear::new(30, 20), Linear::new(20, 10));
        for t in 1..=3 {
            let s = gradual_sparsity(t, 3, 0.0, 0.9);
            global_unstructured_to(&[&a, &b], s);
            let zeros = (sparsity(&a) * 600.0 + sparsity(&b) * 200.0).round();
            assert_eq!(zeros, (s * 800.0).round(), "step {t}");
        }
    }

    /// Ln-structured pruning removes whole channels by norm, along either dim.
    #[test]
    fn ln_structured_removes_whole_channels() {
        manual_seed(2);
        let c = Conv2d::new(3, 8, 3);
        with_no_grad(|| c.weight.copy_(&c.weight.abs().affine(1.0, 0.01))).unwrap();
        // Make channel 5 the smallest and channel 2 the next.
        let scale: Vec<f32> = (0..8)
            .map(|i| {
                if i == 5 {
                    0.01
                } else if i == 2 {
                    0.1
                } else {
                    1.0
                }
            })
            .collect();
        let s = Tensor::from_vec(scale, [8, 1, 1, 1]);
        with_no_grad(|| c.weight.copy_(&c.weight.mul(&s))).unwrap();
        ln_structured(&c, 2usize, 2.0, 0);
        let w = masked_weight(&c).to_vec::<f32>();
        for ch in 0..8 {
            let dead = w[ch * 27..(ch + 1) * 27].iter().all(|&v| v == 0.0);
            assert_eq!(dead, ch == 5 || ch == 2, "channel {ch}");
        }
        ln_structured(&c, 1usize, 1.0, 1); // an input channel
        assert!((sparsity(&c) - (1.0 - 6.0 / 8.0 * 2.0 / 3.0)).abs() < 1e-9, "{}", sparsity(&c));
    }

    /// A BatchNorm2d between two convolutions loses the same channels: when
    /// the removed channels feed nothing downstream, the shrunk model (in
    /// evaluation mode) computes what the whole one does.
    #[test]
    fn shrink_carries_a_batch_norm_between() {
        manual_seed(5);
        let mut seq = Sequential::new()
            .add(Conv2d::new(2, 6, 3).padding(Padding::Same))
            .add(crate::BatchNorm2d::new(6))
            .add(ReLU)
            .add(Conv2d::new(6, 4, 3).padding(Padding::Same));
        // Train-mode passes give the BatchNorm running statistics of its own.
        for _ in 0..3 {
            let _ = with_no_grad(|| seq.forward(&Tensor::randn([4, 2, 5, 5], 0.5, 2.0)));
        }
        seq.set_training(false);
        let dead = [1usize, 4];
        with_no_grad(|| {
            let c0 = seq.get::<Conv2d>(0).unwrap();
            let s0: Vec<f32> = (0..6).map(|c| if dead.contains(&c) { 1e-3 } else { 1.0 }).collect();
            c0.weight.copy_(&c0.weight.mul(&Tensor::from_vec(s0, [6, 1, 1, 1]))).unwrap();
            let c3 = seq.get::<Conv2d>(3).unwrap();
            let s3: Vec<f32> = (0..6).map(|c| if dead.contains(&c) { 0.0 } else { 1.0 }).collect();
            c3.weight.copy_(&c3.weight.mul(&Tensor::from_vec(s3, [1, 6, 1, 1]))).unwrap();
        });
        let x = Tensor::randn([2, 2, 5, 5], 0.0, 1.0);
        let before = with_no_grad(|| seq.forward(&x)).to_vec::<f32>();
        let bn_mean = seq.get::<crate::BatchNorm2d>(1).unwrap().running_mean.to_vec::<f32>();
        assert_eq!(shrink(&mut seq, 0, 2usize, 2.0).unwrap(), 2);
        let bn = seq.get::<crate::BatchNorm2d>(1).unwrap();
        assert_eq!(bn.num_features(), 4);
        let kept: Vec<f32> = (0..6).filter(|c| !dead.contains(c)).map(|c| bn_mean[c]).collect();
        assert_eq!(bn.running_mean.to_vec::<f32>(), kept);
        let after = with_no_grad(|| seq.forward(&x)).to_vec::<f32>();
        let diff = before.iter().zip(&after).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "shrunk vs whole: {diff}");
    }

    /// Structural shrinking: conv → pool → conv → flatten → linear loses
    /// half the channels of both convolutions; the smaller model computes
    /// exactly what the masked one does when the removed channels are zero.
    #[test]
    fn shrink_removes_channels_and_their_inputs_downstream() {
        manual_seed(3);
        let mut seq = Sequential::new()
            .add(Conv2d::new(1, 8, 3).padding(Padding::Same).with_activation(Activation::Relu))
            .add(MaxPool2d::new(2))
            .add(Conv2d::new(8, 6, 3).padding(Padding::Same))
            .add(ReLU)
            .add(Flatten)
            .add(Linear::new(6 * 4 * 4, 3));
        let x = Tensor::randn([2, 1, 8, 8], 0.0, 1.0);
        // Zero channels by structured masks, then remove: the shrunk model must agree.
        ln_structured(seq.get::<Conv2d>(0).unwrap(), 4usize, 1.0, 0);
        remove(seq.get::<Conv2d>(0).unwrap());
        with_no_grad(|| {
            let b = seq.get::<Conv2d>(0).unwrap().bias.as_ref().unwrap();
            let keep = seq.get::<Conv2d>(0).unwrap().weight.abs().sum(&[1, 2, 3], false).gt(&Tensor::scalar(0.0));
            b.copy_(&b.mul(&keep.to_dtype(firebrand_autograd::DType::F32))).unwrap();
        });
        let before = with_no_grad(|| seq.forward(&x)).to_vec::<f32>();
        assert_eq!(shrink(&mut seq, 0, 4usize, 1.0).unwrap(), 4);
        assert_eq!(seq.get::<Conv2d>(0).unwrap().weight.dims(), &[4, 1, 3, 3]);
        assert_eq!(seq.get::<Conv2d>(2).unwrap().weight.dims(), &[6, 4, 3, 3]);
        let after = with_no_grad(|| seq.forward(&x)).to_vec::<f32>();
        let diff = before.iter().zip(&after).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "shrunk vs masked: {diff}");
        // The second convolution into the flattened linear layer.
        assert_eq!(shrink(&mut seq, 2, 0.5, 2.0).unwrap(), 3);
        assert_eq!(seq.get::<Linear>(5).unwrap().in_features(), 3 * 16);
        assert_eq!(with_no_grad(|| seq.forward(&x)).dims(), &[2, 3]);
        // And it still trains.
        seq.forward(&x).sum_all().backward();
        assert!(crate::ModuleExt::parameters(&seq).iter().all(|p| p.grad().is_some()));
        // What cannot be shrunk is named.
        assert!(shrink(&mut seq, 1, 0.5, 1.0).unwrap_err().0.contains("neither Linear nor Conv2d"));
        assert!(shrink(&mut seq, 5, 0.5, 1.0).unwrap_err().0.contains("no Linear or Conv2d follows"));
    }
}
