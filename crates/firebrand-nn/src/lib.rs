//! # firebrand-nn
//!
//! Layers and models on top of `firebrand-autograd`'s `Tensor`.
//!
//! * [`Module`] — forward pass, named-parameter visitor, train/eval mode;
//!   [`ModuleExt`] adds `named_parameters`, `num_parameters`, `zero_grad`,
//!   `train`/`eval` to every module.
//! * [`Init`] — seeded initializers (Kaiming, Xavier, PyTorch's default, ...).
//! * Layers: [`Linear`] (Keras' `Dense`, with an optional fused
//!   [`Activation`]), [`Dropout`], [`Flatten`], activation modules
//!   ([`ReLU`], [`ReLU6`], [`Hardtanh`], [`Hardswish`], [`Hardsigmoid`], [`LeakyReLU`],
//!   [`GELU`], [`SiLU`], [`Tanh`], [`Sigmoid`], [`Softmax`]).
//! * Convolutional layers: [`Conv2d`], [`Conv1d`] (stride, [`Padding`] incl.
//!   "same", dilation, groups), [`MaxPool2d`], [`AvgPool2d`], [`GlobalAvgPool`],
//!   [`BatchNorm1d`]/[`BatchNorm2d`] (running statistics saved as buffers).
//! * Sequence layers: [`Embedding`] (padding index), [`LSTM`], [`GRU`], [`RNN`]
//!   (batch first, stacked, bidirectional, initial/final states, PyTorch's
//!   parameter names and gate order).
//! * [`Sampler`]: greedy, temperature, top-k and top-p sampling, seeded.
//! * Transformer blocks: [`LayerNorm`], [`RMSNorm`], [`MultiHeadAttention`]
//!   (self/cross, causal and key-padding masks, PyTorch's parameter names),
//!   [`TransformerEncoderLayer`], [`TransformerEncoder`], [`TransformerDecoderLayer`],
//!   [`TransformerDecoder`], sinusoidal, learned and [`rotary`] positions; [`Gpt`], a GPT-2-style
//!   language model with KV-cached generation.
//! * [`loss`] — cross-entropy (indices or probabilities, label smoothing), NLL,
//!   MSE, binary cross-entropy with logits.
//! * [`Sequential`]; `#[derive(Module)]` for your own modules (see
//!   [`Module`]); a Keras-style `summary()` on any module ([`ModuleExt::summary`]).
//! * [`serialize`] — safetensors save/load of named parameters, atomic writes,
//!   typed errors naming the file and the offending tensor.
//! * [`quantize`] — dynamic int8 and GGUF block forms of `Linear` layers;
//!   static int8 of `Linear` and `Conv2d` (`prepare` → `calibrate` →
//!   `convert`, with observers; a converted CNN runs as one `u8` chain);
//!   quantized checkpoints.
//! * [`prune`] — PyTorch's pruning (masks that hold through training,
//!   `remove`), a gradual schedule, and [`prune::shrink`], which removes
//!   channels from a layer and its successor so the model gets smaller and faster.
//!
//! Optimizers (`firebrand-optim`) update the tensors `named_parameters`
//! returns in place; the training loop (`firebrand-train`) drives both.
//!
//! ```
//! use firebrand_nn::{Sequential, Linear, Activation, Dropout, ModuleExt, Module};
//! use firebrand_nn::loss::{cross_entropy, Reduction, Target};
//! use firebrand_autograd::{Tensor, manual_seed};
//!
//! manual_seed(0);
//! let model = Sequential::new()
//!     .add(Linear::new(64, 32).with_activation(Activation::Relu))
//!     .add(Dropout::new(0.2))
//!     .add(Linear::new(32, 10));
//! assert_eq!(model.num_parameters(), 64 * 32 + 32 + 32 * 10 + 10);
//! let x = Tensor::randn([8, 64], 0.0, 1.0);
//! let y = Tensor::from_vec((0..8).map(|i| i % 10).collect::<Vec<i64>>(), [8]);
//! let loss = cross_entropy(&model.forward(&x), Target::Indices(&y), 0.0, Reduction::Mean).unwrap();
//! loss.backward();
//! assert!(model.parameters().iter().all(|p| p.grad().is_some()));
//! ```

#![warn(missing_docs)]

// `#[derive(Module)]` names this crate `::firebrand_nn`, here too.
extern crate self as firebrand_nn;

mod activation;
mod catch;
mod conv;
mod dropout;
mod embedding;
mod fuse;
mod init;
mod linear;
pub mod loss;
pub mod models;
mod module;
mod norm;
mod pool;
pub mod prune;
pub mod quantize;
mod recurrent;
mod sampling;
mod sequential;
pub mod serialize;
mod summary;
mod transformer;

pub use activation::{
    Activation, GELU, Hardsigmoid, Hardswish, Hardtanh, LeakyReLU, ReLU, ReLU6, SiLU, Sigmoid, Softmax, Tanh,
};
pub use catch::{ForwardError, catch_forward};
pub use conv::{Conv1d, Conv2d, ConvConfig, Padding};
pub use dropout::{Dropout, Flatten};
pub use embedding::{Embedding, OneHot};
pub use firebrand_derive::Module;
pub use fuse::{fuse_conv_bn, fuse_linear_bn};
pub use init::Init;
pub use linear::{Linear, QuantizedForm};
pub use module::{Module, ModuleExt, ModuleField, layer_input_message, module_path, record_output};
pub use norm::{BatchNorm, BatchNorm1d, BatchNorm2d};
pub use pool::{AvgPool2d, GlobalAvgPool, MaxPool2d};
pub use recurrent::{GRU, LSTM, RNN, Recurrent, RnnKind, RnnState};
pub use sampling::{Sampler, Sampling};
pub use sequential::{AnyModule, Sequential};
pub use serialize::{LoadReport, WeightsError, load_weights, save_weights};
pub use transformer::{
    Gpt, GptCache, GptConfig, KvCache, LayerNorm, LearnedPositionalEncoding, MultiHeadAttention, RMSNorm,
    SinusoidalPositionalEncoding, TransformerDecoder, TransformerDecoderLayer, TransformerEncoder,
    TransformerEncoderLayer, rotary,
};

/// What `#[derive(Module)]`'s expansion names; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::module::{ForwardGuard, record_output};
    pub use firebrand_autograd::Tensor;
}
