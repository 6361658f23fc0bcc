//! The Llama architecture (SmolLM2, Llama 2/3, …) loaded from a GGUF file
//! or a Hugging Face folder: RMSNorm, rotary position embeddings with the
//! checkpoint's base, grouped-query attention, a SwiGLU feed-forward layer,
//! a tied or separate output head, padding masks, and a KV cache for
//! generation.
//!
//! Names follow Hugging Face's `LlamaModel` (`layers.0.self_attn.q_proj`, …).
//! The GGUF tensors load under them (`blk.0.attn_q` → `layers.0.self_attn.q_proj`).
//! llama.cpp's converter stores each head's query and key rows in the order
//! of its rotary pairs (dims `2i` and `2i + 1` rotate together), so the
//! rotation here turns adjacent pairs. Hugging Face's checkpoints rotate
//! dim `i` with dim `i + d/2` instead; [`Llama::from_pretrained`] reorders
//! their query and key rows into pairs on load, as llama.cpp's converter
//! does. Attention scores do not depend on the order of a head's dims as
//! long as queries and keys share it, so the logits equal those of Hugging
//! Face's layout.

use crate::gguf::GgufFile;
use crate::hub::{Config, load_checkpoint, normalize_names};
use crate::{PretrainedError, Result};
use firebrand_autograd::{AttentionOptions, Tensor, with_no_grad};
use firebrand_nn::serialize::plan_load;
use firebrand_nn::{Embedding, Init, Linear, Module, ModuleExt, RMSNorm};
use firebrand_ops::gemm::blocks::BlockWeight;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// The sizes of a Llama checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Token embeddings.
    pub vocab_size: usize,
    /// Width.
    pub hidden_size: usize,
    /// Blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention; divides the query heads).
    pub num_key_value_heads: usize,
    /// Width of the SwiGLU layer.
    pub intermediate_size: usize,
    /// RMSNorm's epsilon.
    pub rms_norm_eps: f32,
    /// The rotary embedding's base.
    pub rope_theta: f32,
    /// Positions trained for.
    pub max_position_embeddings: usize,
}

impl LlamaConfig {
    /// The `llama.*` metadata of a GGUF file.
    ///
    /// # Errors
    /// Another architecture, or a missing or mistyped key (named).
    pub fn from_gguf(g: &GgufFile) -> Result<LlamaConfig> {
        let arch = g.architecture().unwrap_or("");
        if arch != "llama" {
            return Err(PretrainedError::Architecture {
                path: g.path().to_path_buf(),
                found: arch.into(),
                expected: "a Llama (general.architecture \"llama\")",
            });
        }
        let f = |k: &str, d: f64| g.get(k).and_then(|v| v.as_f64()).unwrap_or(d) as f32;
        let heads = g.usize("llama.attention.head_count")?;
        let cfg = LlamaConfig {
            vocab_size: match g.usize("llama.vocab_size") {
                Ok(v) => v,
                Err(_) => g.get("tokenizer.ggml.tokens").and_then(|t| t.as_array()).map(|t| t.len()).unwrap_or(0),
            },
            hidden_size: g.usize("llama.embedding_length")?,
            num_hidden_layers: g.usize("llama.block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: g.usize("llama.attention.head_count_kv").unwrap_or(heads),
            intermediate_size: g.usize("llama.feed_forward_length")?,
            rms_norm_eps: f("llama.attention.layer_norm_rms_epsilon", 1e-5),
            rope_theta: f("llama.rope.freq_base", 10000.0),
            max_position_embeddings: g.usize("llama.context_length").unwrap_or(2048),
        };
        let bad = |m: String| PretrainedError::Gguf { path: g.path().to_path_buf(), tensor: None, msg: m };
        if heads == 0 || cfg.num_key_value_heads == 0 || !heads.is_multiple_of(cfg.num_key_value_heads) {
            return Err(bad(format!("{} key/value heads do not divide {heads} heads", cfg.num_key_value_heads)));
        }
        if !cfg.hidden_size.is_multiple_of(2 * heads) {
            return Err(bad(format!("width {} is not an even multiple of {heads} heads", cfg.hidden_size)));
        }
        Ok(cfg)
    }

    /// A Hugging Face `config.json` with `model_type` `"llama"`. The rotary base is
    /// `rope_theta` or, in `transformers` 5's layout,
    /// `rope_parameters.rope_theta`.
    ///
    /// # Errors
    /// Another `model_type`; a missing or mistyped field; a `head_dim` other
    /// than `hidden_size / num_attention_heads`, a rotary scaling other than
    /// the default, attention or MLP biases: features this model lacks,
    /// each named rather than run wrongly.
    pub fn from_config(c: &Config) -> Result<LlamaConfig> {
        c.expect_model_type(&["llama"], "a Llama (model_type \"llama\")")?;
        let bad = |field: &str, msg: String| PretrainedError::Config { path: c.path.clone(), field: field.into(), msg };
        let heads = c.usize("num_attention_heads")?;
        let params = c.json.get("rope_parameters").filter(|v| !v.is_null());
        let scaling = c.json.get("rope_scaling").filter(|v| !v.is_null());
        for (field, p) in [("rope_parameters", params), ("rope_scaling", scaling)] {
            let kind = p.and_then(|p| p.get("rope_type").or_else(|| p.get("type"))).and_then(|t| t.as_str());
            if let Some(kind) = kind.filter(|k| *k != "default") {
                return Err(bad(field, format!("rotary scaling {kind:?} is not supported (only \"default\")")));
            }
        }
        let theta = match params.and_then(|p| p.get("rope_theta")) {
            Some(v) => {
                v.as_f64().ok_or_else(|| bad("rope_parameters.rope_theta", format!("must be a number, got {v}")))?
            }
            None => c.f64_or("rope_theta", 10000.0)?,
        };
        for flag in ["attention_bias", "mlp_bias"] {
            if c.json.get(flag).and_then(|v| v.as_bool()) == Some(true) {
                return Err(bad(flag, "biases are not supported".into()));
            }
        }
        let act = c.str_or("hidden_act", "silu")?;
        if act != "silu" {
            return Err(bad("hidden_act", format!("{act:?} is not supported (only \"silu\")")));
        }
        let cfg = LlamaConfig {
            vocab_size: c.usize("vocab_size")?,
            hidden_size: c.usize("hidden_size")?,
            num_hidden_layers: c.usize("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: c.usize_or("num_key_value_heads", heads)?,
            intermediate_size: c.usize("intermediate_size")?,
            rms_norm_eps: c.f64_or("rms_norm_eps", 1e-6)? as f32,
            rope_theta: theta as f32,
            max_position_embeddings: c.usize_or("max_position_embeddings", 2048)?,
        };
        if heads == 0 || cfg.num_key_value_heads == 0 || !heads.is_multiple_of(cfg.num_key_value_heads) {
            let msg = format!("{} key/value heads do not divide {heads} heads", cfg.num_key_value_heads);
            return Err(bad("num_key_value_heads", msg));
        }
        if !cfg.hidden_size.is_multiple_of(2 * heads) {
            return Err(bad(
                "num_attention_heads",
                format!("width {} is not an even multiple of {heads} heads", cfg.hidden_size),
            ));
        }
        let hd = c.usize_or("head_dim", cfg.head_dim())?;
        if hd != cfg.head_dim() {
            return Err(bad(
                "head_dim",
                format!("{hd} differs from hidden_size / num_attention_heads = {}", cfg.head_dim()),
            ));
        }
        Ok(cfg)
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

fn linear(i: usize, o: usize, init: Init) -> Linear {
    Linear::with_init(i, o, init, None)
}

/// Grouped-query self-attention with rotary positions.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = forward_plain)]
pub struct LlamaAttention {
    /// `(heads·d, H)`.
    pub q_proj: Linear,
    /// `(kv_heads·d, H)`.
    pub k_proj: Linear,
    /// `(kv_heads·d, H)`.
    pub v_proj: Linear,
    /// `(H, heads·d)`.
    pub o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    theta: f32,
    /// q, k and v stacked into one block weight, when all three have one.
    #[module(skip)]
    qkv: FusedBlocks,
}

/// One layer's cached keys and values: buffers `(B, capacity, kv_heads, d)`
/// (positions major, so a new position's keys are one contiguous write)
/// whose first `len` positions are filled. The buffers grow by doubling, so
/// a step copies only its own keys and values, not the whole cache.
#[derive(Debug, Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

impl Clone for LayerCache {
    /// A copy that owns its buffers: appending to either leaves the other as it was.
    fn clone(&self) -> Self {
        let own = |t: &Option<Tensor>| {
            t.as_ref().map(|t| {
                let c = Tensor::zeros_like(t);
                c.copy_(t).expect("same shape");
                c
            })
        };
        LayerCache { k: own(&self.k), v: own(&self.v), len: self.len }
    }
}

impl LayerCache {
    /// Appends `k`, `v` `(B, T, kv_heads, d)` and returns every cached
    /// position's `(B, kv_heads, S, d)`, views of the buffers.
    fn append(&mut self, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let (b, t) = (k.dims()[0], k.dims()[1]);
        let need = self.len + t;
        let heads_major = |x: &Tensor| x.permute(&[0, 2, 1, 3]);
        if !k.device().is_cpu() {
            // A device has no in-place strided writes: the cache grows by concatenation.
            let cat = |old: &Option<Tensor>, new: &Tensor| match old {
                Some(o) => Tensor::cat(&[o, new], 1),
                None => new.contiguous(),
            };
            (self.k, self.v) = (Some(cat(&self.k, k)), Some(cat(&self.v, v)));
            self.len = need;
            return (heads_major(self.k.as_ref().expect("set")), heads_major(self.v.as_ref().expect("set")));
        }
        let fits = self.k.as_ref().is_some_and(|buf| buf.dims()[0] == b && buf.dims()[1] >= need);
        if !fits {
            let cap = need.next_power_of_two().max(256);
            let grow = |old: &Option<Tensor>, like: &Tensor| {
                let d = like.dims();
                let buf = Tensor::zeros([b, cap, d[2], d[3]]);
                if let Some(o) = old
                    && self.len > 0
                {
                    buf.narrow(1, 0, self.len).copy_(&o.narrow(1, 0, self.len)).expect("same shape");
                }
                buf
            };
            (self.k, self.v) = (Some(grow(&self.k, k)), Some(grow(&self.v, v)));
        }
        let (kb, vb) = (self.k.as_ref().expect("set"), self.v.as_ref().expect("set"));
        kb.narrow(1, self.len, t).copy_(k).expect("the cache's shape");
        vb.narrow(1, self.len, t).copy_(v).expect("the cache's shape");
        self.len = need;
        (heads_major(&kb.narrow(1, 0, need)), heads_major(&vb.narrow(1, 0, need)))
    }
}

/// The keys and values of the positions seen so far, per layer, so that a
/// generation step runs the new token only.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
}

impl KvCache {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The rotary tables `cos`, `sin` `(1, T, 1, d/2)` of positions
/// `offset..offset + t` for head dim `d`, on `dev` (one pair per forward
/// pass, shared by every layer's queries and keys).
fn rope_tables(offset: usize, t: usize, d: usize, theta: f32, dev: firebrand_autograd::Device) -> (Tensor, Tensor) {
    let half = d / 2;
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for p in offset..offset + t {
        for i in 0..half {
            let freq = (theta as f64).powf(-2.0 * i as f64 / d as f64);
            let a = p as f64 * freq;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    let table = |v: Vec<f32>| Tensor::from_vec(v, [1, t, 1, half]).to_device(dev).expect("a device");
    (table(cos), table(sin))
}

impl LlamaAttention {
    fn forward_plain(&self, x: &Tensor) -> Tensor {
        let d = x.dims()[2] / self.heads;
        self.attend(x, 0, &rope_tables(0, x.dims()[1], d, self.theta, x.device()), None, None)
    }

    /// `pad` `(B, S)`: non-zero where a key (cached or new) is padding.
    fn attend(
        &self,
        x: &Tensor,
        offset: usize,
        tables: &(Tensor, Tensor),
        pad: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor {
        let (b, t, hid) = (x.dims()[0], x.dims()[1], x.dims()[2]);
        let (h, kv) = (self.heads, self.kv_heads);
        let d = hid / h;
        let (q, k, v) = match self.qkv.product(x, &[&self.q_proj, &self.k_proj, &self.v_proj]) {
            Some(y) => (y.narrow(2, 0, hid), y.narrow(2, hid, kv * d), y.narrow(2, hid + kv * d, kv * d)),
            None => (self.q_proj.forward(x), self.k_proj.forward(x), self.v_proj.forward(x)),
        };
        // Rotated by position in adjacent pairs.
        let (cos, sin) = tables;
        let q = q.reshape([b, t, h, d]).rope_pairs(cos, sin).permute(&[0, 2, 1, 3]);
        let k = k.reshape([b, t, kv, d]).rope_pairs(cos, sin); // (B, T, kv, d)
        let v = v.reshape([b, t, kv, d]);
        let (k, v) = match cache {
            Some(c) => c.append(&k, &v), // (B, kv, S, d)
            None => (k.permute(&[0, 2, 1, 3]), v.permute(&[0, 2, 1, 3])),
        };
        let opts = AttentionOptions { causal: Some(offset), key_padding_mask: pad, ..Default::default() };
        if t == 1 && kv < h {
            // One new position (a generation step) sees every key, so a key/value
            // head's `h / kv` query heads are rows of one attention against it:
            // (B, kv, h/kv, d), without repeating the cached keys and values.
            let y = q.reshape([b, kv, h / kv, d]).scaled_dot_product_attention(&k, &v, &opts);
            return self.o_proj.forward(&y.reshape([b, 1, hid]));
        }
        // Each key/value head serves `h / kv` consecutive query heads.
        let s = k.dims()[2];
        let group = |y: &Tensor| {
            if kv == h { y.clone() } else { y.unsqueeze(2).broadcast_to([b, kv, h / kv, s, d]).reshape([b, h, s, d]) }
        };
        let y = q.scaled_dot_product_attention(&group(&k), &group(&v), &opts); // (B, heads, T, d)
        self.o_proj.forward(&y.permute(&[0, 2, 1, 3]).reshape([b, t, hid]))
    }
}

/// The SwiGLU feed-forward layer: `down(silu(gate(x)) · up(x))`.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = swiglu)]
pub struct LlamaMlp {
    /// `(I, H)`.
    pub gate_proj: Linear,
    /// `(I, H)`.
    pub up_proj: Linear,
    /// `(H, I)`.
    pub down_proj: Linear,
    /// gate and up stacked into one block weight, when both have one.
    #[module(skip)]
    gate_up: FusedBlocks,
}

impl LlamaMlp {
    fn swiglu(&self, x: &Tensor) -> Tensor {
        if let Some(y) = self.gate_up.product(x, &[&self.gate_proj, &self.up_proj]) {
            let i = self.gate_proj.out_features();
            let last = -1;
            return self.down_proj.forward(&y.narrow(last, 0, i).silu().mul(&y.narrow(last, i, i)));
        }
        self.down_proj.forward(&self.gate_proj.forward(x).silu().mul(&self.up_proj.forward(x)))
    }
}

/// One pre-norm block.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = forward_plain)]
pub struct LlamaLayer {
    /// Before attention.
    pub input_layernorm: RMSNorm,
    /// Attention.
    pub self_attn: LlamaAttention,
    /// Before the feed-forward layer.
    pub post_attention_layernorm: RMSNorm,
    /// Feed-forward layer.
    pub mlp: LlamaMlp,
}

impl LlamaLayer {
    fn forward_plain(&self, x: &Tensor) -> Tensor {
        let d = x.dims()[2] / self.self_attn.heads;
        self.step(x, 0, &rope_tables(0, x.dims()[1], d, self.self_attn.theta, x.device()), None, None)
    }

    fn step(
        &self,
        x: &Tensor,
        offset: usize,
        tables: &(Tensor, Tensor),
        pad: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor {
        let h = x.add(&self.self_attn.attend(&self.input_layernorm.forward(x), offset, tables, pad, cache));
        h.add(&self.mlp.forward(&self.post_attention_layernorm.forward(&h)))
    }
}

/// Projections of one input stacked into one block product: built when
/// every projection has a block form of one format (no bias, no
/// activation), rebuilt when those forms change.
#[derive(Debug, Default)]
struct FusedBlocks(firebrand_nn::quantize::StackedCache<BlockWeight>);

impl FusedBlocks {
    /// `x · [w₁; w₂; …]ᵀ` `(…, Σ n)` on the stacked blocks, or `None`
    /// (the caller runs the layers one by one) when a layer has no block
    /// form or gradients are recorded.
    fn product(&self, x: &Tensor, layers: &[&Linear]) -> Option<Tensor> {
        let weights: Vec<&Tensor> = layers.iter().map(|l| &l.weight).collect();
        if !firebrand_nn::quantize::may_compute_quantized(x, &weights)
            || layers.iter().any(|l| l.bias.is_some() || l.activation().is_some())
        {
            return None;
        }
        let parts: Vec<Arc<BlockWeight>> = layers.iter().map(|l| l.block_weight()).collect::<Option<_>>()?;
        let w = self.0.get_or_stack(parts, BlockWeight::concat)?;
        Some(firebrand_nn::quantize::linear_blocks(x, &w, None, None))
    }
}

/// A block weight's shape against the layer's, as a typed error.
fn check_block_shape(g: &GgufFile, name: &str, w: &BlockWeight, n: usize, k: usize) -> Result<()> {
    if (w.n, w.k) == (n, k) {
        return Ok(());
    }
    Err(PretrainedError::Gguf {
        path: g.path().to_path_buf(),
        tensor: Some(name.into()),
        msg: format!("shape ({}, {}) where the model has ({n}, {k})", w.n, w.k),
    })
}

/// A Llama causal language model.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = logits, describe = describe_llama)]
pub struct Llama {
    /// `(vocab, H)`.
    pub embed_tokens: Embedding,
    /// The blocks.
    pub layers: Vec<LlamaLayer>,
    /// The final norm.
    pub norm: RMSNorm,
    /// The output head `(vocab, H)`; `None` when tied to the embeddings.
    pub lm_head: Option<Linear>,
    #[module(skip)]
    config: LlamaConfig,
    /// The tied head in a block format, used at inference when set.
    #[module(skip)]
    head_blocks: RwLock<Option<Arc<BlockWeight>>>,
}

/// A projection's rows `(heads·d, H)` from Hugging Face's rotate-half
/// order (row `i` of a head turns with row `i + d/2`) into rotary pairs
/// (rows `2i` and `2i + 1`): llama.cpp's `permute`. A weight whose rows are
/// not a whole number of heads is left for the loader's shape check.
fn rotate_half_rows_to_pairs(w: &Tensor, d: usize) -> Tensor {
    let (rows, cols) = (w.dims()[0], w.dims()[1]);
    if d < 2 || !rows.is_multiple_of(d) {
        return w.clone();
    }
    // (heads, 2, d/2, H) → (heads, d/2, 2, H)
    w.reshape([rows / d, 2, d / 2, cols]).permute(&[0, 2, 1, 3]).reshape([rows, cols]).contiguous()
}

/// GGUF's tensor names in Hugging Face's (`blk.3.attn_q.weight` → `layers.3.self_attn.q_proj.weight`).
fn hf_name(gguf: &str) -> String {
    let fixed = [
        ("token_embd.weight", "embed_tokens.weight"),
        ("output_norm.weight", "norm.weight"),
        ("output.weight", "lm_head.weight"),
    ];
    if let Some((_, hf)) = fixed.iter().find(|(g, _)| *g == gguf) {
        return hf.to_string();
    }
    let Some(rest) = gguf.strip_prefix("blk.") else { return gguf.to_string() };
    let Some((n, part)) = rest.split_once('.') else { return gguf.to_string() };
    let parts = [
        ("attn_norm.", "input_layernorm."),
        ("attn_q.", "self_attn.q_proj."),
        ("attn_k.", "self_attn.k_proj."),
        ("attn_v.", "self_attn.v_proj."),
        ("attn_output.", "self_attn.o_proj."),
        ("ffn_norm.", "post_attention_layernorm."),
        ("ffn_gate.", "mlp.gate_proj."),
        ("ffn_up.", "mlp.up_proj."),
        ("ffn_down.", "mlp.down_proj."),
    ];
    match parts.iter().find_map(|(g, hf)| part.strip_prefix(g).map(|tail| format!("{hf}{tail}"))) {
        Some(p) => format!("layers.{n}.{p}"),
        None => gguf.to_string(),
    }
}

impl Llama {
    /// A randomly initialized model (`N(0, 0.02)` weights, unit norms),
    /// with an output head of its own unless `tied`.
    pub fn new(config: &LlamaConfig, tied: bool) -> Llama {
        Llama::with_init(config, tied, Init::Normal(0.0, 0.02))
    }

    /// The architecture with every weight from `init`; the loaders build it
    /// with zeros, which every tensor of a strict load then replaces (drawing
    /// 134M normal samples only to overwrite them took seconds).
    fn with_init(config: &LlamaConfig, tied: bool, init: Init) -> Llama {
        let linear = |i, o| linear(i, o, init);
        let (hid, d) = (config.hidden_size, config.head_dim());
        let kv = config.num_key_value_heads * d;
        let norm = || RMSNorm::new(hid).eps(config.rms_norm_eps);
        let layer = || LlamaLayer {
            input_layernorm: norm(),
            self_attn: LlamaAttention {
                q_proj: linear(hid, hid),
                k_proj: linear(hid, kv),
                v_proj: linear(hid, kv),
                o_proj: linear(hid, hid),
                heads: config.num_attention_heads,
                kv_heads: config.num_key_value_heads,
                theta: config.rope_theta,
                qkv: FusedBlocks::default(),
            },
            post_attention_layernorm: norm(),
            mlp: LlamaMlp {
                gate_proj: linear(hid, config.intermediate_size),
                up_proj: linear(hid, config.intermediate_size),
                down_proj: linear(config.intermediate_size, hid),
                gate_up: FusedBlocks::default(),
            },
        };
        Llama {
            embed_tokens: Embedding::with_init(config.vocab_size, hid, init),
            layers: (0..config.num_hidden_layers).map(|_| layer()).collect(),
            norm: norm(),
            lm_head: (!tied).then(|| linear(hid, config.vocab_size)),
            config: config.clone(),
            head_blocks: RwLock::new(None),
        }
    }

    /// Every projection (and the head) by its GGUF name.
    fn linears_by_gguf_name(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let a = &l.self_attn;
            let m = &l.mlp;
            for (part, lin) in [
                ("attn_q", &a.q_proj),
                ("attn_k", &a.k_proj),
                ("attn_v", &a.v_proj),
                ("attn_output", &a.o_proj),
                ("ffn_gate", &m.gate_proj),
                ("ffn_up", &m.up_proj),
                ("ffn_down", &m.down_proj),
            ] {
                out.push((format!("blk.{i}.{part}.weight"), lin));
            }
        }
        if let Some(h) = &self.lm_head {
            out.push(("output.weight".to_string(), h));
        }
        out
    }

    /// Makes inference compute on the file's own quantized blocks: every
    /// projection whose weight `g` holds in a block format (`Q4_0`, `Q4_1`,
    /// `Q8_0`), and the tied head when `token_embd.weight` is one, gets
    /// that block form, the bytes as the file holds them; activations are
    /// quantized on the fly per row to `i16`
    /// (`firebrand_ops::gemm::blocks`). The `f32` weights stay for training
    /// and saving. Returns how many weights took a block form.
    ///
    /// # Errors
    /// A tensor whose data does not fill its blocks, or whose shape is not
    /// the layer's (naming the file and tensor).
    pub fn load_gguf_blocks(&self, g: &GgufFile) -> Result<usize> {
        let mut count = 0;
        for (name, lin) in self.linears_by_gguf_name() {
            if g.info(&name).is_none() {
                continue;
            }
            if let Some(w) = g.block_weight(&name)? {
                check_block_shape(g, &name, &w, lin.out_features(), lin.in_features())?;
                lin.set_block_weight(Some(Arc::new(w)));
                count += 1;
            }
        }
        if self.lm_head.is_none()
            && g.info("token_embd.weight").is_some()
            && let Some(w) = g.block_weight("token_embd.weight")?
        {
            check_block_shape(g, "token_embd.weight", &w, self.config.vocab_size, self.config.hidden_size)?;
            *self.head_blocks.write().expect("not poisoned") = Some(Arc::new(w));
            count += 1;
        }
        Ok(count)
    }

    /// [`from_gguf`](Self::from_gguf), then
    /// [`load_gguf_blocks`](Self::load_gguf_blocks): a model whose
    /// inference runs on the file's quantized blocks.
    ///
    /// # Errors
    /// As both.
    pub fn from_gguf_quantized(g: &GgufFile) -> Result<Llama> {
        let model = Llama::from_gguf(g)?;
        model.load_gguf_blocks(g)?;
        Ok(model)
    }

    /// Takes every block form off again (inference back on the `f32` weights).
    pub fn clear_blocks(&self) {
        firebrand_nn::quantize::dequantize(self);
        *self.head_blocks.write().expect("not poisoned") = None;
        for l in &self.layers {
            l.self_attn.qkv.0.clear();
            l.mlp.gate_up.0.clear();
        }
    }

    /// Loads a GGUF Llama: its config from the metadata, its tensors
    /// dequantized to `f32` under Hugging Face's names (the head tied to the
    /// embeddings when the file has no `output.weight`). In evaluation mode.
    ///
    /// # Errors
    /// Another architecture, a missing key or tensor, a shape mismatch, a
    /// tensor type this build does not read: each names the file and the key or tensor.
    pub fn from_gguf(g: &GgufFile) -> Result<Llama> {
        let config = LlamaConfig::from_gguf(g)?;
        let tensors: BTreeMap<String, Tensor> = g.load_all()?.into_iter().map(|(n, t)| (hf_name(&n), t)).collect();
        let tied = !tensors.contains_key("lm_head.weight");
        let mut model = Llama::with_init(&config, tied, Init::Zeros);
        let plan = plan_load(&model.state_dict(), tensors, g.path(), true)?;
        with_no_grad(|| plan.apply());
        model.set_training(false);
        Ok(model)
    }

    /// Loads a Hugging Face `LlamaForCausalLM` folder (`config.json`, and
    /// `model.safetensors` or its sharded index; the `model.` prefix
    /// dropped; the head tied to the embeddings when `tie_word_embeddings`
    /// is set or the file has no `lm_head.weight`). Query and key rows are
    /// reordered from Hugging Face's rotate-half layout into rotary pairs.
    /// In evaluation mode.
    ///
    /// # Errors
    /// A bad config (named field), missing or corrupt weights, a missing or
    /// unexpected tensor, a shape mismatch.
    pub fn from_pretrained(dir: impl AsRef<Path>) -> Result<Llama> {
        let dir = dir.as_ref();
        let cfg_file = Config::read(dir)?;
        let config = LlamaConfig::from_config(&cfg_file)?;
        let mut tensors = normalize_names(load_checkpoint(dir)?, &["model."]);
        let tied_flag = cfg_file.json.get("tie_word_embeddings").and_then(|v| v.as_bool());
        if tied_flag == Some(true) {
            tensors.remove("lm_head.weight");
        }
        // Precomputed rotary tables that older checkpoints save.
        tensors.retain(|n, _| !n.ends_with("rotary_emb.inv_freq"));
        let d = config.head_dim();
        for (name, t) in tensors.iter_mut() {
            if (name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight")) && t.rank() == 2 {
                *t = rotate_half_rows_to_pairs(t, d);
            }
        }
        let tied = !tensors.contains_key("lm_head.weight");
        let mut model = Llama::with_init(&config, tied, Init::Zeros);
        let file = if dir.join("model.safetensors").is_file() {
            dir.join("model.safetensors")
        } else {
            dir.join("model.safetensors.index.json")
        };
        let plan = plan_load(&model.state_dict(), tensors, &file, true)?;
        with_no_grad(|| plan.apply());
        model.set_training(false);
        Ok(model)
    }

    /// The config it was built from.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn describe_llama(&self) -> String {
        let c = &self.config;
        format!(
            "Llama({} blocks, {} wide, {} heads, {} key/value heads)",
            c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads
        )
    }

    /// Logits `(B, T, vocab)` of ids `(B, T)`, all positions, no cache.
    pub fn logits(&self, ids: &Tensor) -> Tensor {
        self.run(ids, None)
    }

    /// Logits `(B, T, vocab)` of ids `(B, T)` that follow the cached
    /// positions (`cache` grows by `T`; `None`: positions from 0, nothing kept).
    pub fn run(&self, ids: &Tensor, cache: Option<&mut KvCache>) -> Tensor {
        self.run_masked(ids, None, cache)
    }

    /// [`run`](Self::run) with Hugging Face's `attention_mask` `(B, S)`
    /// over the cached and the new positions: 1 where a token is real, 0
    /// where it is padding, which no position attends to. Positions still
    /// count from the start of the cache, as `transformers` does when no
    /// `position_ids` are given. A query whose keys are all padding (a
    /// left-padded sequence's first positions) gets zeros from attention;
    /// its logits are meaningless, as in `transformers`.
    ///
    /// # Panics
    /// When the mask is not `(B, cached + T)`.
    pub fn run_masked(&self, ids: &Tensor, attention_mask: Option<&Tensor>, cache: Option<&mut KvCache>) -> Tensor {
        let mut x = self.embed_tokens.forward(ids);
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let pad = attention_mask.map(|m| {
            let want = [ids.dims()[0], offset + ids.dims()[1]];
            assert!(
                m.dims() == want,
                "Llama::run_masked: attention_mask {:?} does not match (batch, cached + new positions) {want:?}",
                m.dims()
            );
            m.to_dtype(firebrand_autograd::DType::F32).affine(-1.0, 1.0)
        });
        let pad = pad.as_ref();
        let c = &self.config;
        let tables = rope_tables(offset, ids.dims()[1], c.head_dim(), c.rope_theta, x.device());
        match cache {
            Some(cache) => {
                cache.layers.resize_with(self.layers.len(), LayerCache::default);
                for (l, lc) in self.layers.iter().zip(cache.layers.iter_mut()) {
                    x = l.step(&x, offset, &tables, pad, Some(lc));
                }
            }
            None => {
                for l in &self.layers {
                    x = l.step(&x, 0, &tables, pad, None);
                }
            }
        }
        let x = self.norm.forward(&x);
        match &self.lm_head {
            Some(h) => h.forward(&x),
            None => {
                let blocks = self.head_blocks.read().expect("not poisoned").clone();
                match blocks {
                    Some(w) if firebrand_nn::quantize::may_compute_quantized(&x, &[&self.embed_tokens.weight]) => {
                        firebrand_nn::quantize::linear_blocks(&x, &w, None, None)
                    }
                    _ => x.matmul(&self.embed_tokens.weight.t()),
                }
            }
        }
    }

    /// Greedy decoding: `max_new` tokens after `prompt`, with the KV cache
    /// (the prompt in one pass, then one token a step), stopping after
    /// `eos` when given.
    pub fn generate_greedy(&self, prompt: &[u32], max_new: usize, eos: Option<u32>) -> Vec<u32> {
        with_no_grad(|| {
            let mut cache = KvCache::default();
            let dev = self.embed_tokens.weight.device();
            let ids = |v: &[u32]| {
                Tensor::from_vec(v.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, v.len()])
                    .to_device(dev)
                    .expect("a device")
            };
            let mut out = Vec::new();
            let mut next = prompt.to_vec();
            for _ in 0..max_new {
                let logits = self.run(&ids(&next), Some(&mut cache));
                let t = logits.dims()[1];
                let tok = logits.select(1, t - 1).argmax(-1, false).to_vec::<i64>()[0] as u32;
                out.push(tok);
                if Some(tok) == eos {
                    break;
                }
                next = vec![tok];
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Llama {
        firebrand_autograd::manual_seed(11);
        let c = LlamaConfig {
            vocab_size: 50,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            intermediate_size: 48,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 1024,
        };
        let mut m = Llama::new(&c, true);
        m.set_training(false);
        m
    }

    fn ids(v: &[i64]) -> Tensor {
        Tensor::from_vec(v.to_vec(), [1, v.len()])
    }

    /// Decoding one token at a time past the cache's first capacity (256,
    /// then it doubles) gives the full pass's logits at the last position;
    /// a cloned cache continues on its own, leaving the original as it was.
    #[test]
    fn the_cache_grows_past_its_capacity_and_clones_independently() {
        let m = tiny();
        let seq: Vec<i64> = (0..300).map(|i| (i * 7 + 3) % 50).collect();
        with_no_grad(|| {
            let full = m.logits(&ids(&seq)).to_vec::<f32>();
            let v = 50;
            let mut cache = KvCache::default();
            let _ = m.run(&ids(&seq[..100]), Some(&mut cache));
            let mut last = Vec::new();
            for &id in &seq[100..] {
                last = m.run(&ids(&[id]), Some(&mut cache)).to_vec::<f32>();
            }
            assert_eq!(cache.len(), 300);
            let want = &full[299 * v..];
            let diff = last.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(diff < 1e-4, "cached vs full after 300 positions: {diff}");
            // A clone continues with another token; the original is untouched.
            let mut other = cache.clone();
            let a = m.run(&ids(&[5]), Some(&mut other)).to_vec::<f32>();
            let b = m.run(&ids(&[9]), Some(&mut cache)).to_vec::<f32>();
            let mut with9 = seq.clone();
            with9.push(9);
            let want9 = &m.logits(&ids(&with9)).to_vec::<f32>()[300 * v..];
            let d9 = b.iter().zip(want9).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(d9 < 1e-4, "the original cache after its clone took another token: {d9}");
            assert_ne!(a, b);
            // And the clone still holds its own token 5 at position 300.
            let c = m.run(&ids(&[1]), Some(&mut other)).to_vec::<f32>();
            let mut with5 = seq.clone();
            with5.extend([5, 1]);
            let want5 = &m.logits(&ids(&with5)).to_vec::<f32>()[301 * v..];
            let d5 = c.iter().zip(want5).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(d5 < 1e-4, "the clone after the original took another token: {d5}");
        });
    }
}
