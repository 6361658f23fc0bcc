//! Choosing the next token from a model's scores: greedy, temperature,
//! top-k and top-p (nucleus) sampling, seeded.

use firebrand_autograd::Tensor;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// How [`Sampler::sample`] picks a token from logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The highest score (ties: the first).
    Greedy,
    /// Draw from `softmax(logits / t)`.
    Temperature(f32),
    /// Draw from the `k` highest scores only, at temperature `t`.
    TopK(usize, f32),
    /// Draw from the smallest set of top tokens whose probability reaches `p`,
    /// at temperature `t` (nucleus sampling).
    TopP(f32, f32),
}

/// A sampling strategy with its own seeded generator: the same seed and
/// logits give the same tokens.
///
/// ```
/// use firebrand_nn::{Sampler, Sampling};
/// let logits = [1.0, 3.0, 0.5, 2.9];
/// assert_eq!(Sampler::new(Sampling::Greedy, 0).sample(&logits), 1);
/// let mut s = Sampler::new(Sampling::TopK(2, 1.0), 7);
/// assert!((0..50).map(|_| s.sample(&logits)).all(|t| t == 1 || t == 3));
/// ```
#[derive(Debug, Clone)]
pub struct Sampler {
    strategy: Sampling,
    rng: Xoshiro256PlusPlus,
}

impl Sampler {
    /// A sampler seeded with `seed`.
    ///
    /// # Panics
    /// On a non-positive temperature, `k == 0`, or `p` outside `(0, 1]`.
    pub fn new(strategy: Sampling, seed: u64) -> Sampler {
        let temp_ok = |t: f32| t > 0.0 && t.is_finite();
        match strategy {
            Sampling::Greedy => {}
            Sampling::Temperature(t) => assert!(temp_ok(t), "Sampling: temperature must be positive, got {t}"),
            Sampling::TopK(k, t) => assert!(k > 0 && temp_ok(t), "Sampling: top-k needs k > 0 and t > 0, got {k}, {t}"),
            Sampling::TopP(p, t) => {
                assert!(p > 0.0 && p <= 1.0 && temp_ok(t), "Sampling: top-p needs p in (0, 1] and t > 0, got {p}, {t}")
            }
        }
        Sampler { strategy, rng: Xoshiro256PlusPlus::seed_from_u64(seed) }
    }

    /// The strategy.
    pub fn strategy(&self) -> Sampling {
        self.strategy
    }

    /// Picks a token id from `logits` (one score per token).
    ///
    /// # Panics
    /// When `logits` is empty.
    pub fn sample(&mut self, logits: &[f32]) -> usize {
        assert!(!logits.is_empty(), "Sampler: no logits");
        self.sample_tensor(&Tensor::from_slice(logits, [logits.len()]))
    }

    /// Picks a token id from a 1-D tensor of logits: the tensor ops PyTorch
    /// code uses (`softmax`, then `topk`, or `sort` and `cumsum` for the
    /// nucleus), then one draw from the kept tokens.
    ///
    /// # Panics
    /// When `logits` is not a non-empty 1-D tensor.
    pub fn sample_tensor(&mut self, logits: &Tensor) -> usize {
        assert!(
            logits.rank() == 1 && logits.elem_count() > 0,
            "Sampler: logits must be 1-D and non-empty, got {:?}",
            logits.dims()
        );
        let n = logits.elem_count();
        let t = match self.strategy {
            Sampling::Greedy => return logits.argmax(0, false).to_vec::<i64>()[0] as usize,
            Sampling::Temperature(t) | Sampling::TopK(_, t) | Sampling::TopP(_, t) => t,
        };
        let probs = logits.detach().to_dtype(firebrand_autograd::DType::F32).affine(1.0 / t, 0.0).softmax(-1);
        // The kept probabilities, from the most likely, and their token ids.
        let (kept, ids) = match self.strategy {
            Sampling::TopK(k, _) => probs.topk(k.min(n), 0, true),
            Sampling::TopP(p, _) => {
                let (sorted, ids) = probs.sort(0, true);
                // The smallest prefix whose probability reaches p.
                let below = sorted.cumsum(0).lt(&Tensor::scalar(p)).sum(&[], false).to_vec::<i64>()[0] as usize;
                let keep = (below + 1).min(n);
                (sorted.narrow(0, 0, keep), ids.narrow(0, 0, keep))
            }
            _ => probs.sort(0, true),
        };
        let (kept, ids) = (kept.to_vec::<f32>(), ids.to_vec::<i64>());
        let total: f32 = kept.iter().sum();
        let mut u = self.rng.random::<f32>() * total;
        for (p, &i) in kept.iter().zip(&ids) {
            if u < *p {
                return i as usize;
            }
            u -= p;
        }
        ids[ids.len() - 1] as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freq(s: &mut Sampler, logits: &[f32], n: usize) -> Vec<f64> {
        let mut c = vec![0.0; logits.len()];
        for _ in 0..n {
            c[s.sample(logits)] += 1.0 / n as f64;
        }
        c
    }

    #[test]
    fn strategies_draw_from_the_right_distributions() {
        let logits = [0.0f32, 1.0, 2.0, -1.0];
        let soft: Vec<f64> = {
            let e: Vec<f64> = logits.iter().map(|v| (*v as f64).exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|v| v / z).collect()
        };
        let f = freq(&mut Sampler::new(Sampling::Temperature(1.0), 1), &logits, 40_000);
        for (a, b) in f.iter().zip(&soft) {
            assert!((a - b).abs() < 0.01, "{f:?} vs {soft:?}");
        }
        // Low temperature approaches greedy; top-k keeps k; top-p keeps the nucleus.
        let f = freq(&mut Sampler::new(Sampling::Temperature(0.05), 2), &logits, 2000);
        assert!(f[2] > 0.99);
        let f = freq(&mut Sampler::new(Sampling::TopK(2, 1.0), 3), &logits, 20_000);
        assert_eq!((f[0], f[3]), (0.0, 0.0));
        assert!((f[2] - soft[2] / (soft[1] + soft[2])).abs() < 0.015);
        // soft ≈ [0.087, 0.237, 0.644, 0.032]: p = 0.8 needs the top two.
        let f = freq(&mut Sampler::new(Sampling::TopP(0.8, 1.0), 4), &logits, 20_000);
        assert_eq!((f[0], f[3]), (0.0, 0.0));
        let f = freq(&mut Sampler::new(Sampling::TopP(0.5, 1.0), 4), &logits, 1000);
        assert!((f[2] - 1.0).abs() < 1e-9, "{f:?}");
        // Same seed, same draws.
        let draw = |seed| {
            (0..100)
                .map(|_| 0)
                .scan(Sampler::new(Sampling::TopP(0.9, 0.8), seed), |s, _: i32| Some(s.sample(&logits)))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        assert_ne!(draw(9), draw(10));
    }
}
