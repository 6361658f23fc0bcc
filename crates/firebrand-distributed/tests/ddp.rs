//! DistributedDataParallel on 2 ranks (mpirun on loopback) against 1 process
//! at twice the batch; overlap of bucket all-reduces with backward.

mod common;
use common::*;
use firebrand_autograd::{Tensor, manual_seed};
use firebrand_data::{DataLoader, DistributedSampler, TokenBatches, digits};
use firebrand_distributed::{DdpOptions, DistributedDataParallel, ProcessGroup};
use firebrand_nn::loss::{Reduction, Target, cross_entropy};
use firebrand_nn::{Gpt, GptConfig, Linear, Module, ModuleExt, ReLU, Sequential};
use firebrand_optim::{AdamW, Optimizer, Sgd};
use std::time::Duration;

const STEPS: usize = 20;
const B: usize = 16;

fn mlp() -> Sequential {
    Sequential::new().add(Linear::new(64, 32)).add(ReLU).add(Linear::new(32, 10))
}

fn ce(out: &Tensor, y: &Tensor) -> Tensor {
    cross_entropy(out, Target::Indices(y), 0.0, Reduction::Mean).unwrap()
}

/// `STEPS` SGD steps of the MLP on digits from `loader`.
fn train_mlp(net: &impl Module, loader: &DataLoader) {
    let mut opt = Sgd::with_options(net.named_parameters(), 0.1, 0.9, 0.0, false, 0.0);
    for (x, y) in loader.epoch(0).take(STEPS) {
        let loss = ce(&net.forward(&x), &y);
        opt.zero_grad();
        loss.backward();
        opt.step();
    }
}

#[test]
#[ignore = "a worker: run by the mpirun tests"]
fn worker_mlp() {
    let Some(g) = worker_group() else { return };
    // Different initial weights on every rank: DDP must broadcast rank 0's.
    manual_seed(if g.rank() == 0 { 0 } else { 99 });
    let bf16 = std::env::var_os("FB_BF16").is_some();
    let ddp = DistributedDataParallel::with_options(mlp(), &g, DdpOptions { bf16, ..Default::default() }).unwrap();
    let loader = DataLoader::new(digits(), B).shuffle(3).sampler(DistributedSampler::new(0, g.rank(), g.world_size()));
    train_mlp(&ddp, &loader);
    write_f32(&out_dir().join(format!("rank{}", g.rank())), &flat_params(&ddp));
}

fn mlp_reference() -> Vec<f32> {
    manual_seed(0);
    let net = mlp();
    train_mlp(&net, &DataLoader::new(digits(), 2 * B).shuffle(3));
    flat_params(&net)
}

fn check_mlp(btl: &str, bf16: bool, tol: f32) {
    let _one = exclusive();
    if !have_mpirun() {
        return;
    }
    let out = fresh_dir(&format!("mlp_{}_{bf16}", btl.replace(',', "_")));
    let env: &[(&str, &str)] = if bf16 { &[("FB_BF16", "1")] } else { &[] };
    let run = mpirun("worker_mlp", 2, btl, &out, &[], env);
    assert!(run.output.status.success(), "mpirun failed:\n{}", run.text);
    let (r0, r1) = (read_f32(&out.join("rank0")), read_f32(&out.join("rank1")));
    assert_eq!(r0, r1, "the ranks' parameters differ");
    let reference = mlp_reference();
    let d = max_diff(&r0, &reference);
    assert!(d < tol, "2 ranks × {B} vs 1 × {}: max |Δ| = {d:e} over {} parameters ({btl})", 2 * B, r0.len());
    eprintln!("mlp over {btl} (bf16 {bf16}): max |Δ| {d:e} vs one process at batch {}", 2 * B);
}

#[test]
fn mlp_two_ranks_equal_one_rank_at_twice_the_batch_over_shared_memory() {
    check_mlp("self,vader", false, 1e-5);
}

#[test]
fn mlp_two_ranks_equal_one_rank_at_twice_the_batch_over_tcp() {
    check_mlp("self,tcp", false, 1e-5);
}

#[test]
fn bf16_gradients_stay_close_to_f32_training() {
    check_mlp("self,vader", true, 2e-2);
}

/// GPT: `STEPS` AdamW steps on random windows of a token stream.
fn train_gpt(gpt: &Gpt, batch: impl Fn(u64) -> (Tensor, Tensor)) {
    let mut opt = AdamW::new(gpt.named_parameters(), 1e-3);
    for step in 0..10u64 {
        let (x, y) = batch(step);
        let loss = gpt.loss(&x, &y);
        opt.zero_grad();
        loss.backward();
        opt.step();
    }
}

fn gpt_config() -> GptConfig {
    GptConfig { vocab_size: 31, context: 16, layers: 2, heads: 2, embed: 32, dropout: 0.0 }
}

fn token_stream() -> TokenBatches {
    TokenBatches::new((0..4000).map(|i| (i * 7 + i / 13) % 31).collect(), 16)
}

#[test]
#[ignore = "a worker: run by the mpirun tests"]
fn worker_gpt() {
    let Some(g) = worker_group() else { return };
    manual_seed(if g.rank() == 0 { 0 } else { 5 });
    let ddp = DistributedDataParallel::new(Gpt::new(gpt_config()), &g).unwrap();
    let tb = token_stream();
    train_gpt(ddp.module(), |s| tb.batch_shard(4, 11, s, g.rank(), g.world_size()));
    write_f32(&out_dir().join(format!("rank{}", g.rank())), &flat_params(&ddp));
}

fn check_gpt(btl: &str) {
    let _one = exclusive();
    if !have_mpirun() {
        return;
    }
    let out = fresh_dir(&format!("gpt_{}", btl.replace(',', "_")));
    let run = mpirun("worker_gpt", 2, btl, &out, &[], &[]);
    assert!(run.output.status.success(), "mpirun failed:\n{}", run.text);
    let (r0, r1) = (read_f32(&out.join("rank0")), read_f32(&out.join("rank1")));
    assert_eq!(r0, r1, "the ranks' parameters differ");
    manual_seed(0);
    let gpt = Gpt::new(gpt_config());
    let tb = token_stream();
    train_gpt(&gpt, |s| tb.batch(8, 11, s));
    let d = max_diff(&r0, &flat_params(&gpt));
    assert!(d < 1e-5, "GPT, 2 ranks × 4 vs 1 × 8: max |Δ| = {d:e} ({btl})");
    eprintln!("gpt over {btl}: max |Δ| {d:e} over {} parameters", r0.len());
}

#[test]
fn gpt_two_ranks_equal_one_rank_at_twice_the_batch_over_shared_memory() {
    check_gpt("self,vader");
}

#[test]
fn gpt_two_ranks_equal_one_rank_at_twice_the_batch_over_tcp() {
    check_gpt("self,tcp");
}

/// Four 768-wide layers in four buckets; a wide first layer makes the
/// rest of backward long after the last layer's bucket is sent.
fn wide() -> Sequential {
    let mut s = Sequential::new().add(Linear::new(1024, 768)).add(ReLU);
    for _ in 0..3 {
        s = s.add(Linear::new(768, 768)).add(ReLU);
    }
    s
}

#[test]
#[ignore = "a worker: run by the mpirun tests"]
fn worker_overlap() {
    let Some(g) = worker_group() else { return };
    manual_seed(1);
    let opts = DdpOptions { bucket_cap_mb: 2.5, first_bucket_mb: 2.5, record_events: true, ..Default::default() };
    let ddp = DistributedDataParallel::with_options(wide(), &g, opts).unwrap();
    // On two cores both ranks' compute threads keep the cores busy and the
    // communication threads get slices only; a pause in the middle of
    // backward (once bucket 0 is sent: param 3 is produced after bucket 0's
    // last, param 5) stands for the long rest of backward on a real model.
    let _pause = ddp.module().named_parameters()[3]
        .1
        .register_post_accumulate_grad_hook(|_| std::thread::sleep(std::time::Duration::from_millis(300)));
    let x = Tensor::randn([512, 1024], 0.0, 1.0);
    let mut log = String::new();
    for _ in 0..3 {
        ddp.forward(&x).square().mean_all().backward();
        log.push_str(&format!("{:?}\n", ddp.take_events()));
    }
    // Gradient accumulation: no all-reduce at all under no_sync.
    {
        let _g = ddp.no_sync();
        ddp.forward(&x).square().mean_all().backward();
    }
    log.push_str(&format!("{:?}\n", ddp.take_events()));
    log.push_str(&format!("buckets {:?}\n", ddp.reducer().buckets()));
    std::fs::write(out_dir().join(format!("rank{}", g.rank())), log).unwrap();
}

#[test]
fn bucket_all_reduces_complete_before_backward_ends() {
    let _one = exclusive();
    if !have_mpirun() {
        return;
    }
    let out = fresh_dir("overlap");
    let run = mpirun("worker_overlap", 2, "self,vader", &out, &[], &[]);
    assert!(run.output.status.success(), "mpirun failed:\n{}", run.text);
    for r in 0..2 {
        let text = std::fs::read_to_string(out.join(format!("rank{r}"))).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[4].starts_with("buckets [[7, 6, 5], [4, 3], [2, 1], [0]]"), "{text}");
        let mut overlapped = 0;
        for iter in &lines[..3] {
            let pos = |needle: &str| iter.find(needle).unwrap_or_else(|| panic!("no {needle} in {iter}"));
            let end = pos("BackwardEnd");
            // Every time: the last layer's bucket is sent before the first
            // layer's weight gradient exists, the others before backward ends.
            assert!(pos("BucketLaunched { bucket: 0 }") < pos("GradReady { param: 0 }"), "{iter}");
            assert!(pos("BucketLaunched { bucket: 2 }") < end, "{iter}");
            // And it comes back during backward, unless the other rank was
            // late that time (a loaded machine): at least once in three.
            overlapped += usize::from(pos("BucketReduced { bucket: 0 }") < end);
        }
        assert!(overlapped >= 1, "bucket 0 was never reduced during backward:\n{text}");
        assert_eq!(lines[3], "[]", "no_sync still reduced: {}", lines[3]);
    }
}

#[test]
#[ignore = "a worker: run by the mpirun tests"]
fn worker_fault() {
    let Some(g) = worker_group() else { return };
    g.set_timeout(Duration::from_secs(3));
    manual_seed(0);
    let ddp = DistributedDataParallel::new(mlp(), &g).unwrap();
    let x = Tensor::randn([8, 64], 0.0, 1.0);
    let how = std::env::var("FB_FAULT").unwrap();
    for step in 0.. {
        if g.rank() == 1 && step == 3 {
            match how.as_str() {
                // SAFETY: signals to this process.
                "kill" => unsafe {
                    libc::raise(libc::SIGKILL);
                },
                "stall" => unsafe {
                    libc::raise(libc::SIGSTOP);
                },
                _ => unreachable!(),
            };
        }
        if let Err(e) = ddp.forward(&x).square().mean_all().try_backward() {
            firebrand_distributed::eprint_line(&format!("rank {} at step {step}: {e}", g.rank()));
            std::process::exit(3);
        }
    }
}

fn check_fault(how: &str, extra: &[&str]) -> Run {
    let out = fresh_dir(&format!("fault_{how}"));
    let run = mpirun("worker_fault", 2, "self,vader,tcp", &out, extra, &[("FB_FAULT", how)]);
    // Under --enable-recovery mpirun itself exits 0 whatever the ranks do;
    // the survivor's abort is checked from its message instead.
    if extra.is_empty() {
        assert!(!run.output.status.success(), "the job succeeded:\n{}", run.text);
    }
    assert!(run.elapsed < Duration::from_secs(30), "took {:?}:\n{}", run.elapsed, run.text);
    eprintln!("--- {how} ({:?}) ---\n{}", run.elapsed, run.text);
    run
}

#[test]
fn a_stalled_rank_is_named_by_the_other_within_the_timeout() {
    let _one = exclusive();
    if !have_mpirun() {
        return;
    }
    let run = check_fault("stall", &[]);
    assert!(
        run.text.contains(
            "rank 0 at step 3: distributed: rank 0: rank 1 did not reach the all-reduce of gradient bucket 0"
        ),
        "{}",
        run.text
    );
    assert!(run.text.contains("within 3s"), "{}", run.text);
}

#[test]
fn a_killed_rank_stops_the_other_with_a_message_naming_it() {
    let _one = exclusive();
    if !have_mpirun() {
        return;
    }
    // mpirun's own supervision notices the death and ends the job.
    let run = check_fault("kill", &[]);
    assert!(run.text.contains("rank 1") && run.text.contains("signal 9"), "{}", run.text);
    // With Open MPI's recovery on, the survivor runs on into its timeout and names the rank.
    let run = check_fault("kill", &["--enable-recovery"]);
    assert!(run.text.contains("rank 0 at step 3: distributed: rank 0: rank 1 did not reach"), "{}", run.text);
    assert!(
        run.text.contains("rank 0: ending the MPI job (MPI_Abort)"),
        "the survivor did not end the job:\n{}",
        run.text
    );
}

#[test]
#[ignore = "a worker: run by the mpirun tests"]
fn worker_late_start() {
    if !is_worker() {
        return;
    }
    let rank: usize = std::env::var("OMPI_COMM_WORLD_RANK").unwrap().parse().unwrap();
    if rank == 1 {
        // Rank 1 is not reachable for longer than rank 0 waits.
        std::thread::sleep(Duration::from_secs(15));
    }
    match ProcessGroup::world() {
        Ok(_) => println!("rank {rank} started"),
        Err(e) => {
            firebrand_distributed::eprint_line(&format!("rank {rank}: {e}"));
            std::process::exit(3);
        }
    }
}

#[test]
fn a_rank_that_cannot_reach_the_others_at_start_up_says_so() {
    let _one = exclusive();
    if !have_mpirun() {
        return;
    }
    let out = fresh_dir("late_start");
    let run = mpirun("worker_late_start", 2, "self,vader", &out, &[], &[("FIREBRAND_DIST_TIMEOUT", "2")]);
    assert!(!run.output.status.success(), "the job succeeded:\n{}", run.text);
    // Open MPI's MPI_Init waits for every rank (then no rank can be named), or
    // returns and the check-in names the missing one.
    let init = run.text.contains("rank 0: distributed start-up: MPI did not start within 2s")
        && run.text.contains("the other ranks are not reachable");
    let check_in =
        run.text.contains("rank 0: distributed start-up: rank 0: rank 1 did not reach the start-up check-in");
    assert!(init || check_in, "{}", run.text);
    assert!(run.elapsed < Duration::from_secs(14), "took {:?}: rank 0 waited for rank 1", run.elapsed);
}
