//! Observers: what static quantization learns about a layer's input while
//! it calibrates, and the `u8` range it then picks (PyTorch's
//! `MinMaxObserver`, `HistogramObserver`, and a percentile one).

use firebrand_ops::gemm::int8::InputQuant;

/// How an observer turns what it saw into a range.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ObserverKind {
    /// The smallest and largest values seen (PyTorch's `MinMaxObserver`):
    /// nothing saturates, but one outlier stretches every step.
    MinMax,
    /// The `p`-th percentile (0 < p ≤ 100) of the positive values and of
    /// the negative values' magnitudes, from a histogram: the rarest
    /// `100 − p` percent of each side saturate.
    Percentile(f32),
    /// The range whose quantization error over the histogram is least:
    /// saturation past it against rounding within it (as PyTorch's
    /// default `HistogramObserver` chooses). The default.
    #[default]
    Histogram,
}

/// Bins per side of the histogram.
const BINS: usize = 2048;

/// Counts of magnitudes in `BINS` equal bins over `[0, BINS·width)`; the
/// width doubles (neighbouring bins merged) when a larger value comes.
#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
    width: f64,
}

impl Histogram {
    fn new() -> Self {
        Histogram { counts: vec![0; BINS], width: 0.0 }
    }

    /// Makes room for magnitudes up to `max`.
    fn grow_to(&mut self, max: f64) {
        if self.width == 0.0 {
            // The first values: the bins span them with a little room.
            self.width = max * 1.0001 / BINS as f64;
            return;
        }
        while max >= self.width * BINS as f64 {
            for i in 0..BINS / 2 {
                self.counts[i] = self.counts[2 * i] + self.counts[2 * i + 1];
            }
            self.counts[BINS / 2..].fill(0);
            self.width *= 2.0;
        }
    }

    fn add(&mut self, v: f64) {
        let b = ((v / self.width) as usize).min(BINS - 1);
        self.counts[b] += 1;
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The magnitude below which a fraction `q` of the counts lie (the
    /// upper edge of the bin where the count crosses it).
    fn quantile(&self, q: f64) -> f64 {
        let target = (q * self.total() as f64).ceil() as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target.max(1) {
                return (i + 1) as f64 * self.width;
            }
        }
        BINS as f64 * self.width
    }

    /// Prefix sums of `count`, `count·centre` and `count·centre²` (bins
    /// `0..i` in entry `i`), for the error of cutting at any bin in O(1).
    fn moments(&self) -> [Vec<f64>; 3] {
        let mut m = [vec![0.0; BINS + 1], vec![0.0; BINS + 1], vec![0.0; BINS + 1]];
        for (i, &c) in self.counts.iter().enumerate() {
            let (c, x) = (c as f64, (i as f64 + 0.5) * self.width);
            m[0][i + 1] = m[0][i] + c;
            m[1][i + 1] = m[1][i] + c * x;
            m[2][i + 1] = m[2][i] + c * x * x;
        }
        m
    }
}

/// The squared error of one side cut at bin `e` (the range's edge at
/// `e·width`) with steps of `step`: rounding within, saturation beyond.
fn side_error(m: &[Vec<f64>; 3], width: f64, e: usize, step: f64) -> f64 {
    let edge = e as f64 * width;
    let inside = m[0][e] * step * step / 12.0;
    let (c, s1, s2) = (m[0][BINS] - m[0][e], m[1][BINS] - m[1][e], m[2][BINS] - m[2][e]);
    // Σ c·(x − edge)² over the bins past the edge.
    inside + s2 - 2.0 * edge * s1 + edge * edge * c
}

/// Records a layer's inputs during calibration ([`crate::quantize::prepare`]).
///
/// ```
/// use firebrand_nn::quantize::{Observer, ObserverKind};
/// let mut o = Observer::new(ObserverKind::MinMax);
/// o.observe(&[0.0, 2.0, -1.0, 0.5]);
/// assert_eq!(o.range(), Some((-1.0, 2.0)));
/// let q = o.input_quant().unwrap();
/// assert_eq!((q.scale, q.zero), (3.0 / 255.0, 85));
/// ```
#[derive(Debug, Clone)]
pub struct Observer {
    kind: ObserverKind,
    min: f32,
    max: f32,
    /// Values seen (finite ones; NaN and infinities are skipped and counted apart).
    seen: u64,
    non_finite: u64,
    /// Magnitudes of the positive and the negative values (not kept for min-max).
    pos: Option<Histogram>,
    neg: Option<Histogram>,
}

impl Observer {
    /// An observer that has seen nothing.
    ///
    /// # Panics
    /// When a percentile is not in `(0, 100]`.
    pub fn new(kind: ObserverKind) -> Observer {
        if let ObserverKind::Percentile(p) = kind {
            assert!(p > 0.0 && p <= 100.0, "Observer: percentile {p} is not in (0, 100]");
        }
        let hist = (kind != ObserverKind::MinMax).then(Histogram::new);
        Observer { kind, min: 0.0, max: 0.0, seen: 0, non_finite: 0, pos: hist.clone(), neg: hist }
    }

    /// Its kind.
    pub fn kind(&self) -> ObserverKind {
        self.kind
    }

    /// Takes in a batch of values. NaN and infinities are not part of any
    /// range; they are counted ([`non_finite`](Observer::non_finite)).
    pub fn observe(&mut self, x: &[f32]) {
        let (mut lo, mut hi, mut n) = (f32::INFINITY, f32::NEG_INFINITY, 0u64);
        for &v in x {
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
                n += 1;
            }
        }
        self.non_finite += x.len() as u64 - n;
        if n == 0 {
            return;
        }
        (self.min, self.max) = if self.seen == 0 { (lo, hi) } else { (self.min.min(lo), self.max.max(hi)) };
        self.seen += n;
        if let (Some(pos), Some(neg)) = (&mut self.pos, &mut self.neg) {
            if hi > 0.0 {
                pos.grow_to(hi as f64);
            }
            if lo < 0.0 {
                neg.grow_to(-lo as f64);
            }
            for &v in x {
                // Exact zeros (a ReLU's, padding) quantize exactly: in no bin.
                if v > 0.0 && v.is_finite() {
                    pos.add(v as f64);
                } else if v < 0.0 && v.is_finite() {
                    neg.add(-v as f64);
                }
            }
        }
    }

    /// Finite values seen.
    pub fn count(&self) -> u64 {
        self.seen
    }

    /// NaN and infinite values seen (and left out).
    pub fn non_finite(&self) -> u64 {
        self.non_finite
    }

    /// The range this observer's kind picks (it includes 0), or `None`
    /// when it has seen no finite value.
    pub fn range(&self) -> Option<(f32, f32)> {
        if self.seen == 0 {
            return None;
        }
        let (lo, hi) = (self.min.min(0.0), self.max.max(0.0));
        let (Some(pos), Some(neg)) = (&self.pos, &self.neg) else {
            return Some((lo, hi));
        };
        match self.kind {
            ObserverKind::MinMax => Some((lo, hi)),
            ObserverKind::Percentile(p) => {
                let q = p as f64 / 100.0;
                let side =
                    |h: &Histogram, edge: f32| if h.total() == 0 { 0.0 } else { (h.quantile(q) as f32).min(edge) };
                Some((-side(neg, -lo), side(pos, hi)))
            }
            ObserverKind::Histogram => Some(least_error_range(pos, neg, lo, hi)),
        }
    }

    /// The `u8` parameters of [`range`](Observer::range).
    pub fn input_quant(&self) -> Option<InputQuant> {
        self.range().map(|(lo, hi)| InputQuant::from_range(lo, hi))
    }
}

/// The cut of each side that makes the total squared error least, found by
/// turns (each side's best cut with the other's fixed, until neither moves).
fn least_error_range(pos: &Histogram, neg: &Histogram, lo: f32, hi: f32) -> (f32, f32) {
    let (mp, mn) = (pos.moments(), neg.moments());
    // Start at the full range: the bins holding the extremes.
    let last = |h: &Histogram| h.counts.iter().rposition(|&c| c > 0).map_or(0, |i| i + 1);
    let (mut ep, mut en) = (last(pos), last(neg));
    let edge = |h: &Histogram, e: usize| e as f64 * h.width;
    for _ in 0..8 {
        let best = |m: &[Vec<f64>; 3], h: &Histogram, other: f64, end: usize| {
            (1..=end.max(1))
                .map(|e| (e, side_error(m, h.width, e, (e as f64 * h.width + other) / 255.0)))
                .fold((end, f64::INFINITY), |a, b| if b.1 < a.1 { b } else { a })
                .0
        };
        let np = if pos.total() > 0 { best(&mp, pos, edge(neg, en), last(pos)) } else { 0 };
        let nn = if neg.total() > 0 { best(&mn, neg, edge(pos, np), last(neg)) } else { 0 };
        if (np, nn) == (ep, en) {
            break;
        }
        (ep, en) = (np, nn);
    }
    ((-(edge(neg, en) as f32)).max(lo), (edge(pos, ep) as f32).min(hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ReLU-like distribution: half zeros, an exponential tail of
    /// `n / 2` values, one outlier at 60.
    fn samples(n: usize) -> Vec<f32> {
        let mut s = 7u32;
        let mut v: Vec<f32> = (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                if i % 2 == 0 { 0.0 } else { -((s % 10_000) as f32 / 10_000.0 + 1e-4).ln() }
            })
            .collect();
        v.push(60.0);
        v
    }

    /// The range each kind picks, and the squared error of quantizing the samples with it.
    fn ranges(v: &[f32]) -> Vec<(f32, f64)> {
        [ObserverKind::MinMax, ObserverKind::Percentile(99.9), ObserverKind::Histogram]
            .into_iter()
            .map(|kind| {
                let mut o = Observer::new(kind);
                v.chunks(997).for_each(|c| o.observe(c));
                let (lo, hi) = o.range().unwrap();
                assert_eq!(lo, 0.0, "{kind:?}");
                let q = o.input_quant().unwrap();
                let inv = 1.0 / q.scale;
                let err = v
                    .iter()
                    .map(|&x| ((q.scale * (q.quantize(x, inv) as f32 - q.zero as f32) - x) as f64).powi(2))
                    .sum();
                (hi, err)
            })
            .collect()
    }

    /// Min-max keeps an outlier; the percentile cuts the tail where it
    /// says; the histogram's range has the least actual error of the three:
    /// it keeps a lone outlier among few values (its saturation would cost
    /// more than the coarser steps) and cuts it among many.
    #[test]
    fn percentile_and_histogram_ranges() {
        for (n, cut) in [(20_000, false), (2_000_000, true)] {
            let r = ranges(&samples(n));
            let [(mm, mm_err), (pc, pc_err), (hist, hist_err)] = r[..] else { unreachable!() };
            assert_eq!(mm, 60.0);
            // The 99.9th percentile of an exponential tail: ln(1000) ≈ 6.9.
            assert!((pc - 6.9).abs() < 0.5, "percentile {pc}");
            assert!(hist_err <= 1.02 * mm_err.min(pc_err), "n = {n}: {hist_err} against {mm_err}, {pc_err}");
            assert_eq!(hist < 30.0, cut, "n = {n}: histogram range {hist}");
        }
    }

    /// The histogram keeps its counts when its range doubles.
    #[test]
    fn the_histogram_grows_without_losing_counts() {
        let mut o = Observer::new(ObserverKind::Percentile(100.0));
        o.observe(&[0.5; 100]);
        o.observe(&[-4.0, 40.0, 400.0]);
        let pos = o.pos.as_ref().unwrap();
        assert_eq!(pos.total(), 102);
        assert_eq!(o.range(), Some((-4.0, 400.0)));
    }
}
