//! Pretrained models: published checkpoints that no one here trained,
//! loaded, run and fine-tuned.
//!
//! * [`hub`] finds a checkpoint (a local folder, or a model id in the
//!   Hugging Face cache layout), reads its `config.json` with typed errors,
//!   and loads its weights from `model.safetensors` or a sharded
//!   `model.safetensors.index.json` (`f16`/`bf16` widened to `f32`), with
//!   Hugging Face's names (older `gamma`/`beta`, `bert.` prefixes).
//! * [`bert`]: Hugging Face's `BertModel` built from Firebrand's layers, with
//!   its tensor names, so a checkpoint loads by name; attention masks, token
//!   types, CLS and mean pooling, a sequence-classification head.
//! * [`gpt2`]: Hugging Face's `GPT2LMHeadModel` (Conv1D weights transposed
//!   on load, `gelu_new`, the tied head, a KV cache).
//! * [`gguf`]: llama.cpp's GGUF v3 files: metadata (sizes, vocabulary,
//!   chat template) and tensors dequantized to `f32` from `F32`, `F16`,
//!   `BF16`, `Q8_0`, `Q4_0` and `Q4_1`, with typed errors naming the file
//!   and tensor.
//! * [`llama`]: the Llama architecture (SmolLM2) from a GGUF file or a
//!   Hugging Face `LlamaForCausalLM` folder: RMSNorm, rotary positions with
//!   the checkpoint's base, grouped-query attention, SwiGLU, a tied or
//!   separate head, padding masks, a KV cache and greedy decoding.
//! * [`chat`]: a checkpoint's own Jinja chat template (GGUF or
//!   `tokenizer_config.json`) rendered as `transformers` renders it.
//! * [`tokenizer`]: Hugging Face's `tokenizer.json` through the `tokenizers`
//!   crate (pure Rust), batch encoding with padding, truncation and
//!   attention masks as tensors.
//!
//! It sits on `firebrand-nn` (layers, `Module`, safetensors) and
//! `firebrand-autograd` (tensors); the facade re-exports it as
//! `firebrand::pretrained`.
//!
//! ```no_run
//! use firebrand_pretrained::{bert::BertModel, tokenizer::Tokenizer};
//! let dir = firebrand_pretrained::hub::resolve("sentence-transformers/all-MiniLM-L6-v2").unwrap();
//! let (model, _report) = BertModel::from_pretrained(&dir).unwrap();
//! let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
//! let batch = tok.encode_batch(&["A sentence.", "Another one, longer."], 128).unwrap();
//! let emb = model.embed(&batch); // (B, 384), mean-pooled and L2-normalized
//! assert_eq!(emb.dims(), &[2, 384]);
//! ```
#![warn(missing_docs)]

pub mod bert;
pub mod chat;
mod error;
pub mod gguf;
pub mod gpt2;
pub mod hub;
pub mod llama;
pub mod tokenizer;

pub use error::PretrainedError;

/// The result of everything here that reads from outside.
pub type Result<T> = std::result::Result<T, PretrainedError>;
