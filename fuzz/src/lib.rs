//! The fuzzed readers, one function per target. Each feeds arbitrary bytes
//! to one of Firebrand's readers of outside data; a reader may refuse the
//! bytes with an error, but never panic, hang or allocate without bound.
//! The same functions replay the committed corpora and past crashes in the
//! main test suite (`tests/fuzz_corpora.rs`), on the stable toolchain.

use firebrand::data::{BpeTokenizer, CharVocab, CsvOptions, parse_csv, parse_idx};
use firebrand::nn::serialize::{load_checkpoint, load_tensors};
use firebrand::nn::{Linear, Sequential};
use std::path::{Path, PathBuf};

/// The readers that take a path get the bytes through a file of this
/// thread's own in a RAM-backed folder where there is one.
fn scratch(data: &[u8], name: &str) -> PathBuf {
    thread_local! {
        static DIR: PathBuf = {
            let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
            let d = base.join(format!("firebrand-fuzz-{}-{:?}", std::process::id(), std::thread::current().id()));
            std::fs::create_dir_all(&d).expect("a scratch folder");
            d
        };
    }
    let path = DIR.with(|d| d.join(name));
    std::fs::write(&path, data).expect("the scratch file is written");
    path
}

/// IDX arrays (MNIST's format).
pub fn idx(data: &[u8]) {
    let _ = parse_idx(data, Path::new("fuzz.idx"));
}

/// CSV with a header and the label last, and without a header, string columns one-hot.
pub fn csv(data: &[u8]) {
    let _ = parse_csv(data, &CsvOptions::default(), Path::new("fuzz.csv"));
    let _ = parse_csv(data, &CsvOptions { header: false, ..Default::default() }, Path::new("fuzz.csv"));
}

/// safetensors weights, read and loaded into a small model.
pub fn safetensors(data: &[u8]) {
    let path = scratch(data, "weights.safetensors");
    let _ = load_tensors(&path);
    let net = Sequential::new().add(Linear::new(3, 2));
    let _ = firebrand::nn::load_weights(&net, &path, true);
    let _ = firebrand::nn::load_weights(&net, &path, false);
}

/// Training checkpoints: version, checksum, then the state into a model and optimizer.
pub fn checkpoint(data: &[u8]) {
    use firebrand::nn::ModuleExt;
    let path = scratch(data, "ckpt.safetensors");
    let _ = load_checkpoint(&path);
    let net = Sequential::new().add(Linear::new(3, 2));
    let mut opt = firebrand::optim::Adam::new(net.named_parameters(), 1e-3);
    let _ = firebrand::train::load_training_state(&path, &net, &mut opt);
}

/// Character vocabularies (`CharVocab::save`'s files).
pub fn vocab(data: &[u8]) {
    let _ = CharVocab::load(scratch(data, "vocab.json"));
}

/// BPE tokenizer files (`BpeTokenizer::save`'s), and encoding with one that loads.
pub fn bpe(data: &[u8]) {
    if let Ok(t) = BpeTokenizer::load(scratch(data, "bpe.json")) {
        let ids = t.encode("fuzz the merges");
        let _ = t.decode(&ids);
    }
}

/// Hugging Face `tokenizer.json`, and encoding with one that loads.
pub fn tokenizer_json(data: &[u8]) {
    if let Ok(t) = firebrand::pretrained::tokenizer::Tokenizer::from_file(scratch(data, "tokenizer.json")) {
        let _ = t.encode_batch(&["a short text", ""], 16);
    }
}

/// `config.json`, read as each architecture's configuration.
pub fn config_json(data: &[u8]) {
    let path = scratch(data, "config.json");
    let Ok(c) = firebrand::pretrained::hub::Config::read(path.parent().expect("a folder")) else { return };
    let _ = firebrand::pretrained::bert::BertConfig::from_config(&c);
    let _ = firebrand::pretrained::gpt2::Gpt2Config::from_config(&c);
    let _ = firebrand::pretrained::llama::LlamaConfig::from_config(&c);
}

/// GGUF files: header, metadata, tensor infos, then every tensor, its block
/// form, and the tokenizer it stores.
pub fn gguf(data: &[u8]) {
    use firebrand::pretrained::gguf::GgufFile;
    let Ok(g) = GgufFile::open(scratch(data, "model.gguf")) else { return };
    let names: Vec<String> = g.tensors.iter().map(|t| t.name.clone()).collect();
    for n in &names {
        let _ = g.tensor(n);
        let _ = g.block_weight(n);
    }
    let _ = firebrand::pretrained::tokenizer::Tokenizer::from_gguf(&g);
    let _ = firebrand::pretrained::llama::LlamaConfig::from_gguf(&g);
}
