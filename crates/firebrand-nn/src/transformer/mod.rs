//! Transformer building blocks and models.
//!
//! * [`LayerNorm`], [`RMSNorm`] (`layer_norm`);
//! * [`MultiHeadAttention`] over the fused scaled-dot-product op, with a
//!   [`KvCache`] for incremental decoding (`attention`);
//! * sinusoidal, learned and rotary position encodings (`position`);
//! * encoder and decoder layers and stacks (`layers`).

mod attention;
mod layer_norm;
mod layers;
mod position;

pub use attention::{KvCache, MultiHeadAttention};
pub use layer_norm::{LayerNorm, RMSNorm};
pub use layers::{TransformerDecoderLayer, TransformerEncoder, TransformerEncoderLayer};
pub use position::{LearnedPositionalEncoding, SinusoidalPositionalEncoding, rotary};
