//! Seeded random numbers. A per-thread generator (seeded with a fixed default,
//! like PyTorch's) serves `Tensor::rand`/`randn`, dropout masks and
//! initializers; [`manual_seed`] reseeds the calling thread's generator so a
//! seed reproduces a run exactly, and other threads (data loaders, parallel
//! tests) cannot perturb its sequence. The `_with` forms take any `rand::Rng`.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, SeedableRng};
use std::cell::RefCell;

const DEFAULT_SEED: u64 = 0x5EED_F12E_B2A4_D000;

thread_local! {
    static GENERATOR: RefCell<Xoshiro256PlusPlus> = RefCell::new(Xoshiro256PlusPlus::seed_from_u64(DEFAULT_SEED));
}

/// Reseeds this thread's generator (PyTorch's `torch.manual_seed`).
pub fn manual_seed(seed: u64) {
    GENERATOR.with(|g| *g.borrow_mut() = Xoshiro256PlusPlus::seed_from_u64(seed));
}

/// Runs `f` with this thread's generator.
pub(crate) fn with_global<R>(f: impl FnOnce(&mut Xoshiro256PlusPlus) -> R) -> R {
    GENERATOR.with(|g| f(&mut g.borrow_mut()))
}

/// A uniform sample in `[0, 1)` with 24 random bits.
pub(crate) fn unit<R: Rng + ?Sized>(rng: &mut R) -> f32 {
    (rng.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
}

/// `n` uniform samples in `[lo, hi)`.
pub(crate) fn uniform<R: Rng + ?Sized>(rng: &mut R, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| lo + (hi - lo) * unit(rng)).collect()
}

/// `n` normal samples (Box–Muller in f64).
pub(crate) fn normal<R: Rng + ?Sized>(rng: &mut R, n: usize, mean: f32, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push(mean + std * (r * t.cos()) as f32);
        out.push(mean + std * (r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}
