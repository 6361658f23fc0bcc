//! Tensors on `Device::Wgpu(0)` through the user-facing API (facade feature
//! `wgpu`): a two-layer network's forward pass, loss and gradients equal
//! the CPU's; without an adapter the test says so (and fails under `CI=true`).
#![cfg(feature = "wgpu")]

use firebrand::prelude::*;

#[test]
fn a_network_trains_on_the_device_with_the_cpus_values_and_gradients() {
    let dev = Device::Wgpu(0);
    if let Err(e) = Tensor::zeros([1]).to_device(dev) {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but no wgpu adapter: {e}");
        eprintln!("SKIPPED: no wgpu adapter ({e})");
        return;
    }
    assert!(!firebrand::wgpu::adapters().is_empty());
    manual_seed(1);
    let x = Tensor::randn([37, 13], 0.0, 1.0);
    let y = Tensor::randn([37, 3], 0.0, 1.0);
    let params = [
        Tensor::randn([13, 21], 0.0, 0.3),
        Tensor::randn([21], 0.0, 0.1),
        Tensor::randn([21, 3], 0.0, 0.3),
        Tensor::randn([3], 0.0, 0.1),
    ];
    let run = |device: Device| {
        let p: Vec<Tensor> = params.iter().map(|t| t.to_device(device).unwrap().requires_grad_(true)).collect();
        let (x, y) = (x.to_device(device).unwrap(), y.to_device(device).unwrap());
        let h = x.matmul(&p[0]).add(&p[1]).relu();
        let out = h.matmul(&p[2]).add(&p[3]).log_softmax(-1);
        let loss = out.sub(&y).square().mean_all();
        assert_eq!(loss.device(), device);
        loss.backward();
        let mut v = vec![loss.to_vec::<f32>()];
        v.extend(p.iter().map(|t| t.grad().expect("gradient").to_vec::<f32>()));
        v
    };
    let (cpu, gpu) = (run(Device::Cpu), run(dev));
    for (i, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
        let scale = c.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        for (a, b) in c.iter().zip(g) {
            assert!((a - b).abs() <= 1e-4 * scale, "output {i}: cpu {a} vs wgpu {b}");
        }
    }
    // A primitive without a kernel yet is an error naming it and the device.
    let t = Tensor::ones([2, 2]).to_device(dev).unwrap();
    let e = t.try_index_select(0, &Tensor::from_vec(vec![0i64], [1]).to_device(dev).unwrap()).unwrap_err();
    assert!(e.to_string().contains("index_select") && e.to_string().contains("wgpu:0"), "{e}");
}
