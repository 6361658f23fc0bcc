//! Batch transforms for images (data augmentation and normalization), applied
//! by the [`DataLoader`](crate::DataLoader) to each batch's inputs.
//!
//! Inputs are `(N, C, H, W)` (or `(N, H, W)`, one channel). Random transforms
//! draw from a generator the loader seeds from `(seed, epoch, batch)`, so the
//! same seed gives the same augmented batches — with or without prefetch, and
//! after resuming from a checkpoint.

use firebrand_autograd::Tensor;
use rand::RngExt;
use rand::rngs::Xoshiro256PlusPlus;

/// Maps a batch of inputs to a new batch of inputs (torchvision's transforms,
/// applied per batch).
pub trait Transform: Send + Sync {
    /// Transforms `x` (`(N, …)`); random choices come from `rng`.
    ///
    /// # Panics
    /// On an input shape the transform cannot handle, naming the transform and the shape.
    fn apply(&self, x: &Tensor, rng: &mut Xoshiro256PlusPlus) -> Tensor;
}

/// Transforms applied in order (torchvision's `Compose`).
pub struct Compose(pub Vec<Box<dyn Transform>>);

impl Transform for Compose {
    fn apply(&self, x: &Tensor, rng: &mut Xoshiro256PlusPlus) -> Tensor {
        self.0.iter().fold(x.clone(), |x, t| t.apply(&x, rng))
    }
}

/// `(N, C, H, W)` of an image batch (`(N, H, W)` counts as one channel).
fn image_dims(x: &Tensor, name: &str) -> [usize; 4] {
    match *x.dims() {
        [n, c, h, w] => [n, c, h, w],
        [n, h, w] => [n, 1, h, w],
        _ => panic!("{name}: expected images (N, C, H, W) or (N, H, W), got {:?}", x.dims()),
    }
}

/// `(x - mean[c]) / std[c]` per channel (torchvision's `Normalize`). One value
/// each applies to every channel.
///
/// ```
/// use firebrand_data::{Normalize, Transform};
/// use firebrand_autograd::Tensor;
/// use rand::SeedableRng;
/// let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(0);
/// let y = Normalize::new(&[0.5], &[0.25]).apply(&Tensor::ones([2, 1, 2, 2]), &mut rng);
/// assert_eq!(y.to_vec::<f32>(), vec![2.0; 8]);
/// ```
#[derive(Debug, Clone)]
pub struct Normalize {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Normalize {
    /// Per-channel means and standard deviations.
    ///
    /// # Panics
    /// When the lists are empty, differ in length, or a std is not positive.
    pub fn new(mean: &[f32], std: &[f32]) -> Self {
        assert!(!mean.is_empty() && mean.len() == std.len(), "Normalize: {} means for {} stds", mean.len(), std.len());
        assert!(std.iter().all(|s| *s > 0.0), "Normalize: stds must be positive, got {std:?}");
        Normalize { mean: mean.to_vec(), std: std.to_vec() }
    }
}

impl Transform for Normalize {
    fn apply(&self, x: &Tensor, _rng: &mut Xoshiro256PlusPlus) -> Tensor {
        let [_, c, h, w] = image_dims(x, "Normalize");
        assert!(
            self.mean.len() == 1 || self.mean.len() == c,
            "Normalize: {} channel statistics for input {:?}",
            self.mean.len(),
            x.dims()
        );
        let mut v = x.to_vec::<f32>();
        for (i, plane) in v.chunks_exact_mut(h * w).enumerate() {
            let ch = if self.mean.len() == 1 { 0 } else { i % c };
            let (m, s) = (self.mean[ch], 1.0 / self.std[ch]);
            plane.iter_mut().for_each(|p| *p = (*p - m) * s);
        }
        Tensor::from_vec(v, x.shape().clone())
    }
}

/// Pads each image with `padding` zeros on every side, then crops a random
/// `H x W` window (torchvision's `RandomCrop(size, padding)` with the input's
/// size): shifts of up to `padding` pixels.
///
/// ```
/// use firebrand_data::{RandomCrop, Transform};
/// use firebrand_autograd::Tensor;
/// use rand::SeedableRng;
/// let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(0);
/// let x = Tensor::ones([4, 1, 28, 28]);
/// let y = RandomCrop::new(2).apply(&x, &mut rng);
/// assert_eq!(y.dims(), &[4, 1, 28, 28]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RandomCrop {
    padding: usize,
}

impl RandomCrop {
    /// Random shifts of up to `padding` pixels in each direction, zeros filling in.
    pub fn new(padding: usize) -> Self {
        RandomCrop { padding }
    }
}

impl Transform for RandomCrop {
    fn apply(&self, x: &Tensor, rng: &mut Xoshiro256PlusPlus) -> Tensor {
        let [n, c, h, w] = image_dims(x, "RandomCrop");
        let p = self.padding as isize;
        let src = x.to_vec::<f32>();
        let mut out = vec![0.0f32; src.len()];
        for b in 0..n {
            // Window origin in padded coordinates, 0..=2p; as a shift of the image:
            let dy = rng.random_range(0..=2 * p as i64) as isize - p;
            let dx = rng.random_range(0..=2 * p as i64) as isize - p;
            for ch in 0..c {
                let plane = (b * c + ch) * h * w;
                for y in 0..h as isize {
                    let sy = y + dy;
                    if !(0..h as isize).contains(&sy) {
                        continue;
                    }
                    for xx in 0..w as isize {
                        let sx = xx + dx;
                        if (0..w as isize).contains(&sx) {
                            out[plane + (y as usize) * w + xx as usize] = src[plane + (sy as usize) * w + sx as usize];
                        }
                    }
                }
            }
        }
        Tensor::from_vec(out, x.shape().clone())
    }
}

/// Mirrors each image left–right with probability `p` (torchvision's
/// `RandomHorizontalFlip`, default 0.5).
#[derive(Debug, Clone, Copy)]
pub struct RandomHorizontalFlip {
    p: f64,
}

impl RandomHorizontalFlip {
    /// Flip with probability `p`.
    ///
    /// # Panics
    /// When `p` is not in `[0, 1]`.
    pub fn new(p: f64) -> Self {
        assert!((0.0..=1.0).contains(&p), "RandomHorizontalFlip: p must be in [0, 1], got {p}");
        RandomHorizontalFlip { p }
    }
}

impl Default for RandomHorizontalFlip {
    fn default() -> Self {
        RandomHorizontalFlip::new(0.5)
    }
}

impl Transform for RandomHorizontalFlip {
    fn apply(&self, x: &Tensor, rng: &mut Xoshiro256PlusPlus) -> Tensor {
        let [n, c, h, w] = image_dims(x, "RandomHorizontalFlip");
        let mut v = x.to_vec::<f32>();
        for img in v.chunks_exact_mut(c * h * w).take(n) {
            if rng.random_bool(self.p) {
                img.chunks_exact_mut(w).for_each(|row| row.reverse());
            }
        }
        Tensor::from_vec(v, x.shape().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng(seed: u64) -> Xoshiro256PlusPlus {
        Xoshiro256PlusPlus::seed_from_u64(seed)
    }

    #[test]
    fn crop_shifts_each_image_within_the_padding() {
        // A 5x5 ramp per image; a shift (dy, dx) moves value v(y, x) to (y - dy, x - dx).
        let (n, h, w) = (64, 5, 5);
        let x = Tensor::from_vec((0..n * h * w).map(|i| (i % (h * w)) as f32 + 1.0).collect::<Vec<_>>(), [n, 1, h, w]);
        let y = RandomCrop::new(2).apply(&x, &mut rng(1)).to_vec::<f32>();
        let mut shifts = std::collections::HashSet::new();
        for img in y.chunks_exact(h * w) {
            // Find the shift from any surviving pixel, then check every pixel against it.
            let (i, v) = img.iter().enumerate().find(|(_, v)| **v != 0.0).expect("|shift| <= 2 keeps pixels");
            let (sy, sx) = ((*v as usize - 1) / w, (*v as usize - 1) % w);
            let (dy, dx) = (sy as isize - (i / w) as isize, sx as isize - (i % w) as isize);
            assert!(dy.abs() <= 2 && dx.abs() <= 2);
            for (j, got) in img.iter().enumerate() {
                let (yy, xx) = ((j / w) as isize + dy, (j % w) as isize + dx);
                let want = if (0..h as isize).contains(&yy) && (0..w as isize).contains(&xx) {
                    (yy as usize * w + xx as usize) as f32 + 1.0
                } else {
                    0.0
                };
                assert_eq!(*got, want);
            }
            shifts.insert((dy, dx));
        }
        assert!(shifts.len() > 10, "64 images should see many of the 25 shifts, saw {}", shifts.len());
        // Same seed, same crops.
        assert_eq!(RandomCrop::new(2).apply(&x, &mut rng(1)).to_vec::<f32>(), y);
    }

    #[test]
    fn flip_mirrors_rows_with_probability_p() {
        let x = Tensor::from_vec((0..200 * 6).map(|i| (i % 3) as f32).collect::<Vec<_>>(), [200, 2, 3]);
        let y = RandomHorizontalFlip::new(0.5).apply(&x, &mut rng(2)).to_vec::<f32>();
        let flipped = y.chunks_exact(6).filter(|img| img[0] == 2.0).count();
        assert!((70..130).contains(&flipped), "{flipped} of 200 flipped");
        for img in y.chunks_exact(6) {
            assert!(img == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0] || img == [2.0, 1.0, 0.0, 2.0, 1.0, 0.0]);
        }
        let none = RandomHorizontalFlip::new(0.0).apply(&x, &mut rng(2));
        assert_eq!(none.to_vec::<f32>(), x.to_vec::<f32>());
    }

    #[test]
    fn normalize_per_channel_and_clear_errors() {
        let x = Tensor::from_vec(vec![1.0, 1.0, 3.0, 3.0], [1, 2, 1, 2]);
        let y = Normalize::new(&[1.0, 2.0], &[0.5, 2.0]).apply(&x, &mut rng(0));
        assert_eq!(y.to_vec::<f32>(), vec![0.0, 0.0, 0.5, 0.5]);
        let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Normalize::new(&[1.0, 2.0, 3.0], &[1.0; 3]).apply(&x, &mut rng(0))
        }));
        let msg = e.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.contains("Normalize") && msg.contains("[1, 2, 1, 2]"), "{msg}");
        let e = std::panic::catch_unwind(|| RandomCrop::new(1).apply(&Tensor::zeros([3, 4]), &mut rng(0)));
        assert!(e.unwrap_err().downcast::<String>().unwrap().contains("RandomCrop"));
    }

    #[test]
    fn loader_transforms_are_seeded_per_epoch_and_batch_with_or_without_prefetch() {
        use crate::{DataLoader, TensorDataset};
        let x = Tensor::randn([50, 1, 6, 6], 0.0, 1.0);
        let ds = TensorDataset::new(x, Tensor::arange_i64(0, 50)).unwrap();
        let aug = || Compose(vec![Box::new(RandomCrop::new(1)), Box::new(RandomHorizontalFlip::default())]);
        let a = DataLoader::new(ds.clone(), 8).shuffle(3).transform(aug());
        let b = DataLoader::new(ds.clone(), 8).shuffle(3).transform(aug()).prefetch(2);
        let batches = |l: &DataLoader, e| l.epoch(e).map(|(x, _)| x.to_vec::<f32>()).collect::<Vec<_>>();
        assert_eq!(batches(&a, 0), batches(&b, 0));
        assert_ne!(batches(&a, 0), batches(&a, 1));
        let plain = DataLoader::new(ds, 8).shuffle(3);
        assert_ne!(batches(&a, 0), batches(&plain, 0));
    }
}
