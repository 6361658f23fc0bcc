//! Hugging Face's `GPT2LMHeadModel` under its names (`transformer.` prefix
//! dropped): learned positions, pre-norm blocks with `gelu_new`, the head
//! tied to the token embeddings, and a KV cache.
//!
//! GPT-2's checkpoints store their projections as `Conv1D`, whose weight is
//! `(in, out)`; they are transposed into `Linear`'s `(out, in)` on load.

use crate::hub::{Config, load_checkpoint, normalize_names};
use crate::{PretrainedError, Result};
use firebrand_autograd::{AttentionOptions, Tensor, with_no_grad};
use firebrand_nn::serialize::plan_load;
use firebrand_nn::{Activation, Embedding, Init, LayerNorm, Linear, Module, ModuleExt};
use std::path::Path;

/// The sizes of a GPT-2 checkpoint (`config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct Gpt2Config {
    /// Token embeddings.
    pub vocab_size: usize,
    /// Learned positions.
    pub n_positions: usize,
    /// Width.
    pub n_embd: usize,
    /// Blocks.
    pub n_layer: usize,
    /// Heads.
    pub n_head: usize,
    /// The feed-forward activation (`gelu_new`: tanh GELU; `gelu`: erf; `relu`).
    pub activation: Activation,
    /// LayerNorm's epsilon.
    pub layer_norm_epsilon: f32,
}

impl Gpt2Config {
    /// Reads a `config.json`.
    ///
    /// # Errors
    /// A missing or mistyped field, an unknown activation, or another `model_type`.
    pub fn from_config(c: &Config) -> Result<Gpt2Config> {
        c.expect_model_type(&["gpt2"], "a GPT-2 (model_type \"gpt2\")")?;
        let activation = match c.str_or("activation_function", "gelu_new")? {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            "relu" => Activation::Relu,
            other => {
                return Err(PretrainedError::Config {
                    path: c.path.clone(),
                    field: "activation_function".into(),
                    msg: format!("{other:?} is not one of gelu_new, gelu, relu"),
                });
            }
        };
        let cfg = Gpt2Config {
            vocab_size: c.usize("vocab_size")?,
            n_positions: c.usize_or("n_positions", 1024)?,
            n_embd: c.usize("n_embd")?,
            n_layer: c.usize("n_layer")?,
            n_head: c.usize("n_head")?,
            activation,
            layer_norm_epsilon: c.f64_or("layer_norm_epsilon", 1e-5)? as f32,
        };
        if cfg.n_head == 0 || !cfg.n_embd.is_multiple_of(cfg.n_head) {
            return Err(PretrainedError::Config {
                path: c.path.clone(),
                field: "n_head".into(),
                msg: format!("{} does not divide n_embd {}", cfg.n_head, cfg.n_embd),
            });
        }
        Ok(cfg)
    }
}

fn linear(i: usize, o: usize) -> Linear {
    Linear::with_init(i, o, Init::Normal(0.0, 0.02), Some(Init::Zeros))
}

/// Causal self-attention with one fused q/k/v projection.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = forward_plain)]
pub struct Gpt2Attention {
    /// `(3E, E)`.
    pub c_attn: Linear,
    /// `(E, E)`.
    pub c_proj: Linear,
    heads: usize,
}

/// One block's cached keys and values `(B, S, E)` each.
#[derive(Debug, Clone, Default)]
pub struct Gpt2LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

/// The keys and values of the positions seen so far, per block.
#[derive(Debug, Clone, Default)]
pub struct Gpt2Cache {
    layers: Vec<Gpt2LayerCache>,
}

impl Gpt2Cache {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.k.as_ref()).map_or(0, |k| k.dims()[1])
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Gpt2Attention {
    fn forward_plain(&self, x: &Tensor) -> Tensor {
        self.attend(x, 0, None)
    }

    fn attend(&self, x: &Tensor, offset: usize, cache: Option<&mut Gpt2LayerCache>) -> Tensor {
        let (b, t, e) = (x.dims()[0], x.dims()[1], x.dims()[2]);
        let (h, d) = (self.heads, e / self.heads);
        let qkv = self.c_attn.forward(x); // (B, T, 3E)
        let (q, mut k, mut v) = (qkv.narrow(2, 0, e), qkv.narrow(2, e, e), qkv.narrow(2, 2 * e, e));
        if let Some(c) = cache {
            k = match &c.k {
                Some(pk) => Tensor::cat(&[pk, &k], 1),
                None => k.contiguous(),
            };
            v = match &c.v {
                Some(pv) => Tensor::cat(&[pv, &v], 1),
                None => v.contiguous(),
            };
            (c.k, c.v) = (Some(k.clone()), Some(v.clone()));
        }
        let heads = |y: &Tensor| y.reshape([b, y.dims()[1], h, d]).permute(&[0, 2, 1, 3]); // (B, h, L, d)
        let opts = AttentionOptions { causal: Some(offset), ..Default::default() };
        let y = heads(&q).scaled_dot_product_attention(&heads(&k), &heads(&v), &opts);
        self.c_proj.forward(&y.permute(&[0, 2, 1, 3]).reshape([b, t, e]))
    }
}

/// The feed-forward layer: `c_proj(act(c_fc(x)))`.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = mlp)]
pub struct Gpt2Mlp {
    /// `(4E, E)`, the activation fused.
    pub c_fc: Linear,
    /// `(E, 4E)`.
    pub c_proj: Linear,
}

impl Gpt2Mlp {
    fn mlp(&self, x: &Tensor) -> Tensor {
        self.c_proj.forward(&self.c_fc.forward(x))
    }
}

/// One pre-norm block.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = forward_plain)]
pub struct Gpt2Block {
    /// Before attention.
    pub ln_1: LayerNorm,
    /// Attention.
    pub attn: Gpt2Attention,
    /// Before the feed-forward layer.
    pub ln_2: LayerNorm,
    /// Feed-forward layer.
    pub mlp: Gpt2Mlp,
}

impl Gpt2Block {
    fn forward_plain(&self, x: &Tensor) -> Tensor {
        self.step(x, 0, None)
    }

    fn step(&self, x: &Tensor, offset: usize, cache: Option<&mut Gpt2LayerCache>) -> Tensor {
        let h = x.add(&self.attn.attend(&self.ln_1.forward(x), offset, cache));
        h.add(&self.mlp.forward(&self.ln_2.forward(&h)))
    }
}

/// Hugging Face's `GPT2LMHeadModel`, the head tied to `wte`.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = logits, describe = describe_gpt2)]
pub struct Gpt2 {
    /// Token embeddings `(vocab, E)`, also the output head.
    pub wte: Embedding,
    /// Position embeddings `(n_positions, E)`.
    pub wpe: Embedding,
    /// The blocks (`h.N`).
    pub h: Vec<Gpt2Block>,
    /// The final norm.
    pub ln_f: LayerNorm,
    #[module(skip)]
    config: Gpt2Config,
}

/// The names of GPT-2's `Conv1D` weights, stored `(in, out)`.
fn is_conv1d(name: &str) -> bool {
    ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"]
        .iter()
        .any(|s| name.ends_with(s))
}

impl Gpt2 {
    /// A randomly initialized model (`N(0, 0.02)`).
    pub fn new(c: &Gpt2Config) -> Gpt2 {
        let e = c.n_embd;
        let norm = || LayerNorm::new(e).eps(c.layer_norm_epsilon);
        Gpt2 {
            wte: Embedding::with_init(c.vocab_size, e, Init::Normal(0.0, 0.02)),
            wpe: Embedding::with_init(c.n_positions, e, Init::Normal(0.0, 0.01)),
            h: (0..c.n_layer)
                .map(|_| Gpt2Block {
                    ln_1: norm(),
                    attn: Gpt2Attention { c_attn: linear(e, 3 * e), c_proj: linear(e, e), heads: c.n_head },
                    ln_2: norm(),
                    mlp: Gpt2Mlp { c_fc: linear(e, 4 * e).with_activation(c.activation), c_proj: linear(4 * e, e) },
                })
                .collect(),
            ln_f: norm(),
            config: c.clone(),
        }
    }

    /// Loads a Hugging Face GPT-2 folder: `config.json` and its weights by
    /// name (`transformer.` dropped, `Conv1D` weights transposed; an
    /// `lm_head.weight` is the tied `wte` and not read). Strict: a missing
    /// or extra tensor is an error naming it. In evaluation mode.
    ///
    /// # Errors
    /// A bad config (named field), missing or corrupt weights, a missing or
    /// unexpected tensor, a shape mismatch.
    pub fn from_pretrained(dir: impl AsRef<Path>) -> Result<Gpt2> {
        let dir = dir.as_ref();
        let config = Gpt2Config::from_config(&Config::read(dir)?)?;
        let mut tensors = normalize_names(load_checkpoint(dir)?, &["transformer."]);
        tensors.remove("lm_head.weight");
        // Older checkpoints save the causal mask buffers.
        tensors.retain(|n, _| !n.ends_with(".attn.bias") && !n.ends_with(".attn.masked_bias"));
        for (name, t) in tensors.iter_mut() {
            if is_conv1d(name) && t.rank() == 2 {
                *t = t.t().contiguous();
            }
        }
        let mut model = Gpt2::new(&config);
        let plan = plan_load(&model.state_dict(), tensors, &dir.join("model.safetensors"), true)?;
        with_no_grad(|| plan.apply());
        model.set_training(false);
        Ok(model)
    }

    /// The config it was built from.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    fn describe_gpt2(&self) -> String {
        let c = &self.config;
        format!("Gpt2({} blocks, {} wide, {} heads)", c.n_layer, c.n_embd, c.n_head)
    }

    /// Logits `(B, T, vocab)` of ids `(B, T)`, no cache.
    pub fn logits(&self, ids: &Tensor) -> Tensor {
        self.run(ids, None)
    }

    /// Logits `(B, T, vocab)` of ids that follow the cached positions.
    ///
    /// # Panics
    /// Past the learned positions.
    pub fn run(&self, ids: &Tensor, cache: Option<&mut Gpt2Cache>) -> Tensor {
        let t = ids.dims()[1];
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let max = self.wpe.num_embeddings();
        assert!(offset + t <= max, "Gpt2: {} positions but {max} learned", offset + t);
        let pos = Tensor::from_vec((offset as i64..(offset + t) as i64).collect::<Vec<_>>(), [1, t])
            .to_device(ids.device())
            .expect("a device");
        let mut x = self.wte.forward(ids).add(&self.wpe.forward(&pos));
        match cache {
            Some(c) => {
                c.layers.resize_with(self.h.len(), Gpt2LayerCache::default);
                for (blk, lc) in self.h.iter().zip(c.layers.iter_mut()) {
                    x = blk.step(&x, offset, Some(lc));
                }
            }
            None => {
                for blk in &self.h {
                    x = blk.step(&x, 0, None);
                }
            }
        }
        self.ln_f.forward(&x).matmul(&self.wte.weight.t())
    }

    /// Greedy decoding of `max_new` tokens after `prompt`, through the cache.
    pub fn generate_greedy(&self, prompt: &[u32], max_new: usize) -> Vec<u32> {
        with_no_grad(|| {
            let dev = self.wte.weight.device();
            let ids = |v: &[u32]| {
                Tensor::from_vec(v.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, v.len()])
                    .to_device(dev)
                    .expect("a device")
            };
            let mut cache = Gpt2Cache::default();
            let (mut out, mut next) = (Vec::new(), prompt.to_vec());
            for _ in 0..max_new {
                let logits = self.run(&ids(&next), Some(&mut cache));
                let tok = logits.select(1, logits.dims()[1] - 1).argmax(-1, false).to_vec::<i64>()[0] as u32;
                out.push(tok);
                next = vec![tok];
            }
            out
        })
    }
}
