//! Criterion benches of the gemm behind every layer: Firebrand's kernel against
//! `matrixmultiply` (the crate it replaced) on the same shapes.
//!
//! `cargo bench --bench gemm` (the workload runner, `cargo bench --bench workloads -- gemm`,
//! prints GFLOP/s for the README's comparison with NumPy and PyTorch).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use firebrand::ops::gemm::{MatRef, gemm};
use std::hint::black_box;
use std::time::Duration;

fn data(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect()
}

fn bench_gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm");
    group.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500)).sample_size(20);
    let shapes = [(64, 64, 64), (256, 256, 256), (512, 512, 512), (32, 784, 128), (128, 784, 128), (1024, 128, 512)];
    for (m, k, n) in shapes {
        let (a, b) = (data(m * k), data(k * n));
        let mut out = vec![0.0f32; m * n];
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let id = format!("{m}x{k}x{n}");
        group.bench_function(BenchmarkId::new("firebrand", &id), |bch| {
            bch.iter(|| {
                gemm(m, k, n, MatRef::row_major(black_box(&a), k), MatRef::row_major(&b, n), &mut out, n, false)
            })
        });
        // x·Wᵀ, as in a Linear layer whose weight is stored (out, in).
        let bt = data(n * k);
        group.bench_function(BenchmarkId::new("firebrand-nt", &id), |bch| {
            bch.iter(|| {
                gemm(m, k, n, MatRef::row_major(black_box(&a), k), MatRef::row_major(&bt, k).t(), &mut out, n, false)
            })
        });
        group.bench_function(BenchmarkId::new("matrixmultiply", &id), |bch| {
            bch.iter(|| unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    black_box(a.as_ptr()),
                    k as isize,
                    1,
                    b.as_ptr(),
                    n as isize,
                    1,
                    0.0,
                    out.as_mut_ptr(),
                    n as isize,
                    1,
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_gemm);
criterion_main!(benches);
