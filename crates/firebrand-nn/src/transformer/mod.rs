//! Transformer building blocks and models.
//!
//! * [`LayerNorm`], [`RMSNorm`] (`layer_norm`);
//! * [`MultiHeadAttention`] over the fused scaled-dot-product op, with a
//!   [`KvCache`] for incremental decoding (`attention`);
//! * sinusoidal, learned and rotary position encodings (`position`);
//! * encoder and decoder layers and stacks (`layers`);
//! * [`Gpt`], a GPT-2-style language model with KV-cached generation (`gpt`).

mod attention;
mod gpt;
mod layer_norm;
mod layers;
mod position;

pub use attention::{KvCache, MultiHeadAttention};
pub use gpt::{Gpt, GptCache, GptConfig};
pub use layer_norm::{LayerNorm, RMSNorm};
pub use layers::{TransformerDecoder, TransformerDecoderLayer, TransformerEncoder, TransformerEncoderLayer};
pub use position::{LearnedPositionalEncoding, SinusoidalPositionalEncoding, rotary};
