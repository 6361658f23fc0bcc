//! Hugging Face tokenizers (`tokenizer.json`, offline, pure Rust through the
//! `tokenizers` crate), with batch encoding into the tensors a model takes.

use crate::{PretrainedError, Result};
use firebrand_autograd::Tensor;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, TruncationParams};

/// A `tokenizer.json` loaded for encoding and decoding.
pub struct Tokenizer {
    inner: Mutex<tokenizers::Tokenizer>,
    path: PathBuf,
    pad_id: u32,
    pad_token: String,
}

/// A batch of encoded texts, each `(B, T)` `i64`: padded on the right to the
/// longest text (or to a fixed length), truncated to the limit.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids, `(B, T)`.
    pub input_ids: Tensor,
    /// 1 for a real token, 0 for padding, `(B, T)`.
    pub attention_mask: Tensor,
    /// Segment ids (0 for a single text), `(B, T)`.
    pub token_type_ids: Tensor,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({}, {} tokens)", self.path.display(), self.vocab_size())
    }
}

/// Every special token a template post-processor (alone or in a sequence of
/// them) places must be among its `special_tokens`. Checked by structure, not
/// by the `type` field: `tokenizers` matches processors by their fields.
fn check_templates(p: &serde_json::Value) -> std::result::Result<(), String> {
    if let Some(all) = p["processors"].as_array() {
        all.iter().try_for_each(check_templates)?;
    }
    let defined = p["special_tokens"].as_object();
    for piece in ["single", "pair"].iter().filter_map(|k| p[k].as_array()).flatten() {
        if let Some(id) = piece["SpecialToken"]["id"].as_str()
            && !defined.is_some_and(|d| d.contains_key(id))
        {
            return Err(format!(
                "the post-processor's template uses the special token {id:?}, which it does not define"
            ));
        }
    }
    Ok(())
}

impl Tokenizer {
    /// Loads a `tokenizer.json`. Its padding token is the one the file
    /// configures, else `[PAD]`, `<pad>` or id 0.
    ///
    /// # Errors
    /// [`PretrainedError::Tokenizer`] naming the file when it is missing or
    /// does not parse.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref().to_path_buf();
        let err = |msg: String| PretrainedError::Tokenizer { path: path.clone(), msg };
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        // Checked as JSON first: `tokenizers` 0.23 panics ("Helper") on a
        // `decoder` that is not valid JSON, where it should return an error.
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(format!("not valid JSON: {e}")))?;
        // It also panics at encoding time on a template naming a special token it does not define.
        check_templates(&json["post_processor"]).map_err(err)?;
        let inner: tokenizers::Tokenizer = text.parse().map_err(|e: tokenizers::Error| err(e.to_string()))?;
        let (pad_id, pad_token) = match inner.get_padding() {
            Some(p) => (p.pad_id, p.pad_token.clone()),
            None => ["[PAD]", "<pad>", "<|endoftext|>"]
                .iter()
                .find_map(|t| inner.token_to_id(t).map(|id| (id, t.to_string())))
                .unwrap_or((0, String::new())),
        };
        Ok(Tokenizer { inner: Mutex::new(inner), path, pad_id, pad_token })
    }

    /// The tokenizer a GGUF file stores (`tokenizer.ggml.*`): a GPT-2-style
    /// byte-level BPE from its vocabulary and merges, digits split one by
    /// one before the byte-level split (as SmolLM's and Llama 3's
    /// pre-tokenizers do), its control tokens (`<|im_start|>`, …) as
    /// special tokens matched whole in the text, no BOS added (when the file
    /// says `add_bos_token` is false).
    ///
    /// # Errors
    /// [`PretrainedError::Tokenizer`] naming the file when it stores another
    /// kind (`tokenizer.ggml.model` other than `gpt2`), or its vocabulary or
    /// merges are missing or malformed.
    pub fn from_gguf(g: &crate::gguf::GgufFile) -> Result<Tokenizer> {
        use crate::gguf::MetaValue;
        use tokenizers::models::bpe::BPE;
        use tokenizers::pre_tokenizers::{byte_level::ByteLevel, digits::Digits, sequence::Sequence};
        let path = g.path().to_path_buf();
        let err = |msg: String| PretrainedError::Tokenizer { path: path.clone(), msg };
        let kind = g.get("tokenizer.ggml.model").and_then(MetaValue::as_str).unwrap_or("");
        if kind != "gpt2" {
            return Err(err(format!("tokenizer.ggml.model is {kind:?}; this reader builds \"gpt2\" (byte-level BPE)")));
        }
        let strings = |key: &str| -> Result<Vec<&str>> {
            let a = g.get(key).and_then(MetaValue::as_array).ok_or_else(|| err(format!("{key} is missing")))?;
            a.iter().map(|v| v.as_str().ok_or_else(|| err(format!("{key} holds a non-string")))).collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| err(format!("merge {m:?} is not two tokens")))
            })
            .collect::<Result<Vec<_>>>()?;
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| err(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        inner.with_decoder(Some(ByteLevel::default()));
        // Control tokens (type 3) are special: matched whole, never split.
        let types = g.get("tokenizer.ggml.token_type").and_then(MetaValue::as_array);
        let special: Vec<tokenizers::AddedToken> = match types {
            Some(types) => types
                .iter()
                .zip(&tokens)
                .filter(|(t, _)| t.as_u64() == Some(3) || matches!(t, MetaValue::I64(3)))
                .map(|(_, tok)| tokenizers::AddedToken::from(tok.to_string(), true))
                .collect(),
            None => Vec::new(),
        };
        let _ = inner.add_special_tokens(special);
        let pad_id = g.get("tokenizer.ggml.padding_token_id").and_then(MetaValue::as_u64).unwrap_or(0) as u32;
        let pad_token = tokens.get(pad_id as usize).unwrap_or(&"").to_string();
        Ok(Tokenizer { inner: Mutex::new(inner), path, pad_id, pad_token })
    }

    /// The number of ids it can produce (with added tokens).
    pub fn vocab_size(&self) -> usize {
        self.lock().get_vocab_size(true)
    }

    /// The id of a token, if it has one.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.lock().token_to_id(token)
    }

    /// Checks that every id it produces fits a model's `vocab_size`
    /// embeddings (a model's tokenizer, not another one's).
    ///
    /// # Errors
    /// [`PretrainedError::Tokenizer`] naming both sizes.
    pub fn check_fits(&self, vocab_size: usize) -> Result<()> {
        let n = self.vocab_size();
        if n > vocab_size {
            return Err(PretrainedError::Tokenizer {
                path: self.path.clone(),
                msg: format!("produces ids up to {} but the model has {vocab_size} embeddings", n - 1),
            });
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, tokenizers::Tokenizer> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ids of one text, with the special tokens the file's post-processor adds.
    ///
    /// # Errors
    /// When the tokenizer fails on the text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut t = self.lock();
        t.with_truncation(None).map_err(|e| self.err(e))?;
        t.with_padding(None);
        Ok(t.encode(text, true).map_err(|e| self.err(e))?.get_ids().to_vec())
    }

    /// Text from ids (special tokens skipped with `skip_special`).
    ///
    /// # Errors
    /// When an id is not in the vocabulary.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.lock().decode(ids, skip_special).map_err(|e| self.err(e))
    }

    fn err(&self, e: impl std::fmt::Display) -> PretrainedError {
        PretrainedError::Tokenizer { path: self.path.clone(), msg: e.to_string() }
    }

    /// Encodes `texts` (with special tokens), each truncated to `max_len`
    /// tokens and padded on the right to the longest.
    ///
    /// # Errors
    /// When the tokenizer fails on a text.
    pub fn encode_batch(&self, texts: &[&str], max_len: usize) -> Result<Batch> {
        self.encode_with(texts, max_len, PaddingStrategy::BatchLongest)
    }

    /// [`Tokenizer::encode_batch`] padded to exactly `len` tokens.
    ///
    /// # Errors
    /// When the tokenizer fails on a text.
    pub fn encode_batch_fixed(&self, texts: &[&str], len: usize) -> Result<Batch> {
        self.encode_with(texts, len, PaddingStrategy::Fixed(len))
    }

    fn encode_with(&self, texts: &[&str], max_len: usize, strategy: PaddingStrategy) -> Result<Batch> {
        let mut t = self.lock();
        t.with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| self.err(e))?;
        t.with_padding(Some(PaddingParams {
            strategy,
            direction: PaddingDirection::Right,
            pad_id: self.pad_id,
            pad_token: self.pad_token.clone(),
            ..Default::default()
        }));
        let enc = t.encode_batch(texts.to_vec(), true).map_err(|e| self.err(e))?;
        let (b, len) = (enc.len(), enc.first().map_or(0, |e| e.len()));
        let field = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Tensor {
            let v: Vec<i64> = enc.iter().flat_map(|e| f(e).iter().map(|&x| x as i64)).collect();
            Tensor::from_vec(v, [b, len])
        };
        Ok(Batch {
            input_ids: field(&|e| e.get_ids()),
            attention_mask: field(&|e| e.get_attention_mask()),
            token_type_ids: field(&|e| e.get_type_ids()),
        })
    }
}
