//! Fits a small two-layer network to a noisy curve with hand-written gradient
//! descent: tensors, broadcasting, matmul, autograd and `no_grad` in one page.
//!
//! Run: `cargo run --release --example linear_regression -- [--steps 2000] [--lr 0.1] [--device cpu|wgpu]`

use clap::Parser;
use firebrand::prelude::*;

/// Gradient descent by hand on y = sin(3x) + noise.
#[derive(Parser)]
struct Args {
    /// Gradient-descent steps.
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
    #[command(flatten)]
    device: common::DeviceArg,
}

mod common;

fn main() {
    let args = Args::parse();
    manual_seed(7);
    // Data: y = sin(3x) + noise on 256 points.
    let dev = args.device.device;
    firebrand::set_float32_matmul_precision(args.device.matmul_precision);
    let on = |t: Tensor| t.to_device(dev).unwrap_or_else(|e| common::fail(e));
    let x = Tensor::rand([256, 1], -1.0, 1.0); // (N, 1)
    let y = on((&x * 3.0).sin() + Tensor::randn([256, 1], 0.0, 0.05)); // (N, 1)
    let x = on(x);

    // Parameters of a 1 -> 32 -> 1 tanh network, leaves on the device.
    let w1 = on(Tensor::randn([1, 32], 0.0, 1.0)).requires_grad_(true); // (1, H)
    let b1 = on(Tensor::zeros([32])).requires_grad_(true); // (H,)
    let w2 = on(Tensor::randn([32, 1], 0.0, 0.2)).requires_grad_(true); // (H, 1)
    let b2 = on(Tensor::zeros([1])).requires_grad_(true); // (1,)
    let params = [&w1, &b1, &w2, &b2];

    for step in 0..=args.steps {
        let h = (x.matmul(&w1) + &b1).tanh(); // (N, H)
        let pred = h.matmul(&w2) + &b2; // (N, 1)
        let loss = (&pred - &y).square().mean_all();
        loss.backward();
        for p in params {
            // PyTorch's `with torch.no_grad(): p -= lr * p.grad`, on any device.
            let g = p.grad().expect("every parameter gets a gradient");
            with_no_grad(|| p.set_data_(p - &(&g * args.lr))).unwrap();
            p.zero_grad();
        }
        if step % 400 == 0 {
            println!("step {step:5}  mse {:.5}", loss.item());
        }
    }
    let test = on(Tensor::from_vec(vec![-0.5f32, 0.0, 0.5], [3, 1]));
    let pred = with_no_grad(|| (test.matmul(&w1) + &b1).tanh().matmul(&w2) + &b2);
    println!("sin(3x) at x = -0.5, 0, 0.5: want [-0.997, 0.000, 0.997], got {pred}");
}
