//! A GPT-style decoder-only language model: token and learned position
//! embeddings, a stack of causal pre-norm blocks with GELU feed-forward,
//! a final `LayerNorm` and a linear head to the vocabulary; KV-cached
//! generation.

use super::{KvCache, LayerNorm, LearnedPositionalEncoding, TransformerEncoderLayer};
use crate::loss::{Reduction, Target, cross_entropy};
use crate::{Dropout, Embedding, Init, Linear, Module, ModuleExt, Sampler};
use firebrand_autograd::{Tensor, with_no_grad};

/// Sizes of a [`Gpt`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Longest sequence (the position table's length).
    pub context: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// Embedding width `C` (the feed-forward block is `4C` wide).
    pub embed: usize,
    /// Dropout after the embeddings and in every block, in training.
    pub dropout: f32,
}

impl GptConfig {
    /// The small character-level model of the `gpt` example and workload:
    /// context 64, 4 layers, 4 heads, embedding 128, no dropout.
    pub fn char_level(vocab_size: usize) -> Self {
        GptConfig { vocab_size, context: 64, layers: 4, heads: 4, embed: 128, dropout: 0.0 }
    }
}

/// Per-layer key/value caches of a [`Gpt`] for incremental decoding.
#[derive(Default, Clone)]
pub struct GptCache {
    /// One cache per block.
    pub layers: Vec<KvCache>,
}

impl GptCache {
    /// Cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, KvCache::len)
    }

    /// True before the first step.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A GPT-2-style language model (`wte`, `wpe`, `blocks.{i}` with PyTorch's
/// `nn.TransformerEncoderLayer` names, `ln_f`, `lm_head`), initialized as
/// GPT-2: weights `N(0, 0.02)`, the residual projections `N(0, 0.02/√(2L))`,
/// biases 0.
///
/// ```
/// use firebrand_nn::{Gpt, GptConfig, Sampler, Sampling};
/// use firebrand_autograd::Tensor;
/// let gpt = Gpt::new(GptConfig { vocab_size: 10, context: 8, layers: 2, heads: 2, embed: 16, dropout: 0.0 });
/// let ids = Tensor::from_vec(vec![1i64, 2, 3, 4, 5, 6], [2, 3]); // (B, T)
/// assert_eq!(gpt.forward(&ids).dims(), &[2, 3, 10]); // (B, T, V) logits
/// let text = gpt.generate(&[1, 2], 5, &mut Sampler::new(Sampling::Greedy, 0));
/// assert_eq!(text.len(), 7);
/// # use firebrand_nn::Module;
/// ```
#[derive(Module)]
#[module(forward = logits, describe = description)]
pub struct Gpt {
    /// Token embedding `(V, C)`.
    pub wte: Embedding,
    /// Position embedding `(context, C)`.
    pub wpe: LearnedPositionalEncoding,
    /// Causal pre-norm blocks.
    pub blocks: Vec<TransformerEncoderLayer>,
    /// Final norm.
    pub ln_f: LayerNorm,
    /// Head to the vocabulary, `C → V`, no bias.
    pub lm_head: Linear,
    drop: Dropout,
    #[module(skip)]
    config: GptConfig,
}

impl Gpt {
    /// A model of the given sizes, GPT-2's initialization (seeded by
    /// [`manual_seed`](firebrand_autograd::manual_seed)).
    ///
    /// # Panics
    /// When `heads` does not divide `embed`.
    pub fn new(config: GptConfig) -> Self {
        let c = config.embed;
        let block = || {
            TransformerEncoderLayer::new(c, config.heads, 4 * c)
                .norm_first(true)
                .gelu(true)
                .causal(true)
                .dropout(config.dropout)
        };
        let gpt = Gpt {
            wte: Embedding::new(config.vocab_size, c),
            wpe: LearnedPositionalEncoding::new(config.context, c),
            blocks: (0..config.layers).map(|_| block()).collect(),
            ln_f: LayerNorm::new(c),
            lm_head: Linear::with_init(c, config.vocab_size, Init::Normal(0.0, 0.02), None),
            drop: Dropout::new(config.dropout),
            config,
        };
        let residual_std = 0.02 / (2.0 * config.layers as f32).sqrt();
        with_no_grad(|| {
            for (name, p) in gpt.named_parameters() {
                let init = if name.ends_with("out_proj.weight") || name.ends_with("linear2.weight") {
                    Init::Normal(0.0, residual_std)
                } else if p.rank() == 2 {
                    Init::Normal(0.0, 0.02)
                } else if name.ends_with("bias") {
                    Init::Zeros
                } else {
                    continue; // norm scales stay 1
                };
                p.copy_(&init.tensor(p.shape().clone(), 1, 1)).expect("same shape");
            }
        });
        gpt
    }

    /// Ties the head to the token embedding (GPT-2's weight tying): `lm_head`
    /// uses `wte.weight` `(V, C)` itself, so the model has one `(V, C)` matrix
    /// fewer, `named_parameters` lists it once (as `wte.weight`) and its
    /// gradient sums both uses. `state_dict` keeps both names, as PyTorch's.
    ///
    /// ```
    /// use firebrand_nn::{Gpt, GptConfig, ModuleExt};
    /// let cfg = GptConfig { vocab_size: 10, context: 8, layers: 1, heads: 2, embed: 8, dropout: 0.0 };
    /// let (untied, tied) = (Gpt::new(cfg), Gpt::new(cfg).tie_weights());
    /// assert_eq!(untied.num_parameters() - tied.num_parameters(), 10 * 8);
    /// ```
    pub fn tie_weights(mut self) -> Self {
        self.lm_head.weight = self.wte.weight.clone();
        self
    }

    /// The sizes.
    pub fn config(&self) -> GptConfig {
        self.config
    }

    fn check_ids(&self, ids: &Tensor, start: usize) -> (usize, usize) {
        let (b, t) = match *ids.dims() {
            [b, t] => (b, t),
            _ => panic!("Gpt: ids must be (B, T), got {:?}", ids.dims()),
        };
        assert!(
            start + t <= self.config.context,
            "Gpt: positions {start}..{} exceed the context of {}",
            start + t,
            self.config.context
        );
        (b, t)
    }

    /// Embeddings of `ids` `(B, T)` at positions `start..start + T`: `(B, T, C)`.
    fn embed(&self, ids: &Tensor, start: usize) -> Tensor {
        let (_, t) = self.check_ids(ids, start);
        let pos = self.wpe.weight.narrow(0, start, t); // (T, C)
        self.drop.forward(&self.wte.forward(ids).add(&pos))
    }

    fn head(&self, x: &Tensor) -> Tensor {
        self.lm_head.forward(&self.ln_f.forward(x)) // (B, T, V)
    }

    /// Logits `(B, T_new, V)` for the next positions `ids` `(B, T_new)`,
    /// using and extending `cache`: feeding a sequence in pieces gives the
    /// same logits as [`Module::forward`] on all of it.
    ///
    /// # Panics
    /// When the cached plus new positions exceed the context.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut GptCache) -> Tensor {
        cache.layers.resize_with(self.blocks.len(), KvCache::default);
        let mut x = self.embed(ids, cache.len());
        for (block, c) in self.blocks.iter().zip(&mut cache.layers) {
            x = block.forward_cached(&x, c);
        }
        self.head(&x)
    }

    /// Mean cross-entropy of predicting `targets` `(B, T)` from `ids` `(B, T)`.
    pub fn loss(&self, ids: &Tensor, targets: &Tensor) -> Tensor {
        let logits = self.forward(ids); // (B, T, V)
        let v = self.config.vocab_size;
        let n = targets.elem_count();
        cross_entropy(&logits.reshape([n, v]), Target::Indices(&targets.reshape([n])), 0.0, Reduction::Mean)
            .expect("logits and targets agree")
    }

    /// Continues `prompt` by `steps` tokens drawn by `sampler`; returns the
    /// prompt and the new tokens. Runs without recording gradients, in the
    /// model's current mode (call `eval()` first when it has dropout). Keys
    /// and values are cached while the text fits the context; beyond it each
    /// step reruns the last `context` tokens (the learned positions shift).
    ///
    /// # Panics
    /// When `prompt` is empty.
    pub fn generate(&self, prompt: &[i64], steps: usize, sampler: &mut Sampler) -> Vec<i64> {
        assert!(!prompt.is_empty(), "Gpt::generate: empty prompt");
        let ctx = self.config.context;
        let mut out = prompt.to_vec();
        let dev = crate::ModuleExt::device(self);
        let on_device = |t: Tensor| t.to_device(dev).expect("the model's device");
        with_no_grad(|| {
            let mut cache = GptCache::default();
            for _ in 0..steps {
                let logits = if out.len() <= ctx {
                    let fresh = &out[cache.len()..]; // the tokens not yet in the cache
                    self.forward_cached(&on_device(Tensor::from_vec(fresh.to_vec(), [1, fresh.len()])), &mut cache)
                } else {
                    self.forward(&on_device(Tensor::from_vec(out[out.len() - ctx..].to_vec(), [1, ctx])))
                };
                let t = logits.dims()[1];
                let last = logits.narrow(1, t - 1, 1).to_vec::<f32>();
                out.push(sampler.sample(&last) as i64);
            }
        });
        out
    }
}

impl Gpt {
    /// `Module::forward`: logits `(B, T, V)` for token ids `(B, T)` (`i64`), `T ≤ context`.
    fn logits(&self, ids: &Tensor) -> Tensor {
        let x = self.blocks.iter().fold(self.embed(ids, 0), |h, b| b.forward(&h)); // (B, T, C)
        self.head(&x)
    }

    fn description(&self) -> String {
        let c = self.config;
        format!(
            "Gpt(vocab {}, context {}, {} layers, {} heads, embed {})",
            c.vocab_size, c.context, c.layers, c.heads, c.embed
        )
    }
}
