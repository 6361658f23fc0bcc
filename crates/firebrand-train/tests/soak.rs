//! Soak tests, run with `cargo test --release -p firebrand-train --test soak -- --ignored --nocapture`
//! (figures in `docs/benchmarks.md`, section "Reliability"):
//! 20,000 MLP training steps with resident memory flat, and tensors used
//! from several threads at once.

use firebrand_autograd::{Tensor, manual_seed};
use firebrand_data::{DataLoader, digits};
use firebrand_nn::loss::{Reduction, Target, cross_entropy};
use firebrand_nn::{Activation, Dropout, Linear, Module, ModuleExt, Sequential};
use firebrand_optim::{Adam, Optimizer};
use std::sync::Arc;

/// Resident memory of this process, in KiB (Linux `/proc/self/statm`).
fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

#[test]
#[ignore = "soak: about a minute; run with --ignored"]
fn twenty_thousand_training_steps_with_flat_memory() {
    manual_seed(0);
    let net = Sequential::new()
        .add(Linear::new(64, 256).with_activation(Activation::Relu))
        .add(Dropout::new(0.1))
        .add(Linear::new(256, 10));
    let mut opt = Adam::new(net.named_parameters(), 1e-3);
    let loader = DataLoader::new(digits(), 32).shuffle(0);
    let (steps, mut step, mut samples) = (20_000usize, 0usize, Vec::new());
    let t0 = std::time::Instant::now();
    'outer: for epoch in 0.. {
        for (x, y) in loader.epoch(epoch) {
            let loss = cross_entropy(&net.forward(&x), Target::Indices(&y), 0.0, Reduction::Mean).unwrap();
            opt.zero_grad();
            loss.backward();
            opt.step();
            step += 1;
            if step % 1000 == 0 {
                samples.push((step, rss_kib(), loss.item()));
            }
            if step == steps {
                break 'outer;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    for (s, kib, loss) in &samples {
        println!("step {s:>6}: RSS {:.1} MiB, loss {loss:.4}", *kib as f64 / 1024.0);
    }
    // After warm-up (allocator pools, the loader's threads), memory stays put.
    let warm = samples[1].1; // at step 2,000
    let peak = samples[1..].iter().map(|s| s.1).max().unwrap();
    let last = samples.last().unwrap().1;
    println!(
        "{steps} steps in {secs:.1} s; RSS at 2k steps {:.1} MiB, peak after {:.1} MiB, at 20k {:.1} MiB (growth {:+.1} MiB)",
        warm as f64 / 1024.0,
        peak as f64 / 1024.0,
        last as f64 / 1024.0,
        (last as f64 - warm as f64) / 1024.0
    );
    assert!(last <= warm + 8 * 1024, "resident memory grew from {warm} KiB to {last} KiB: a leak");
    assert!(samples.last().unwrap().2 < 0.1, "the model trained");
}

#[test]
#[ignore = "soak: run with --ignored"]
fn tensors_are_shared_across_threads_without_a_race() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tensor>();
    manual_seed(1);
    // One shared leaf; every thread runs its own graphs through it and
    // accumulates into its one gradient, many times.
    let w = Arc::new(Tensor::randn([16, 8], 0.0, 1.0).requires_grad_(true));
    let xs: Vec<Tensor> = (0..8).map(|_| Tensor::randn([4, 16], 0.0, 1.0)).collect();
    let rounds = 200;
    let outputs: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = xs
            .iter()
            .map(|x| {
                let (w, x) = (Arc::clone(&w), x.clone());
                s.spawn(move || {
                    let mut last = Vec::new();
                    for _ in 0..rounds {
                        let y = x.matmul(&w).tanh();
                        y.sum_all().backward();
                        last = y.to_vec::<f32>();
                    }
                    last
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Forward values equal a single-threaded run's, bit for bit.
    for (x, out) in xs.iter().zip(&outputs) {
        assert_eq!(&x.matmul(&w.detach()).tanh().to_vec::<f32>(), out);
    }
    // The shared gradient is the sum of every thread's contributions.
    let one: Vec<Tensor> = xs
        .iter()
        .map(|x| {
            let w1 = w.detach().requires_grad_(true);
            x.matmul(&w1).tanh().sum_all().backward();
            w1.grad().unwrap()
        })
        .collect();
    let expected = one.iter().skip(1).fold(one[0].clone(), |a, g| a.add(g)).affine(rounds as f32, 0.0).to_vec::<f32>();
    let got = w.grad().unwrap().to_vec::<f32>();
    let worst = got.iter().zip(&expected).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0.0f32, f32::max);
    println!("{} threads x {rounds} backward passes into one leaf: worst relative difference {worst:.2e}", xs.len());
    // 1,600 f32 additions in another order: rounding up to about 1,600 · 2^-24 ≈ 1e-4.
    assert!(worst < 1e-3, "{worst}");
}
