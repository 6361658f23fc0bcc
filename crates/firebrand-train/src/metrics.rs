//! Classification metrics: accuracy, precision, recall, F1 (per class and
//! macro-averaged) and the confusion matrix.

use serde::{Deserialize, Serialize};

/// Metrics of predicted against true class indices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationMetrics {
    /// Fraction of correct predictions.
    pub accuracy: f32,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
    /// Per-class precision (0 where a class is never predicted, as scikit-learn's `zero_division=0`).
    pub precision: Vec<f32>,
    /// Per-class recall (0 where a class never occurs).
    pub recall: Vec<f32>,
    /// Per-class F1.
    pub f1: Vec<f32>,
}

impl ClassificationMetrics {
    /// Computes the metrics for `classes` classes.
    ///
    /// # Panics
    /// When the slices differ in length or a label is outside `0..classes`.
    pub fn new(predicted: &[i64], truth: &[i64], classes: usize) -> Self {
        assert_eq!(predicted.len(), truth.len(), "metrics: {} predictions for {} labels", predicted.len(), truth.len());
        let mut confusion = vec![vec![0usize; classes]; classes];
        for (&p, &t) in predicted.iter().zip(truth) {
            assert!(
                (0..classes as i64).contains(&p) && (0..classes as i64).contains(&t),
                "metrics: label outside 0..{classes}"
            );
            confusion[t as usize][p as usize] += 1;
        }
        let correct: usize = (0..classes).map(|c| confusion[c][c]).sum();
        let accuracy = if truth.is_empty() { 0.0 } else { correct as f32 / truth.len() as f32 };
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f32 / b as f32 };
        let precision: Vec<f32> =
            (0..classes).map(|c| ratio(confusion[c][c], (0..classes).map(|t| confusion[t][c]).sum())).collect();
        let recall: Vec<f32> = (0..classes).map(|c| ratio(confusion[c][c], confusion[c].iter().sum())).collect();
        let f1 = precision
            .iter()
            .zip(&recall)
            .map(|(&p, &r)| if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) })
            .collect();
        ClassificationMetrics { accuracy, confusion, precision, recall, f1 }
    }

    /// Unweighted mean of the per-class precisions.
    pub fn macro_precision(&self) -> f32 {
        mean(&self.precision)
    }

    /// Unweighted mean of the per-class recalls.
    pub fn macro_recall(&self) -> f32 {
        mean(&self.recall)
    }

    /// Unweighted mean of the per-class F1 scores (scikit-learn's `f1_score(average="macro")`).
    pub fn macro_f1(&self) -> f32 {
        mean(&self.f1)
    }
}

fn mean(v: &[f32]) -> f32 {
    if v.is_empty() { 0.0 } else { v.iter().sum::<f32>() / v.len() as f32 }
}

impl std::fmt::Display for ClassificationMetrics {
    /// A per-class report and the confusion matrix.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "class  precision  recall     f1  support")?;
        for c in 0..self.precision.len() {
            let support: usize = self.confusion[c].iter().sum();
            writeln!(
                f,
                "{c:>5}  {:>9.4}  {:>6.4}  {:>6.4}  {support:>7}",
                self.precision[c], self.recall[c], self.f1[c]
            )?;
        }
        writeln!(
            f,
            "macro  {:>9.4}  {:>6.4}  {:>6.4}  accuracy {:.4}",
            self.macro_precision(),
            self.macro_recall(),
            self.macro_f1(),
            self.accuracy
        )?;
        writeln!(f, "confusion matrix (rows: true class, columns: predicted):")?;
        let w = self.confusion.iter().flatten().max().map_or(1, |m| m.to_string().len()).max(3);
        write!(f, "{:>5} ", "")?;
        for c in 0..self.confusion.len() {
            write!(f, " {c:>w$}")?;
        }
        writeln!(f)?;
        for (t, row) in self.confusion.iter().enumerate() {
            write!(f, "{t:>5} ")?;
            for v in row {
                write!(f, " {v:>w$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_scikit_learn() {
        // sklearn.metrics on y_true=[0,0,1,1,2,2,2], y_pred=[0,1,1,1,2,0,2]:
        // precision [0.5, 0.6667, 1.0], recall [0.5, 1.0, 0.6667], f1 [0.5, 0.8, 0.8], macro f1 0.7
        let m = ClassificationMetrics::new(&[0, 1, 1, 1, 2, 0, 2], &[0, 0, 1, 1, 2, 2, 2], 3);
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
        assert!(close(&m.precision, &[0.5, 0.666_67, 1.0]));
        assert!(close(&m.recall, &[0.5, 1.0, 0.666_67]));
        assert!(close(&m.f1, &[0.5, 0.8, 0.8]));
        assert!((m.macro_f1() - 0.7).abs() < 1e-4);
        assert!((m.accuracy - 5.0 / 7.0).abs() < 1e-6);
        assert_eq!(m.confusion, vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 2]]);
        assert!(m.to_string().contains("confusion matrix"));
        // A class never predicted has precision 0, not NaN.
        let m = ClassificationMetrics::new(&[0, 0], &[0, 1], 2);
        assert_eq!(m.precision, vec![0.5, 0.0]);
    }
}
