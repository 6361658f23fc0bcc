//! A character-level LSTM that learns Shakespeare and writes.
//!
//! One-hot characters → LSTM 128 → Dense to the vocabulary, trained to predict
//! the character after each window of 40 (windows every 3 characters; the last
//! 10% validate), Adam 1e-3, batch 128. After training it saves the model and
//! the vocabulary, loads both back into a fresh network, and generates text
//! from a prompt, sliding the 40-character window along.
//!
//! Run: `cargo run --release --example char_lstm -- [--text FILE] [--chars 1000000] [--epochs 1]
//! [--prompt "ROMEO:"] [--len 400] [--temperature 0.8] [--seed 0] [--out DIR]`
//!
//! The model, its vocabulary and `char_lstm_history.png` go to `--out`
//! (default `runs/char_lstm`).
//!
//! The corpus is `--text FILE`, else `shakespeare/shakespeare.txt` under
//! `$FIREBRAND_DATA`, `../shared/data` or `./data`. The same seed gives the
//! same model and the same text.
//!
//! After one epoch on the first 1,000,000 characters (validation loss 2.26,
//! about 40 s on 2 cores) the model has learned words, spacing, speaker
//! headings in capitals, line breaks and punctuation, not yet meaning;
//! temperature 0.8, seed 0:
//!
//! ```text
//! ROMEO:
//! I are I hat he lith and withe heraver shar he the bughe
//! hare yould my your my caver aker siy ot
//! An oll sper a cy and ame, I wore the say!
//!
//! POLATINY.
//! OF roo shar har wan hes bee entw sill thew you
//! has what my and and baghelly folle in they iil's as wor her hive corene the willathier.
//! ```

use clap::Parser;
use firebrand::data::{CharVocab, TextWindows};
use firebrand::nn::{LSTM, OneHot, Sampler, Sampling, load_weights, save_weights};
use firebrand::prelude::*;
use std::path::PathBuf;

mod common;
use common::{fail, shakespeare};

/// A character-level LSTM on Shakespeare that then writes.
#[derive(Parser)]
struct Args {
    /// The corpus [default: shakespeare/shakespeare.txt under $FIREBRAND_DATA or the standard places].
    #[arg(long)]
    text: Option<PathBuf>,
    /// Characters of the corpus to train on.
    #[arg(long, default_value_t = 1_000_000)]
    chars: usize,
    /// Training epochs.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Seeds the weights, the shuffling and the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Characters to generate.
    #[arg(long, default_value_t = 400)]
    len: usize,
    /// Text to start from (`\n` for a line break).
    #[arg(long, default_value = "ROMEO:\\n")]
    prompt: String,
    /// Where the model, vocabulary and plot go [default: runs/char_lstm].
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    device: common::DeviceArg,
}

fn net(vocab: usize) -> Sequential {
    Sequential::new()
        .add(OneHot(vocab)) // (B, 40) ids -> (B, 40, V)
        .add(LSTM::new(vocab, 128).return_sequences(false)) // (B, 128)
        .add(Linear::new(128, vocab)) // (B, V) logits
}

fn main() {
    let args = Args::parse();
    let Args { chars, epochs, seed, temperature, len, .. } = args;
    let prompt = args.prompt.replace("\\n", "\n");
    let (path, text) = shakespeare(args.text.as_deref());
    let vocab = CharVocab::build(&text);
    let head: String = text.chars().take(chars).collect();
    let windows = TextWindows::new(vocab.encode(&head).expect("the vocabulary covers the text"), 40, 3);
    let (train, val) = windows.split_tail(0.1);
    println!(
        "{}: {} characters, vocabulary {}, {} training windows",
        path.display(),
        head.chars().count(),
        vocab.len(),
        train.len()
    );

    manual_seed(seed);
    let model_net = net(vocab.len());
    println!("{}", model_net.summary_for(&Tensor::from_vec(vec![0i64; 40], [1, 40])));
    let adam = Adam::new(model_net.named_parameters(), 1e-3);
    let device = args.device.place(&model_net);
    let mut model = Model::new(model_net, adam, Loss::CROSS_ENTROPY);
    let options = FitOptions {
        epochs,
        batch_size: 128,
        seed,
        validation: Validation::data(val.to_tensor_dataset()),
        ..Default::default()
    };
    let history = model.fit(&train.to_tensor_dataset(), &options).unwrap_or_else(|e| fail(e));
    let out = common::out_dir(args.out.as_deref(), "char_lstm");
    common::plot_history(&history, &out, "char_lstm");

    // Save, then load into a fresh network and vocabulary, and generate from those.
    let (weights, vocab_path) = (out.join("char_lstm.safetensors"), out.join("char_lstm.vocab"));
    save_weights(&model.net, &weights).unwrap_or_else(|e| fail(format!("saving the model: {e}")));
    vocab.save(&vocab_path).unwrap_or_else(|e| fail(format!("saving the vocabulary: {e}")));
    let vocab = CharVocab::load(&vocab_path).unwrap_or_else(|e| fail(e));
    let mut gen_net = net(vocab.len());
    load_weights(&gen_net, &weights, true).unwrap_or_else(|e| fail(e));
    args.device.place(&gen_net);
    gen_net.eval();
    println!("saved and reloaded {} and {}", weights.display(), vocab_path.display());

    let mut ids = vocab.encode(&prompt).unwrap_or_else(|e| fail(format!("the prompt: {e}")));
    let mut sampler = Sampler::new(Sampling::Temperature(temperature), seed);
    let start = ids.len();
    with_no_grad(|| {
        for _ in 0..len {
            let window: Vec<i64> = ids[ids.len().saturating_sub(40)..].to_vec();
            let n = window.len();
            let window = Tensor::from_vec(window, [1, n]).to_device(device).unwrap_or_else(|e| fail(e));
            let logits = gen_net.forward(&window).to_vec::<f32>();
            ids.push(sampler.sample(&logits) as i64);
        }
    });
    println!("\n--- generated (temperature {temperature}, seed {seed}) ---\n{}{}", prompt, vocab.decode(&ids[start..]));
}
