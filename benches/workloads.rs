//! The workload runner: `cargo bench --bench workloads -- <name> [options]`.
//!
//! Each workload is defined in `../shared/bench/README.md` and prints one JSON
//! object per line so that scripts (see `benches/compare.py`) can put our
//! figures beside PyTorch's.
//!
//! Workloads:
//! * `gemm [--sizes 64,128x128x512,...] [--threads N]` — fp32 GFLOP/s of `C = A·B`
//!   for square sizes and the training shapes, or the given sizes (N or MxKxN).
//! * `peak [--threads N]` — the machine's fp32 FMA peak (an FMA-throughput
//!   microbenchmark), to judge gemm against.
//! * `mlp [--epochs N] [--data DIR]` — Fashion-MNIST, 784 → Linear 128 + ReLU →
//!   Dropout 0.2 → Linear 10, Adam 1e-3, batch 32: one object per epoch with
//!   `train_seconds` (training only), `test_accuracy` and `peak_rss_mb`.
//! * `cnn [--epochs N] [--data DIR]` — Fashion-MNIST `(1, 28, 28)` → Conv2d 32
//!   3x3 same + ReLU → MaxPool 2 → Conv2d 64 3x3 same + ReLU → MaxPool 2 →
//!   Flatten → Linear 10, Adam 1e-3, batch 32; same JSON fields as `mlp`.
//! * `char_lstm [--text FILE] [--chars N] [--seed S]` — the first N (1,000,000)
//!   characters of shakespeare.txt, windows of 40 with step 3 (last 10% of the
//!   windows validate), one-hot → LSTM 128 → Linear to the vocabulary on the
//!   last step, Adam 1e-3, batch 128, one epoch: `samples_per_second`, `val_loss`.
//! * `gpt [--text FILE] [--iters N] [--seed S]` — the character-level GPT of
//!   the bench README on the whole corpus (90/10 split): 4 layers, 4 heads,
//!   embedding 128, context 64, batch 12, pre-LN, GELU, learned positions, no
//!   dropout; AdamW 1e-3 (betas 0.9/0.99, weight decay 0.1 on matrices), warm-up
//!   100, cosine to 1e-4 at 2000, clip 1.0. Every 500 iterations and at the
//!   end: `iter`, `val_loss` (mean over 1,200 evenly spaced validation windows,
//!   the same on the PyTorch side), `train_loss` (mean of the last 100
//!   iterations), `ms_per_iter` (training only, mean so far).
//! * `transformer_block [--rounds N]` — 2 encoder layers (d_model 512, 8 heads,
//!   feed-forward 2048, post-norm ReLU, no dropout) on `(8, 128, 512)`:
//!   `forward_ms` and `forward_backward_ms` (loss = mean of squares), the
//!   median of N rounds after one warm-up.
//! * `mobilenet_v2 [--rounds N] [--size S] [--modes M]` — torchvision's MobileNetV2 (1000
//!   classes) on `S`x`S` images (224): inference `images_per_second` at batch
//!   1 and 16 (evaluation mode, no gradients), and one training step at batch
//!   16 (`train_step_ms`: forward, cross-entropy, backward, SGD momentum 0.9),
//!   each the median of N rounds (5) after one warm-up. `--modes inference`
//!   or `--modes train` runs one half.
//! * `prune [--epochs N] [--seed S] [--data DIR]` — the seed MLP pruned
//!   to 90% (global magnitude, 3 gradual steps with fine-tuning) and the
//!   seed CNN with half its channels removed structurally, after N (3)
//!   epochs: `model`, `sparsity`, `structured`, `accuracy`,
//!   `dense_accuracy`, `speedup` (inference images/s against dense).
//! * `cnn_int8 [--epochs N] [--observer minmax|histogram|percentileP]
//!   [--calibration N] [--data DIR]` — the seed CNN after its usual
//!   training (5 epochs), statically quantized (prepare, calibrate on the
//!   first N (1000) training images, convert): `fp32_accuracy`,
//!   `int8_accuracy`, `fp32_images_per_s`, `int8_images_per_s`,
//!   `fp32_bytes`, `int8_bytes` (the saved files).
//! * `block_gemm [--sizes …] [--format q4_1|q4_0|q8_0]` — the GGUF block
//!   product (`i16` activations) on SmolLM2's shapes: `gops`,
//!   `weight_gb_per_s` and our `fp32_gflops`.
//! * `int8_gemm [--sizes …]` — the quantized product
//!   (`gemm::int8::gemm_u8i8`: `u8` rows times an `i8` weight, dequantized
//!   to `f32` with a bias) against the `f32` gemm on the same shapes, same
//!   run: `int8_gops` (and `vnni_gops`, `avx2_gops`: the AVX-512 VNNI and
//!   AVX2 kernels, where the CPU also has a faster one) and `fp32_gflops` (2·m·k·n per product; quantizing
//!   the activations not timed). Default shapes: 1024³ and MiniLM's
//!   feed-forward pair, 4096x384x1536 and 4096x1536x384.
//! * `minilm_embed [--model DIR] [--data DIR] [--rounds N] [--int8]` — the real
//!   all-MiniLM-L6-v2 on 256 BBC News articles (every 8th in sorted path
//!   order), each padded or truncated to 128 tokens, batches of 32: forward
//!   and mean pooling without gradients, `sentences_per_s` (median of N
//!   rounds, 5, after a warm-up; tokenizing not timed). `--int8` runs it
//!   after `quantize_dynamic` and adds `cos_min` / `cos_mean`, the cosine
//!   similarity of each embedding to the f32 one.
//! * `minilm_finetune [--model DIR] [--data DIR] [--epochs N]` — the
//!   `text_classifier` example's recipe on BBC News (80/20 stratified split,
//!   seq 128, batch 16, AdamW 5e-5, linear decay, clip 1): `epoch_seconds`
//!   (training only) and `test_accuracy`.
//! * `llm_generate [--model FILE.gguf] [--text FILE] [--rounds N]` —
//!   SmolLM2-135M-Instruct on a 128-token prompt (the start of the
//!   Shakespeare corpus) and 128 new greedy tokens through the KV cache:
//!   `prompt_tokens_per_s` and `tokens_per_s`, medians of N (3) after a warm-up.
//!   `--quantized` runs on the file's own Q4_1/Q8_0 blocks (`weights`).
//!
//! Every workload takes `--device cpu|wgpu|wgpu:N` (default cpu; wgpu needs
//! `--features wgpu`): the model, its optimizer state and every batch live
//! there, timings wait for the device (`synchronize`), and each JSON object
//! carries `device` and, on a device, `peak_device_mb` (the most memory its
//! tensors held at once).

mod common;
mod compress;
mod pretrained;

use firebrand::ops::gemm::{MatRef, MatmulPrecision, gemm, gemm_backend};
use firebrand::{Device, Tensor};
use std::sync::OnceLock;
use std::time::Instant;

/// The device of this run (`--device`).
static DEVICE: OnceLock<Device> = OnceLock::new();

fn dev() -> Device {
    *DEVICE.get().unwrap_or(&Device::Cpu)
}

/// `t` on the run's device.
fn on(t: &Tensor) -> Tensor {
    t.to_device(dev()).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    })
}

/// The JSON fields naming the device and, on one, its peak tensor memory.
fn dev_json() -> String {
    let precision = firebrand::ops::gemm::float32_matmul_precision();
    let p = if precision == MatmulPrecision::Highest {
        String::new()
    } else {
        format!(",\"matmul_precision\":\"{}\"", precision.as_str())
    };
    match firebrand::memory_stats(dev()) {
        Ok(Some(m)) => {
            format!(",\"device\":\"{}\",\"peak_device_mb\":{:.1}{p}", dev(), m.peak_bytes as f64 / (1 << 20) as f64)
        }
        _ => format!(",\"device\":\"{}\"{p}", dev()),
    }
}

/// Waits for the run's device (timings cover the work, not its queueing).
fn sync() {
    firebrand::synchronize(dev()).expect("the device");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let Some(name) = args.first() else {
        eprintln!("usage: cargo bench --bench workloads -- <gemm|peak> [options]");
        std::process::exit(2);
    };
    let opt = |key: &str| args.iter().position(|a| a == key).and_then(|i| args.get(i + 1)).cloned();
    if let Some(d) = opt("--device") {
        let d: Device = d.parse().unwrap_or_else(|e| {
            eprintln!("error: --device: {e}");
            std::process::exit(2)
        });
        DEVICE.set(d).expect("set once");
        on(&Tensor::zeros([1])); // opens the device, or exits saying why
    }
    if let Some(p) = opt("--matmul-precision") {
        let p: MatmulPrecision = p.parse().unwrap_or_else(|e| {
            eprintln!("error: --matmul-precision: {e}");
            std::process::exit(2)
        });
        firebrand::ops::gemm::set_float32_matmul_precision(p);
    }
    if let Some(t) = opt("--threads") {
        rayon::ThreadPoolBuilder::new().num_threads(t.parse().expect("--threads N")).build_global().unwrap();
    }
    match name.as_str() {
        "gemm" => workload_gemm(opt("--sizes")),
        "int8_gemm" => workload_int8_gemm(opt("--sizes")),
        "block_gemm" => workload_block_gemm(opt("--sizes"), opt("--format")),
        "peak" => workload_peak(),
        "prune" => {
            let epochs = opt("--epochs").map(|e| e.parse().expect("--epochs N")).unwrap_or(3);
            let seed = opt("--seed").map(|s| s.parse().expect("--seed N")).unwrap_or(0);
            let (train, test) = fashion_mnist(opt("--data"), false);
            let (ftrain, ftest) = fashion_mnist(opt("--data"), true);
            compress::workload_prune(&train, &test, (&ftrain, &ftest), epochs, seed)
        }
        "cnn_int8" => {
            let epochs = opt("--epochs").map(|e| e.parse().expect("--epochs N")).unwrap_or(5);
            let seed = opt("--seed").map(|s| s.parse().expect("--seed N")).unwrap_or(0);
            let calib = opt("--calibration").map(|c| c.parse().expect("--calibration N")).unwrap_or(1000);
            let observer = match opt("--observer").as_deref().unwrap_or("histogram") {
                "minmax" => firebrand::nn::quantize::ObserverKind::MinMax,
                "histogram" => firebrand::nn::quantize::ObserverKind::Histogram,
                p => match p.strip_prefix("percentile") {
                    Some(v) => firebrand::nn::quantize::ObserverKind::Percentile(v.parse().unwrap_or(99.99)),
                    None => {
                        eprintln!("error: --observer minmax|histogram|percentile[P], got {p:?}");
                        std::process::exit(2)
                    }
                },
            };
            let (train, test) = fashion_mnist(opt("--data"), false);
            compress::workload_cnn_int8(&train, &test, epochs, seed, observer, calib)
        }
        "mlp" | "cnn" => {
            let epochs = opt("--epochs").map(|e| e.parse().expect("--epochs N")).unwrap_or(5);
            let seed = opt("--seed").map(|s| s.parse().expect("--seed N")).unwrap_or(0);
            if name == "mlp" {
                workload_mlp(epochs, opt("--data"), seed)
            } else {
                workload_cnn(epochs, opt("--data"), seed)
            }
        }
        "gpt" => workload_gpt(
            opt("--text"),
            opt("--iters").map(|c| c.parse().expect("--iters N")).unwrap_or(2000),
            opt("--seed").map(|s| s.parse().expect("--seed N")).unwrap_or(0),
        ),
        "transformer_block" => workload_transformer_block(
            opt("--rounds").map(|c| c.parse().expect("--rounds N")).unwrap_or(10),
            opt("--seed").map(|s| s.parse().expect("--seed N")).unwrap_or(0),
        ),
        "mobilenet_v2" => workload_mobilenet_v2(
            opt("--rounds").map(|c| c.parse().expect("--rounds N")).unwrap_or(5),
            opt("--size").map(|c| c.parse().expect("--size S")).unwrap_or(224),
            opt("--modes").unwrap_or_else(|| "inference,train".into()),
        ),
        "char_lstm" => workload_char_lstm(
            opt("--text"),
            opt("--chars").map(|c| c.parse().expect("--chars N")).unwrap_or(1_000_000),
            opt("--seed").map(|s| s.parse().expect("--seed N")).unwrap_or(0),
        ),
        "minilm_embed" => pretrained::workload_minilm_embed(
            opt("--model"),
            opt("--data"),
            opt("--rounds").map(|c| c.parse().expect("--rounds N")).unwrap_or(5),
            args.iter().any(|a| a == "--int8"),
        ),
        "minilm_finetune" => pretrained::workload_minilm_finetune(
            opt("--model"),
            opt("--data"),
            opt("--epochs").map(|c| c.parse().expect("--epochs N")).unwrap_or(1),
            opt("--seed").map(|s| s.parse().expect("--seed N")).unwrap_or(0),
        ),
        "llm_generate" => pretrained::workload_llm_generate(
            opt("--model"),
            opt("--text"),
            opt("--rounds").map(|c| c.parse().expect("--rounds N")).unwrap_or(3),
            args.iter().any(|a| a == "--quantized"),
        ),
        other => {
            eprintln!(
                "unknown workload {other:?}; known: gemm, int8_gemm, block_gemm, prune, cnn_int8, peak, mlp, cnn, char_lstm, gpt, transformer_block, mobilenet_v2, minilm_embed, minilm_finetune, llm_generate"
            );
            std::process::exit(2);
        }
    }
}

fn fill(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 1000) as f32 / 1000.0 - 0.5
        })
        .collect()
}

/// Median-of-runs GFLOP/s for one shape, timing for at least ~0.3 s.
fn time_gemm(m: usize, k: usize, n: usize) -> f64 {
    let a = fill(m * k, 1);
    let b = fill(k * n, 2);
    let mut c = vec![0.0f32; m * n];
    let flops = 2.0 * (m * k * n) as f64;
    flops / median_secs(|| gemm(m, k, n, MatRef::row_major(&a, k), MatRef::row_major(&b, n), &mut c, n, false)) / 1e9
}

/// GFLOP/s of `Tensor::matmul` on the run's device: the median of 5 timed
/// batches of repeats (each batch waits for the device), after a warm-up.
fn time_device_gemm(m: usize, k: usize, n: usize) -> f64 {
    let a = on(&Tensor::from_vec(fill(m * k, 1), [m, k]));
    let b = on(&Tensor::from_vec(fill(k * n, 2), [k, n]));
    let flops = 2.0 * (m * k * n) as f64;
    let run = || drop(a.matmul(&b));
    run();
    sync();
    let t = Instant::now();
    run();
    sync();
    let once = t.elapsed().as_secs_f64().max(1e-7);
    let reps = ((0.1 / once).ceil() as usize).clamp(1, 1000);
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            (0..reps).for_each(|_| run());
            sync();
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    flops / samples[2] / 1e9
}

/// `--sizes 256,128x128x512`: a square size or an m x k x n shape each.
fn parse_sizes(s: &str) -> Vec<(usize, usize, usize)> {
    s.split(',')
        .map(|x| {
            let d: Vec<usize> = x.split('x').map(|v| v.parse().expect("--sizes N or MxKxN, comma-separated")).collect();
            match d[..] {
                [s] => (s, s, s),
                [m, k, n] => (m, k, n),
                _ => panic!("--sizes N or MxKxN, comma-separated; got {x}"),
            }
        })
        .collect()
}

fn workload_gemm(sizes: Option<String>) {
    let shapes: Vec<(usize, usize, usize)> = match sizes {
        Some(s) => parse_sizes(&s),
        None => {
            let mut v: Vec<_> = [64, 128, 256, 512, 1024, 2048].iter().map(|&s| (s, s, s)).collect();
            v.extend([(32, 784, 128), (128, 784, 128), (1024, 128, 512)]);
            v
        }
    };
    for (m, k, n) in shapes {
        if !dev().is_cpu() {
            let gflops = time_device_gemm(m, k, n);
            println!("{{\"workload\":\"gemm\",\"m\":{m},\"k\":{k},\"n\":{n},\"gflops\":{gflops:.1}{}}}", dev_json());
            continue;
        }
        let gflops = time_gemm(m, k, n);
        println!(
            "{{\"workload\":\"gemm\",\"m\":{m},\"k\":{k},\"n\":{n},\"gflops\":{gflops:.1},\"threads\":{},\"backend\":\"{}\"{}}}",
            rayon::current_num_threads(),
            gemm_backend(),
            dev_json()
        );
    }
}

/// The int8 product against the f32 one, per shape (`--sizes` as for `gemm`):
/// rows quantized to the best kernel's levels, as dynamic quantization does;
/// the slower kernels beside it where the CPU has them, and AVX2's wide
/// kernel (full-range rows, as static quantization gives) as `avx2_wide_gops`.
fn workload_int8_gemm(sizes: Option<String>) {
    use firebrand::ops::gemm::int8::quantize_rows_u8_into;
    use firebrand::ops::gemm::int8::{Kernel, QuantizedRows, QuantizedWeight, gemm_u8i8, int8_backend};
    let shapes = match sizes {
        Some(s) => parse_sizes(&s),
        None => vec![(1024, 1024, 1024), (4096, 384, 1536), (4096, 1536, 384)],
    };
    for (m, k, n) in shapes {
        let (x, w, b) = (fill(m * k, 1), fill(n * k, 2), fill(n, 3));
        let rows = |top: u8| {
            let mut q = QuantizedRows::default();
            quantize_rows_u8_into(&x, m, k, top, &mut q);
            q
        };
        let qw = QuantizedWeight::from_f32(&w, n, k);
        let qa = rows(qw.kernel().activation_top());
        let mut out = vec![0.0f32; m * n];
        let ops = 2.0 * (m * k * n) as f64;
        let secs = median_secs(|| gemm_u8i8(&qa, &qw, Some(&b), &mut out));
        let mut slower = String::new();
        let mut time = |kernel: Kernel, top: u8, field: &str| {
            let mut qv = qw.clone();
            qv.set_kernel(kernel);
            let qa = rows(top);
            let s = median_secs(|| gemm_u8i8(&qa, &qv, Some(&b), &mut out));
            slower += &format!(",\"{field}\":{:.1}", ops / s / 1e9);
        };
        for (kernel, field) in [(Kernel::Vnni, "vnni_gops"), (Kernel::Avx2, "avx2_gops")] {
            if qw.kernel() != kernel && kernel.available() {
                time(kernel, kernel.activation_top(), field);
            }
        }
        if Kernel::Avx2.available() {
            time(Kernel::Avx2, 255, "avx2_wide_gops");
        }
        println!(
            "{{\"workload\":\"int8_gemm\",\"m\":{m},\"k\":{k},\"n\":{n},\"int8_gops\":{:.1}{slower},\"fp32_gflops\":{:.1},\"int8_backend\":\"{}\",\"threads\":{}}}",
            ops / secs / 1e9,
            time_gemm(m, k, n),
            int8_backend(),
            rayon::current_num_threads()
        );
    }
}

/// `block_gemm [--sizes m×k×n,…] [--format q4_1|q4_0|q8_0]`: the block
/// product on SmolLM2's shapes, one token and a 128-token prompt: `gops`
/// and, for the weight streamed once, `weight_gb_per_s`.
fn workload_block_gemm(sizes: Option<String>, format: Option<String>) {
    use firebrand::ops::gemm::blocks::{BlockFormat, BlockWeight, gemm_blocks, quantize_rows_i16};
    let format = match format.as_deref().unwrap_or("q4_1") {
        "q4_1" => BlockFormat::Q4_1,
        "q4_0" => BlockFormat::Q4_0,
        "q8_0" => BlockFormat::Q8_0,
        f => panic!("--format {f}: expected q4_1, q4_0 or q8_0"),
    };
    let shapes = match sizes {
        Some(s) => parse_sizes(&s),
        None => vec![(1, 576, 1536), (1, 1536, 576), (1, 576, 49152), (128, 576, 1536), (128, 1536, 576)],
    };
    for (m, k, n) in shapes {
        let (x, w) = (fill(m * k, 1), fill(n * k, 2));
        let qw = BlockWeight::quantize(&w, n, k, format);
        let mut out = vec![0.0f32; m * n];
        let secs = median_secs(|| {
            let qa = quantize_rows_i16(&x, m, k);
            gemm_blocks(&qa, &qw, &mut out)
        });
        println!(
            "{}",
            serde_json::json!({
                "workload": "block_gemm", "format": format!("{format:?}"), "m": m, "k": k, "n": n,
                "gops": (2.0 * (m * k * n) as f64 / secs / 1e8).round() / 10.0,
                "weight_gb_per_s": (qw.bytes() as f64 / secs / 1e8).round() / 10.0,
                "fp32_gflops": (time_gemm(m, k, n) * 10.0).round() / 10.0,
                "threads": rayon::current_num_threads(),
            })
        );
    }
}

/// The median seconds of 5 timed batches of `run` (each batch about 60 ms), after a warm-up.
fn median_secs(mut run: impl FnMut()) -> f64 {
    run();
    let t = Instant::now();
    run();
    let once = t.elapsed().as_secs_f64().max(1e-7);
    let reps = ((0.06 / once).ceil() as usize).clamp(1, 10_000);
    let mut samples: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                run();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[2]
}

/// FMA throughput: independent accumulator chains on every thread at once.
/// Each thread times its own runs (after a warm-up that lets the clock ramp)
/// and keeps its best; the machine's figure is the sum over threads.
fn workload_peak() {
    let threads = rayon::current_num_threads();
    let iters: u64 = 20_000_000;
    let per_thread: Vec<f64> = rayon::broadcast(|_| {
        peak_thread(iters);
        (0..5)
            .map(|_| {
                let t = Instant::now();
                let flops = peak_thread(iters);
                flops / t.elapsed().as_secs_f64()
            })
            .fold(0.0, f64::max)
    });
    println!(
        "{{\"workload\":\"peak\",\"threads\":{threads},\"gflops\":{:.1},\"isa\":\"{}\"}}",
        per_thread.iter().sum::<f64>() / 1e9,
        peak_isa()
    );
}

/// The instruction set `peak_thread` measured.
fn peak_isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if is_avx512() {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("fma") {
            return "fma256";
        }
    }
    "scalar-fallback"
}

fn is_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn peak_thread(iters: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if is_avx512() {
        // SAFETY: avx512f detected above.
        return unsafe { peak_avx512(iters) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: avx and fma detected above (fma implies avx).
        return unsafe { peak_fma256(iters) };
    }
    let mut acc = [1.0f32; 8];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = a.mul_add(0.999_999, 1e-7);
        }
    }
    std::hint::black_box(acc);
    iters as f64 * 16.0
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn peak_avx512(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    const CHAINS: usize = 16;
    let mut acc = [_mm512_set1_ps(1.0); CHAINS];
    let x = _mm512_set1_ps(0.999_999);
    let y = _mm512_set1_ps(1e-7);
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, x, y);
        }
    }
    std::hint::black_box(&acc);
    iters as f64 * (CHAINS * 16 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,fma")]
unsafe fn peak_fma256(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    const CHAINS: usize = 12;
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    let x = _mm256_set1_ps(0.999_999);
    let y = _mm256_set1_ps(1e-7);
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(*a, x, y);
        }
    }
    std::hint::black_box(&acc);
    iters as f64 * (CHAINS * 8 * 2) as f64
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), if known.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Fashion-MNIST train and test sets, images flattened to 784 (`flat`) or
/// kept as `(N, 1, 28, 28)`.
fn fashion_mnist(data: Option<String>, flat: bool) -> (firebrand::data::TensorDataset, firebrand::data::TensorDataset) {
    use firebrand::data::{Dataset, TensorDataset, load_fashion_mnist};
    let (_, train, test) = load_fashion_mnist(data.as_deref().map(std::path::Path::new)).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    let flatten = |d: TensorDataset| TensorDataset { x: d.x.reshape([d.len(), 784]), y: d.y };
    if flat { (flatten(train), flatten(test)) } else { (train, test) }
}

fn workload_mlp(epochs: usize, data: Option<String>, seed: u64) {
    use firebrand::prelude::*;
    let (train, test) = fashion_mnist(data, true);
    manual_seed(seed);
    let net = common::fashion_mlp();
    train_classifier("mlp", net, &train, &test, epochs, seed);
}

fn workload_cnn(epochs: usize, data: Option<String>, seed: u64) {
    use firebrand::prelude::*;
    let (train, test) = fashion_mnist(data, false);
    manual_seed(seed);
    let net = common::fashion_cnn();
    train_classifier("cnn", net, &train, &test, epochs, seed);
}

/// Adam 1e-3, batch 32, cross-entropy; one JSON line per epoch.
fn train_classifier(
    name: &str,
    net: firebrand::nn::Sequential,
    train: &firebrand::data::TensorDataset,
    test: &firebrand::data::TensorDataset,
    epochs: usize,
    seed: u64,
) {
    use firebrand::prelude::*;
    let adam = Adam::new(net.named_parameters(), 1e-3);
    let mut model = Model::new(net, adam, Loss::CROSS_ENTROPY);
    model.to_device(dev()).expect("the device");
    let opts = FitOptions { epochs, batch_size: 32, verbose: false, prefetch: 2, ..Default::default() };
    for epoch in 0..epochs {
        // One epoch at a time so each line prints as soon as it is known; the
        // shuffle seed moves with the epoch as in a single multi-epoch fit.
        let h = model
            .fit(train, &FitOptions { epochs: 1, seed: seed * 1000 + epoch as u64, ..opts.clone() })
            .expect("no checkpoint");
        let acc = model.evaluate(test, 1000).metrics.expect("classifier").accuracy;
        let mem = peak_rss_mb().map_or("null".to_string(), |m| format!("{m:.0}"));
        println!(
            "{{\"workload\":\"{name}\",\"lib\":\"firebrand\",\"epoch\":{},\"train_seconds\":{:.3},\"train_loss\":{:.4},\"test_accuracy\":{:.4},\"peak_rss_mb\":{mem}{}}}",
            epoch + 1,
            h.epochs[0].train_seconds,
            h.epochs[0].loss,
            acc,
            dev_json()
        );
    }
}

/// The Shakespeare corpus: `--text`, `$FIREBRAND_DATA/shakespeare/`, or the standard places.
fn shakespeare(explicit: Option<String>) -> String {
    firebrand::data::read_text("shakespeare", "shakespeare.txt", explicit.as_deref().map(std::path::Path::new))
        .unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(2)
        })
        .1
}

fn workload_char_lstm(text: Option<String>, chars: usize, seed: u64) {
    use firebrand::data::{CharVocab, TextWindows};
    use firebrand::nn::loss::cross_entropy;
    use firebrand::nn::{LSTM, OneHot};
    use firebrand::prelude::*;
    let text = shakespeare(text);
    let vocab = CharVocab::build(&text); // every character of the file, as the PyTorch side
    let head: String = text.chars().take(chars).collect();
    let tokens = vocab.encode(&head).expect("the vocabulary covers the text");
    let (train, val) = TextWindows::new(tokens, 40, 3).split_tail(0.1);
    manual_seed(seed);
    let v = vocab.len();
    let mut net = Sequential::new()
        .add(OneHot(v)) // (B, 40) -> (B, 40, V)
        .add(LSTM::new(v, 128).return_sequences(false)) // (B, 128)
        .add(Linear::new(128, v)); // (B, V)
    let mut adam = Adam::new(net.named_parameters(), 1e-3);
    net.to_device(dev()).expect("the device");
    let loader = DataLoader::new(train.clone(), 128).shuffle(seed).prefetch(2);
    let t0 = Instant::now();
    for (x, y) in loader.epoch(0) {
        let (x, y) = (on(&x), on(&y));
        let loss = cross_entropy(&net.forward(&x), Target::Indices(&y), 0.0, Reduction::Mean).expect("shapes");
        adam.zero_grad();
        loss.backward();
        adam.step();
    }
    sync();
    let secs = t0.elapsed().as_secs_f64();
    net.eval();
    let (mut total, mut n) = (0.0f64, 0usize);
    with_no_grad(|| {
        for (x, y) in DataLoader::new(val, 1024).epoch(0) {
            let (x, y) = (on(&x), on(&y));
            let l = cross_entropy(&net.forward(&x), Target::Indices(&y), 0.0, Reduction::Sum).expect("shapes");
            total += l.item() as f64;
            n += y.elem_count();
        }
    });
    println!(
        "{{\"workload\":\"char_lstm\",\"lib\":\"firebrand\",\"epoch\":1,\"samples_per_second\":{:.1},\"val_loss\":{:.4},\"train_seconds\":{:.2},\"vocab\":{v}{}}}",
        train.len() as f64 / secs,
        total / n as f64,
        secs,
        dev_json()
    );
}

/// `count` windows of `context` tokens (and their targets) at evenly spaced
/// starts over `tokens`: `(count, context)` each. The PyTorch script uses
/// the same starts.
fn even_windows(tokens: &[i64], context: usize, count: usize) -> (firebrand::Tensor, firebrand::Tensor) {
    let span = tokens.len() - context - 1;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..count {
        let s = i * span / count;
        x.extend_from_slice(&tokens[s..s + context]);
        y.extend_from_slice(&tokens[s + 1..s + context + 1]);
    }
    (firebrand::Tensor::from_vec(x, [count, context]), firebrand::Tensor::from_vec(y, [count, context]))
}

fn workload_gpt(text: Option<String>, iters: usize, seed: u64) {
    use firebrand::data::{CharVocab, TokenBatches};
    use firebrand::optim::{CosineWithWarmup, clip_grad_norm, decay_matrices};
    use firebrand::prelude::*;
    let text = shakespeare(text);
    let vocab = CharVocab::build(&text);
    let tokens = vocab.encode(&text).expect("the vocabulary covers the text");
    let n_train = (0.9 * tokens.len() as f64) as usize;
    let (vx, vy) = even_windows(&tokens[n_train..], 64, 1200);
    let (vx, vy) = (on(&vx), on(&vy));
    let (train, _) = TokenBatches::split(tokens, 0.1, 64);
    manual_seed(seed);
    let gpt = Gpt::new(GptConfig::char_level(vocab.len()));
    gpt.to_device(dev()).expect("the device");
    let mut opt = AdamW::with_options(gpt.named_parameters(), 1e-3, (0.9, 0.99), 1e-8, 0.1, &decay_matrices);
    let schedule = CosineWithWarmup { base: 1e-3, warmup: 100, total: 2000, min_lr: 1e-4 };
    let params = gpt.parameters();
    let (mut train_secs, mut recent) = (0.0f64, Vec::new());
    for it in 0..iters {
        let t0 = Instant::now();
        opt.set_lr(schedule.lr_at(it));
        let (x, y) = train.batch(12, seed, it as u64);
        let loss = gpt.loss(&on(&x), &on(&y));
        opt.zero_grad();
        loss.backward();
        clip_grad_norm(&params, 1.0);
        opt.step();
        let l = loss.item();
        train_secs += t0.elapsed().as_secs_f64();
        recent.push(l);
        if recent.len() > 100 {
            recent.remove(0);
        }
        if (it + 1) % 500 == 0 || it + 1 == iters {
            let val = with_no_grad(|| {
                (0..100)
                    .map(|b| gpt.loss(&vx.narrow(0, 12 * b, 12), &vy.narrow(0, 12 * b, 12)).item() as f64)
                    .sum::<f64>()
                    / 100.0
            });
            println!(
                "{{\"workload\":\"gpt\",\"lib\":\"firebrand\",\"iter\":{},\"val_loss\":{val:.4},\"train_loss\":{:.4},\"ms_per_iter\":{:.2}{}}}",
                it + 1,
                recent.iter().sum::<f32>() / recent.len() as f32,
                1000.0 * train_secs / (it + 1) as f64,
                dev_json()
            );
        }
    }
}

fn workload_transformer_block(rounds: usize, seed: u64) {
    use firebrand::prelude::*;
    manual_seed(seed);
    let enc = TransformerEncoder::new((0..2).map(|_| TransformerEncoderLayer::new(512, 8, 2048)).collect());
    enc.to_device(dev()).expect("the device");
    let x = on(&Tensor::randn([8, 128, 512], 0.0, 1.0)); // (B, T, E)
    let forward_ms = median_ms(rounds, &mut || {
        with_no_grad(|| enc.forward(&x));
    });
    let forward_backward_ms = median_ms(rounds, &mut || {
        enc.zero_grad();
        enc.forward(&x).square().mean_all().backward();
    });
    println!(
        "{{\"workload\":\"transformer_block\",\"lib\":\"firebrand\",\"forward_ms\":{forward_ms:.2},\"forward_backward_ms\":{forward_backward_ms:.2}{}}}",
        dev_json()
    );
}

/// The median of `rounds` timings of `f` (ms), after one warm-up run; each
/// waits for the device.
fn median_ms(rounds: usize, f: &mut dyn FnMut()) -> f64 {
    f();
    sync();
    let mut runs: Vec<f64> = (0..rounds.max(1))
        .map(|_| {
            let t0 = Instant::now();
            f();
            sync();
            1000.0 * t0.elapsed().as_secs_f64()
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn workload_mobilenet_v2(rounds: usize, size: usize, modes: String) {
    use firebrand::nn::models::MobileNetV2;
    use firebrand::prelude::*;
    manual_seed(0);
    let mut net = MobileNetV2::new(1000);
    net.to_device(dev()).expect("the device");
    net.eval();
    let batches: &[usize] = if modes.contains("inference") { &[1, 16] } else { &[] };
    for &batch in batches {
        let x = on(&Tensor::randn([batch, 3, size, size], 0.0, 1.0));
        let ms = median_ms(rounds, &mut || {
            with_no_grad(|| net.forward(&x));
        });
        let mem = peak_rss_mb().map_or("null".to_string(), |m| format!("{m:.0}"));
        println!(
            "{{\"workload\":\"mobilenet_v2\",\"lib\":\"firebrand\",\"mode\":\"inference\",\"batch\":{batch},\"size\":{size},\"ms\":{ms:.2},\"images_per_second\":{:.2},\"peak_rss_mb\":{mem}{}}}",
            1000.0 * batch as f64 / ms,
            dev_json()
        );
    }
    if !modes.contains("train") {
        return;
    }
    net.train();
    let mut sgd = Sgd::with_options(net.named_parameters(), 0.01, 0.9, 0.0, false, 0.0);
    let x = on(&Tensor::randn([16, 3, size, size], 0.0, 1.0));
    let y = on(&Tensor::from_vec((0..16).map(|i| (i * 37) % 1000).collect::<Vec<i64>>(), [16]));
    let ms = median_ms(rounds, &mut || {
        let loss = Loss::CROSS_ENTROPY.compute(&net.forward(&x), &y);
        sgd.zero_grad();
        loss.backward();
        sgd.step();
    });
    let mem = peak_rss_mb().map_or("null".to_string(), |m| format!("{m:.0}"));
    println!(
        "{{\"workload\":\"mobilenet_v2\",\"lib\":\"firebrand\",\"mode\":\"train\",\"batch\":16,\"size\":{size},\"train_step_ms\":{ms:.2},\"peak_rss_mb\":{mem}{}}}",
        dev_json()
    );
}
