//! All-reduce bandwidth of 25 MB of f32 (a DDP bucket), through
//! `ProcessGroup` (the communication thread, the arrival check, f32 or
//! bf16), or straight through rsmpi's blocking `all_reduce_into` (`--raw`).
//!
//! ```text
//! cargo build --release -p firebrand-distributed --example allreduce_bandwidth
//! mpirun -np 2 --mca btl self,vader target/release/examples/allreduce_bandwidth [--raw] [--bf16] [--mb 25] [--reps 20]
//! mpirun -np 2 --mca btl self,tcp   target/release/examples/allreduce_bandwidth
//! ```
//!
//! Prints the median time of one all-reduce, the algorithm bandwidth
//! (bytes / time) and the bus bandwidth (× 2(n−1)/n, the bytes each rank
//! sends in a ring; comparable across world sizes, as nccl-tests reports).

use std::time::Instant;

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter().position(|x| x == name).and_then(|i| a.get(i + 1).cloned())
}

fn main() {
    let flag = |n: &str| std::env::args().any(|a| a == n);
    let mb: f64 = arg("--mb").map_or(25.0, |v| v.parse().expect("--mb MB"));
    let reps: usize = arg("--reps").map_or(20, |v| v.parse().expect("--reps N"));
    let n = (mb * 1e6 / 4.0) as usize;
    let mut times = Vec::with_capacity(reps);
    let (rank, size);
    if flag("--raw") {
        use mpi::collective::SystemOperation;
        use mpi::traits::*;
        let universe = mpi::initialize().expect("MPI starts");
        let world = universe.world();
        (rank, size) = (world.rank() as usize, world.size() as usize);
        let send = vec![1.0f32; n];
        let mut recv = vec![0.0f32; n];
        for i in 0..reps + 2 {
            world.barrier();
            let t0 = Instant::now();
            world.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
            if i >= 2 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        assert_eq!(recv[n / 2], size as f32);
        report(rank, size, mb, &mut times, "rsmpi all_reduce_into (blocking, main thread)");
    } else {
        let g = firebrand_distributed::ProcessGroup::world().expect("MPI starts");
        (rank, size) = (g.rank(), g.world_size());
        let t = firebrand_autograd::Tensor::ones([n]);
        let bf16 = flag("--bf16");
        let opts = firebrand_distributed::DdpOptions {
            bucket_cap_mb: mb * 2.0,
            first_bucket_mb: mb * 2.0,
            bf16,
            ..Default::default()
        };
        let t = t.requires_grad_(true);
        let reducer = firebrand_distributed::GradReducer::new(&g, vec![("t".into(), t.clone())], &opts).unwrap();
        for i in 0..reps + 2 {
            g.barrier().unwrap();
            t.zero_grad();
            let t0 = Instant::now();
            // backward gives t the gradient 1 everywhere; the reducer averages it.
            t.sum_all().backward();
            if i >= 2 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        assert_eq!(t.grad().unwrap().to_vec::<f32>()[n / 2], 1.0);
        drop(reducer);
        let what = if bf16 {
            "GradReducer, bf16 ring"
        } else {
            "GradReducer, f32 (MPI_Allreduce on the communication thread)"
        };
        report(rank, size, mb, &mut times, what);
    }
}

fn report(rank: usize, size: usize, mb: f64, times: &mut [f64], what: &str) {
    if rank != 0 {
        return;
    }
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    let algo = mb * 1e6 / med / 1e9;
    let bus = algo * 2.0 * (size as f64 - 1.0) / size as f64;
    println!(
        "{what}: {size} ranks, {mb} MB: median {:.2} ms, algorithm bandwidth {algo:.2} GB/s, bus bandwidth {bus:.2} GB/s",
        med * 1e3
    );
}
