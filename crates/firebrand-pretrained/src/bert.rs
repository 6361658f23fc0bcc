//! Hugging Face's `BertModel`, from Firebrand's layers, under its tensor
//! names (`embeddings.word_embeddings.weight`,
//! `encoder.layer.0.attention.self.query.weight`, …) so that a checkpoint
//! loads by name.
//!
//! Post-norm blocks: `x = LayerNorm(x + Dropout(Attention(x)))`, then
//! `x = LayerNorm(x + Dropout(W₂·act(W₁·x)))`, with the config's activation
//! (erf GELU for BERT) and LayerNorm eps. The attention mask `(B, T)` (1 for
//! a token, 0 for padding) keeps padded keys out of every query's softmax.

use crate::hub::{Config, load_checkpoint, normalize_names};
use crate::tokenizer::Batch;
use crate::{PretrainedError, Result};
use firebrand_autograd::{AttentionOptions, DType, Tensor};
use firebrand_nn::serialize::{LoadReport, plan_load};
use firebrand_nn::{Activation, Dropout, Embedding, Init, LayerNorm, Linear, Module, ModuleExt};
use firebrand_ops::gemm::int8::QuantizedWeight;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// The sizes and settings of a BERT checkpoint (`config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// Token embeddings.
    pub vocab_size: usize,
    /// Width `H`.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads (`H` divisible by it).
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// The feed-forward activation (`gelu`: erf GELU; `gelu_new`/`gelu_pytorch_tanh`: tanh GELU; `relu`).
    pub hidden_act: Activation,
    /// Learned positions.
    pub max_position_embeddings: usize,
    /// Segment embeddings.
    pub type_vocab_size: usize,
    /// LayerNorm's epsilon.
    pub layer_norm_eps: f32,
    /// Dropout on the embeddings and each block's outputs.
    pub hidden_dropout_prob: f32,
    /// Dropout on the attention weights.
    pub attention_probs_dropout_prob: f32,
    /// Standard deviation of the initialization of new weights (a head).
    pub initializer_range: f32,
}

impl BertConfig {
    /// Reads the fields of a `config.json` (Hugging Face's defaults where a
    /// field is optional).
    ///
    /// # Errors
    /// A missing or mistyped required field, an unknown activation, a width
    /// that the heads do not divide, or another `model_type`: each names the
    /// file and field.
    pub fn from_config(c: &Config) -> Result<BertConfig> {
        c.expect_model_type(&["bert"], "a BERT (model_type \"bert\")")?;
        let act = match c.str_or("hidden_act", "gelu")? {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return Err(PretrainedError::Config {
                    path: c.path.clone(),
                    field: "hidden_act".into(),
                    msg: format!("{other:?} is not one of gelu, gelu_new, gelu_pytorch_tanh, relu"),
                });
            }
        };
        let cfg = BertConfig {
            vocab_size: c.usize("vocab_size")?,
            hidden_size: c.usize("hidden_size")?,
            num_hidden_layers: c.usize("num_hidden_layers")?,
            num_attention_heads: c.usize("num_attention_heads")?,
            intermediate_size: c.usize("intermediate_size")?,
            hidden_act: act,
            max_position_embeddings: c.usize_or("max_position_embeddings", 512)?,
            type_vocab_size: c.usize_or("type_vocab_size", 2)?,
            layer_norm_eps: c.f64_or("layer_norm_eps", 1e-12)? as f32,
            hidden_dropout_prob: c.f64_or("hidden_dropout_prob", 0.1)? as f32,
            attention_probs_dropout_prob: c.f64_or("attention_probs_dropout_prob", 0.1)? as f32,
            initializer_range: c.f64_or("initializer_range", 0.02)? as f32,
        };
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(PretrainedError::Config {
                path: c.path.clone(),
                field: "num_attention_heads".into(),
                msg: format!("{} does not divide hidden_size {}", cfg.num_attention_heads, cfg.hidden_size),
            });
        }
        Ok(cfg)
    }

    fn init(&self) -> Init {
        Init::Normal(0.0, self.initializer_range)
    }

    fn linear(&self, i: usize, o: usize) -> Linear {
        Linear::with_init(i, o, self.init(), Some(Init::Zeros))
    }

    fn norm(&self) -> LayerNorm {
        LayerNorm::new(self.hidden_size).eps(self.layer_norm_eps)
    }
}

/// Token, position and segment embeddings, summed and normalized.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = forward_ids)]
pub struct BertEmbeddings {
    /// `(vocab, H)`.
    pub word_embeddings: Embedding,
    /// `(max_positions, H)`.
    pub position_embeddings: Embedding,
    /// `(type_vocab, H)`.
    pub token_type_embeddings: Embedding,
    /// The norm after the sum.
    #[module(rename = "LayerNorm")]
    pub layer_norm: LayerNorm,
    dropout: Dropout,
}

impl BertEmbeddings {
    fn new(c: &BertConfig) -> Self {
        let e = |n| Embedding::with_init(n, c.hidden_size, c.init());
        BertEmbeddings {
            word_embeddings: e(c.vocab_size),
            position_embeddings: e(c.max_position_embeddings),
            token_type_embeddings: e(c.type_vocab_size),
            layer_norm: c.norm(),
            dropout: Dropout::new(c.hidden_dropout_prob),
        }
    }

    fn forward_ids(&self, ids: &Tensor) -> Tensor {
        self.embed(ids, None)
    }

    /// `(B, T, H)` from ids `(B, T)` and segment ids (zeros when `None`).
    ///
    /// # Panics
    /// When `T` exceeds the learned positions.
    pub fn embed(&self, ids: &Tensor, token_type_ids: Option<&Tensor>) -> Tensor {
        let (b, t) = (ids.dims()[0], ids.dims()[1]);
        let max = self.position_embeddings.num_embeddings();
        assert!(t <= max, "BertEmbeddings: {t} tokens but {max} learned positions (ids {:?})", ids.dims());
        let dev = ids.device();
        let positions = Tensor::from_vec((0..t as i64).collect::<Vec<_>>(), [1, t]).to_device(dev).expect("a device");
        let mut x = self.word_embeddings.forward(ids).add(&self.position_embeddings.forward(&positions));
        x = match token_type_ids {
            Some(tt) => x.add(&self.token_type_embeddings.forward(tt)),
            // Segment 0 for every token: its one row, broadcast.
            None => {
                let zero = Tensor::from_vec(vec![0i64], [1, 1]).to_device(dev).expect("a device");
                x.add(&self.token_type_embeddings.forward(&zero))
            }
        };
        debug_assert_eq!(x.dims(), [b, t, self.word_embeddings.embedding_dim()]);
        self.dropout.forward(&self.layer_norm.forward(&x))
    }
}

/// Multi-head self-attention with separate query, key and value projections.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = forward_unmasked)]
pub struct BertSelfAttention {
    /// `(H, H)`.
    pub query: Linear,
    /// `(H, H)`.
    pub key: Linear,
    /// `(H, H)`.
    pub value: Linear,
    heads: usize,
    /// On the attention weights (applied inside the fused attention).
    dropout: Dropout,
    /// The stacked int8 q/k/v weight and the three it was made from.
    #[module(skip)]
    qkv_int8: QkvInt8Cache,
}

/// The stacked int8 q/k/v weight of a quantized attention layer, and the three it was made from.
type QkvInt8Cache = firebrand_nn::quantize::StackedCache<QuantizedWeight>;

impl BertSelfAttention {
    fn forward_unmasked(&self, x: &Tensor) -> Tensor {
        self.attend(x, None)
    }

    /// The q, k, v int8 weights stacked into one (exact: per-channel
    /// scales), when all three projections are quantized and this call
    /// records no gradient; built once per quantization (the cache holds
    /// the three weights it was made from).
    fn qkv_int8(&self) -> Option<Arc<QuantizedWeight>> {
        let parts = [self.query.int8_weight()?, self.key.int8_weight()?, self.value.int8_weight()?];
        if firebrand_autograd::is_grad_enabled() && self.query.weight.requires_grad() {
            return None;
        }
        self.qkv_int8.get_or_stack(parts.into(), |p| Some(QuantizedWeight::concat(p)))
    }

    /// `(B, T, H)` from `x` `(B, T, H)`; `key_padding` `(B, T)` is non-zero
    /// where a key is padding.
    pub fn attend(&self, x: &Tensor, key_padding: Option<&Tensor>) -> Tensor {
        let (b, t, h) = (x.dims()[0], x.dims()[1], x.dims()[2]);
        let d = h / self.heads;
        // One product for the three projections (their weights stacked,
        // `(3H, H)`): the heads are then views of its `(B, T, 3H)` output.
        let qkv = if let Some(w) = self.qkv_int8() {
            // Quantized (`quantize_dynamic`): the three int8 weights as one.
            let bias = match (&self.query.bias, &self.key.bias, &self.value.bias) {
                (Some(bq), Some(bk), Some(bv)) => Some(Tensor::cat(&[bq, bk, bv], 0)),
                _ => None,
            };
            firebrand_nn::quantize::linear_int8(x, &w, bias.as_ref(), None)
        } else {
            let (wq, wk, wv) = (&self.query.weight, &self.key.weight, &self.value.weight);
            let bias = match (&self.query.bias, &self.key.bias, &self.value.bias) {
                (Some(bq), Some(bk), Some(bv)) => Some(Tensor::cat(&[bq, bk, bv], 0)),
                _ => None,
            };
            x.linear(&Tensor::cat(&[wq, wk, wv], 0), bias.as_ref(), None)
        }; // (B, T, 3H)
        let split = |i: usize| qkv.narrow(2, i * h, h).reshape([b, t, self.heads, d]).permute(&[0, 2, 1, 3]); // (B, heads, T, d)
        let (q, k, v) = (split(0), split(1), split(2));
        let opts =
            AttentionOptions { key_padding_mask: key_padding, dropout: self.dropout.active_p(), ..Default::default() };
        q.scaled_dot_product_attention(&k, &v, &opts).permute(&[0, 2, 1, 3]).reshape([b, t, h])
    }
}

/// A projection, dropout, residual and LayerNorm (`BertSelfOutput`, `BertOutput`).
#[derive(Module)]
#[module(crate = firebrand_nn, forward = forward_self)]
pub struct BertResidual {
    /// The projection back to `H`.
    pub dense: Linear,
    /// The norm after the residual.
    #[module(rename = "LayerNorm")]
    pub layer_norm: LayerNorm,
    dropout: Dropout,
}

impl BertResidual {
    fn forward_self(&self, x: &Tensor) -> Tensor {
        self.residual(x, x)
    }

    /// `LayerNorm(input + Dropout(dense(x)))`.
    pub fn residual(&self, x: &Tensor, input: &Tensor) -> Tensor {
        self.layer_norm.forward(&self.dropout.forward(&self.dense.forward(x)).add(input))
    }
}

/// Self-attention and its output block.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = forward_unmasked)]
pub struct BertAttention {
    /// Query, key and value (`attention.self`).
    #[module(rename = "self")]
    pub self_attention: BertSelfAttention,
    /// Output projection, residual and norm.
    pub output: BertResidual,
}

impl BertAttention {
    fn forward_unmasked(&self, x: &Tensor) -> Tensor {
        self.attend(x, None)
    }

    fn attend(&self, x: &Tensor, key_padding: Option<&Tensor>) -> Tensor {
        self.output.residual(&self.self_attention.attend(x, key_padding), x)
    }
}

/// The feed-forward layer's first half: `act(W₁·x)`.
#[derive(Module)]
#[module(crate = firebrand_nn)]
pub struct BertIntermediate {
    /// `(intermediate, H)`, the activation fused.
    pub dense: Linear,
}

impl BertIntermediate {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.dense.forward(x)
    }
}

/// One encoder layer.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = forward_unmasked)]
pub struct BertLayer {
    /// Attention block.
    pub attention: BertAttention,
    /// Feed-forward first half.
    pub intermediate: BertIntermediate,
    /// Feed-forward second half, residual and norm.
    pub output: BertResidual,
}

impl BertLayer {
    fn new(c: &BertConfig) -> Self {
        let h = c.hidden_size;
        let residual = |i| BertResidual {
            dense: c.linear(i, h),
            layer_norm: c.norm(),
            dropout: Dropout::new(c.hidden_dropout_prob),
        };
        BertLayer {
            attention: BertAttention {
                self_attention: BertSelfAttention {
                    query: c.linear(h, h),
                    key: c.linear(h, h),
                    value: c.linear(h, h),
                    heads: c.num_attention_heads,
                    dropout: Dropout::new(c.attention_probs_dropout_prob),
                    qkv_int8: Default::default(),
                },
                output: residual(h),
            },
            intermediate: BertIntermediate { dense: c.linear(h, c.intermediate_size).with_activation(c.hidden_act) },
            output: residual(c.intermediate_size),
        }
    }

    fn forward_unmasked(&self, x: &Tensor) -> Tensor {
        self.layer(x, None)
    }

    /// `(B, T, H)` through the layer.
    pub fn layer(&self, x: &Tensor, key_padding: Option<&Tensor>) -> Tensor {
        let a = self.attention.attend(x, key_padding);
        self.output.residual(&self.intermediate.forward(&a), &a)
    }
}

/// The layers in order.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = forward_unmasked)]
pub struct BertEncoder {
    /// `encoder.layer.N`.
    pub layer: Vec<BertLayer>,
}

impl BertEncoder {
    fn forward_unmasked(&self, x: &Tensor) -> Tensor {
        self.layer.iter().fold(x.clone(), |x, l| l.layer(&x, None))
    }
}

/// `tanh(W·h₀)` on the first (`[CLS]`) token.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = pool)]
pub struct BertPooler {
    /// `(H, H)`, tanh fused.
    pub dense: Linear,
}

impl BertPooler {
    /// `(B, H)` from hidden states `(B, T, H)`.
    pub fn pool(&self, hidden: &Tensor) -> Tensor {
        self.dense.forward(&hidden.select(1, 0))
    }
}

/// What [`BertModel::run`] returns.
#[derive(Debug, Clone)]
pub struct BertOutput {
    /// The last layer's hidden states, `(B, T, H)`.
    pub last_hidden_state: Tensor,
    /// The pooler's output `(B, H)` when the model has a pooler.
    pub pooler_output: Option<Tensor>,
}

/// Hugging Face's `BertModel`: embeddings, encoder and (optional) pooler.
///
/// ```
/// use firebrand_pretrained::bert::{BertConfig, BertModel};
/// use firebrand_autograd::Tensor;
/// let cfg = BertConfig {
///     vocab_size: 50, hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 4,
///     intermediate_size: 32, hidden_act: firebrand_nn::Activation::Gelu, max_position_embeddings: 32,
///     type_vocab_size: 2, layer_norm_eps: 1e-12, hidden_dropout_prob: 0.0,
///     attention_probs_dropout_prob: 0.0, initializer_range: 0.02,
/// };
/// let model = BertModel::new(&cfg, true);
/// let ids = Tensor::from_vec(vec![1i64, 5, 7, 2, 1, 9, 0, 0], [2, 4]); // (B, T)
/// let mask = Tensor::from_vec(vec![1i64, 1, 1, 1, 1, 1, 0, 0], [2, 4]); // second text padded
/// let out = model.run(&ids, Some(&mask), None);
/// assert_eq!(out.last_hidden_state.dims(), &[2, 4, 16]);
/// assert_eq!(out.pooler_output.unwrap().dims(), &[2, 16]);
/// ```
#[derive(Module)]
#[module(crate = firebrand_nn, forward = forward_ids, describe = describe_bert)]
pub struct BertModel {
    /// Token, position and segment embeddings.
    pub embeddings: BertEmbeddings,
    /// The encoder layers.
    pub encoder: BertEncoder,
    /// The `[CLS]` pooler, if the checkpoint has one.
    pub pooler: Option<BertPooler>,
    #[module(skip)]
    config: BertConfig,
}

impl BertModel {
    /// A randomly initialized model (`N(0, initializer_range)` weights, zero
    /// biases, unit norms), with a pooler when `pooler`.
    pub fn new(config: &BertConfig, pooler: bool) -> Self {
        let h = config.hidden_size;
        BertModel {
            embeddings: BertEmbeddings::new(config),
            encoder: BertEncoder { layer: (0..config.num_hidden_layers).map(|_| BertLayer::new(config)).collect() },
            pooler: pooler.then(|| BertPooler { dense: config.linear(h, h).with_activation(Activation::Tanh) }),
            config: config.clone(),
        }
    }

    /// Loads a checkpoint folder (see [`crate::hub::resolve`]): its config,
    /// then its weights by name (a `bert.` prefix removed, `gamma`/`beta`
    /// read as `weight`/`bias`). A checkpoint without pooler weights gets a
    /// model without a pooler. Tensors the model does not use (a masked-LM or
    /// classification head) are listed in the report as unexpected. The
    /// model is in evaluation mode.
    ///
    /// # Errors
    /// A bad config (named field), missing or corrupt weights, a missing
    /// tensor or a shape mismatch (named tensor and file).
    pub fn from_pretrained(dir: impl AsRef<Path>) -> Result<(BertModel, LoadReport)> {
        let (model, report, _) = BertModel::load(dir.as_ref(), None)?;
        Ok((model, report))
    }

    /// [`BertModel::from_pretrained`] reading the checkpoint once for a model
    /// with a head: the tensors under `head` (`"cls."`, `"classifier."`) are
    /// set aside for the caller, by their names without the prefix, instead
    /// of being reported as unexpected.
    fn load(dir: &Path, head: Option<&str>) -> Result<(BertModel, LoadReport, BTreeMap<String, Tensor>)> {
        let config = BertConfig::from_config(&Config::read(dir)?)?;
        let mut tensors = normalize_names(load_checkpoint(dir)?, &["bert."]);
        let mut head_tensors = BTreeMap::new();
        if let Some(prefix) = head {
            let names: Vec<String> = tensors.keys().filter(|n| n.starts_with(prefix)).cloned().collect();
            for n in names {
                let t = tensors.remove(&n).expect("listed");
                head_tensors.insert(n[prefix.len()..].to_string(), t);
            }
        }
        // A buffer of position indices older checkpoints save; positions are computed.
        tensors.remove("embeddings.position_ids");
        let has_pooler = tensors.contains_key("pooler.dense.weight");
        let mut model = BertModel::new(&config, has_pooler);
        let plan = plan_load(&model.state_dict(), tensors, &dir.join("model.safetensors"), false)?;
        if let Some(name) = plan.report().missing.first() {
            let shape = model.state_dict().into_iter().find(|(n, _)| n == name).map(|(_, t)| t.dims().to_vec());
            return Err(firebrand_nn::WeightsError::Missing {
                path: dir.join("model.safetensors"),
                name: name.clone(),
                shape: shape.unwrap_or_default(),
            }
            .into());
        }
        let report = plan.apply();
        model.set_training(false);
        Ok((model, report, head_tensors))
    }

    /// The config it was built from.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    fn forward_ids(&self, ids: &Tensor) -> Tensor {
        self.run(ids, None, None).last_hidden_state
    }

    fn describe_bert(&self) -> String {
        let c = &self.config;
        format!("BertModel({} layers, {} wide, {} heads)", c.num_hidden_layers, c.hidden_size, c.num_attention_heads)
    }

    /// Runs the model on ids `(B, T)` with Hugging Face's `attention_mask`
    /// `(B, T)` (1 for a token, 0 for padding; `None`: all tokens) and
    /// segment ids (`None`: all 0).
    ///
    /// # Panics
    /// On ids that are not `(B, T)` `i64`, a mask of another shape, or more
    /// tokens than learned positions.
    pub fn run(&self, ids: &Tensor, attention_mask: Option<&Tensor>, token_type_ids: Option<&Tensor>) -> BertOutput {
        assert_eq!(ids.dims().len(), 2, "BertModel: ids must be (B, T), got {:?}", ids.dims());
        if let Some(m) = attention_mask {
            assert_eq!(m.dims(), ids.dims(), "BertModel: attention_mask {:?} for ids {:?}", m.dims(), ids.dims());
        }
        // Hugging Face's mask marks tokens; the attention op's marks padding.
        let padding = attention_mask.map(|m| m.to_dtype(DType::F32).affine(-1.0, 1.0));
        let mut x = self.embeddings.embed(ids, token_type_ids);
        for layer in &self.encoder.layer {
            x = layer.layer(&x, padding.as_ref());
        }
        let pooler_output = self.pooler.as_ref().map(|p| p.pool(&x));
        BertOutput { last_hidden_state: x, pooler_output }
    }

    /// Sentence embeddings as sentence-transformers makes them for
    /// all-MiniLM-L6-v2: the last hidden states mean-pooled over the
    /// attention mask, then L2-normalized; `(B, H)`.
    pub fn embed(&self, batch: &Batch) -> Tensor {
        let dev = self.embeddings.word_embeddings.weight.device();
        let on = |t: &Tensor| t.to_device(dev).expect("the model's device");
        let (ids, mask, tt) = (on(&batch.input_ids), on(&batch.attention_mask), on(&batch.token_type_ids));
        let hidden = self.run(&ids, Some(&mask), Some(&tt)).last_hidden_state;
        l2_normalize(&mean_pool(&hidden, &mask))
    }
}

/// Mean of `hidden` `(B, T, H)` over the tokens where `mask` `(B, T)` is
/// non-zero (sentence-transformers' mean pooling; the count clamped at 1e-9).
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Tensor {
    let (b, t) = (mask.dims()[0], mask.dims()[1]);
    let m = mask.to_dtype(hidden.dtype()).reshape([b, t, 1]);
    let count = m.sum(&[1], false).clamp(1e-9, f32::INFINITY); // (B, 1)
    hidden.mul(&m).sum(&[1], false).div(&count)
}

/// Each row `(B, H)` divided by its L2 norm (at least 1e-12, as `F.normalize`).
pub fn l2_normalize(x: &Tensor) -> Tensor {
    x.div(&x.square().sum(&[-1], true).sqrt().clamp(1e-12, f32::INFINITY))
}

/// Hugging Face's `BertForSequenceClassification`: the model (as `bert.…`),
/// dropout on the pooler's output and a linear classifier.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = forward_ids, describe = "BertForSequenceClassification")]
pub struct BertForSequenceClassification {
    /// The encoder, with a pooler.
    pub bert: BertModel,
    dropout: Dropout,
    /// `(num_labels, H)`.
    pub classifier: Linear,
}

impl BertForSequenceClassification {
    /// A `BertModel` checkpoint with a new head of `num_labels` (weights
    /// `N(0, initializer_range)`, zero bias, as Hugging Face initializes it),
    /// or a fine-tuned `BertForSequenceClassification` checkpoint with its
    /// own head when the head's shape fits. The report lists what is new
    /// (the head; a pooler, for a checkpoint without one) as missing. The
    /// model is in training mode.
    ///
    /// # Errors
    /// As [`BertModel::from_pretrained`].
    pub fn from_pretrained(dir: impl AsRef<Path>, num_labels: usize) -> Result<(Self, LoadReport)> {
        let dir = dir.as_ref();
        let (mut bert, mut report, tensors) = BertModel::load(dir, Some("classifier."))?;
        let c = bert.config().clone();
        if bert.pooler.is_none() {
            let h = c.hidden_size;
            bert.pooler = Some(BertPooler { dense: c.linear(h, h).with_activation(Activation::Tanh) });
            report.missing.extend(["pooler.dense.weight".to_string(), "pooler.dense.bias".to_string()]);
        }
        let classifier = c.linear(c.hidden_size, num_labels);
        let head: Vec<String> = ["classifier.weight", "classifier.bias"].map(String::from).to_vec();
        let fits = tensors.get("weight").is_some_and(|w| w.dims() == [num_labels, c.hidden_size]);
        if fits && let (Some(w), Some(b)) = (tensors.get("weight"), tensors.get("bias")) {
            firebrand_autograd::with_no_grad(|| {
                classifier.weight.copy_(w).expect("shape checked");
                match &classifier.bias {
                    Some(cb) => cb.copy_(b).map_err(|_| firebrand_nn::WeightsError::Shape {
                        path: dir.join("model.safetensors"),
                        name: "classifier.bias".into(),
                        found: b.dims().to_vec(),
                        expected: vec![num_labels],
                    }),
                    None => Ok(()),
                }
            })?;
        } else {
            // A head of another shape stays unread: reported, and a new one made.
            report.unexpected.extend(tensors.keys().map(|n| format!("classifier.{n}")));
            report.missing.extend(head);
        }
        let mut model =
            BertForSequenceClassification { bert, dropout: Dropout::new(c.hidden_dropout_prob), classifier };
        model.set_training(true);
        Ok((model, report))
    }

    fn forward_ids(&self, ids: &Tensor) -> Tensor {
        self.logits(ids, None, None)
    }

    /// Class scores `(B, num_labels)` for ids `(B, T)` with the attention mask
    /// and segment ids as in [`BertModel::run`].
    pub fn logits(&self, ids: &Tensor, attention_mask: Option<&Tensor>, token_type_ids: Option<&Tensor>) -> Tensor {
        let pooled = self.bert.run(ids, attention_mask, token_type_ids).pooler_output.expect("a pooler");
        self.classifier.forward(&self.dropout.forward(&pooled))
    }

    /// [`BertForSequenceClassification::logits`] of an encoded batch, moved to the model's device.
    pub fn logits_of(&self, batch: &Batch) -> Tensor {
        let dev = self.classifier.weight.device();
        let on = |t: &Tensor| t.to_device(dev).expect("the model's device");
        self.logits(&on(&batch.input_ids), Some(&on(&batch.attention_mask)), Some(&on(&batch.token_type_ids)))
    }
}

/// The masked-LM head's transform: `LayerNorm(act(W·h))`.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = transform)]
pub struct BertLmTransform {
    /// `(H, H)`, the config's activation fused.
    pub dense: Linear,
    /// The norm after it.
    #[module(rename = "LayerNorm")]
    pub layer_norm: LayerNorm,
}

impl BertLmTransform {
    fn transform(&self, h: &Tensor) -> Tensor {
        self.layer_norm.forward(&self.dense.forward(h))
    }
}

/// The masked-LM predictions: the transform, then the word embeddings
/// (tied) as the decoder, plus a bias per token.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = identity)]
pub struct BertLmPredictions {
    /// Transform before the decoder.
    pub transform: BertLmTransform,
    /// `(vocab,)`.
    pub bias: Tensor,
}

impl BertLmPredictions {
    fn identity(&self, h: &Tensor) -> Tensor {
        h.clone()
    }
}

/// The `cls` head of `BertForMaskedLM`.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = identity)]
pub struct BertMlmHead {
    /// `cls.predictions`.
    pub predictions: BertLmPredictions,
}

impl BertMlmHead {
    fn identity(&self, h: &Tensor) -> Tensor {
        h.clone()
    }
}

/// Hugging Face's `BertForMaskedLM`: the model (as `bert.…`, without a
/// pooler) and the `cls.predictions` head, its decoder tied to the word
/// embeddings.
#[derive(Module)]
#[module(crate = firebrand_nn, forward = forward_ids, describe = "BertForMaskedLM")]
pub struct BertForMaskedLM {
    /// The encoder.
    pub bert: BertModel,
    /// The masked-LM head.
    pub cls: BertMlmHead,
}

impl BertForMaskedLM {
    /// A checkpoint with its masked-LM head (`cls.predictions.*`), or a
    /// `BertModel` checkpoint with a new head (listed as missing). In
    /// evaluation mode.
    ///
    /// # Errors
    /// As [`BertModel::from_pretrained`], and a head tensor of the wrong shape.
    pub fn from_pretrained(dir: impl AsRef<Path>) -> Result<(Self, LoadReport)> {
        let dir = dir.as_ref();
        let (bert, mut report, head) = BertModel::load(dir, Some("cls."))?;
        let c = bert.config().clone();
        let mut cls = BertMlmHead {
            predictions: BertLmPredictions {
                transform: BertLmTransform {
                    dense: c.linear(c.hidden_size, c.hidden_size).with_activation(c.hidden_act),
                    layer_norm: c.norm(),
                },
                bias: Tensor::zeros([c.vocab_size]).requires_grad_(true),
            },
        };
        // The head's tensors by the head's own names; the tied decoder is not read.
        let head: BTreeMap<String, Tensor> =
            head.into_iter().filter(|(n, _)| !n.starts_with("predictions.decoder.")).collect();
        let plan = plan_load(&cls.state_dict(), head, &dir.join("model.safetensors"), false)?;
        report.missing.extend(plan.report().missing.iter().map(|n| format!("cls.{n}")));
        firebrand_autograd::with_no_grad(|| plan.apply());
        cls.set_training(false);
        Ok((BertForMaskedLM { bert, cls }, report))
    }

    fn forward_ids(&self, ids: &Tensor) -> Tensor {
        self.logits(ids, None, None)
    }

    /// Token scores `(B, T, vocab)` at every position.
    pub fn logits(&self, ids: &Tensor, attention_mask: Option<&Tensor>, token_type_ids: Option<&Tensor>) -> Tensor {
        let h = self.bert.run(ids, attention_mask, token_type_ids).last_hidden_state;
        let p = &self.cls.predictions;
        p.transform.transform(&h).matmul(&self.bert.embeddings.word_embeddings.weight.t()).add(&p.bias)
    }
}
