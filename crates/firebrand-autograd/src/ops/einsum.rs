//! `bmm` and `einsum`, written from `matmul`, views, broadcasting and `sum`.

use super::panicking;
use crate::tensor::Tensor;
use firebrand_tensor::{Error, Result};

impl Tensor {
    /// Batched matrix product of two 3-D tensors, `(B, m, k) @ (B, k, n)`
    /// (PyTorch's `bmm`: no broadcasting).
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let a = Tensor::ones([2, 3, 4]);
    /// assert_eq!(a.bmm(&Tensor::ones([2, 4, 5])).dims(), &[2, 3, 5]);
    /// assert!(a.try_bmm(&Tensor::ones([1, 4, 5])).is_err());
    /// ```
    ///
    /// # Errors
    /// When an operand is not 3-D, the batch sizes differ or the inner dims do.
    pub fn try_bmm(&self, rhs: &Tensor) -> Result<Tensor> {
        if self.rank() != 3 || rhs.rank() != 3 || self.dims()[0] != rhs.dims()[0] || self.dims()[2] != rhs.dims()[1] {
            return Err(Error::ShapeMismatch { op: "bmm", lhs: self.shape().clone(), rhs: rhs.shape().clone() });
        }
        self.try_matmul(rhs)
    }

    panicking!(
        /// Batched matrix product of 3-D tensors; see [`Tensor::try_bmm`].
        bmm => try_bmm(rhs: &Tensor) -> Tensor
    );

    /// Einstein summation over one or two operands (PyTorch's `einsum`):
    /// `"ij,jk->ik"`, `"bij,bjk->bik"`, `"ii->i"` is not supported (a letter
    /// twice in one operand), `"ij->ji"`, `"ij->"`; without `->` the output
    /// takes the letters used once, in alphabetical order. Each operand is
    /// permuted to the letters' order and broadcast against the other, the
    /// product summed over the letters not in the output, so memory grows
    /// with the product of all the sizes. Differentiable.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]);
    /// let b = Tensor::from_vec(vec![5.0f32, 6.0, 7.0, 8.0], [2, 2]);
    /// let c = Tensor::einsum("ij,jk->ik", &[&a, &b]);
    /// assert_eq!(c.to_vec::<f32>(), a.matmul(&b).to_vec::<f32>());
    /// assert_eq!(Tensor::einsum("ij->j", &[&a]).to_vec::<f32>(), vec![4.0, 6.0]);
    /// ```
    ///
    /// # Errors
    /// On a malformed equation, a letter twice in one operand, a size that
    /// disagrees between operands, or more than two operands.
    pub fn try_einsum(equation: &str, operands: &[&Tensor]) -> Result<Tensor> {
        let bad = |msg: String| Error::msg("einsum", format!("{equation:?}: {msg}"));
        let eq: String = equation.chars().filter(|c| !c.is_whitespace()).collect();
        let (lhs, out) = match eq.split_once("->") {
            Some((l, o)) => (l.to_string(), Some(o.to_string())),
            None => (eq.clone(), None),
        };
        let inputs: Vec<Vec<char>> = lhs.split(',').map(|s| s.chars().collect()).collect();
        if inputs.len() != operands.len() || operands.is_empty() || operands.len() > 2 {
            return Err(bad(format!(
                "{} operand specs for {} tensors (1 or 2 supported)",
                inputs.len(),
                operands.len()
            )));
        }
        let mut letters: Vec<char> = Vec::new();
        let mut sizes: Vec<usize> = Vec::new();
        for (spec, t) in inputs.iter().zip(operands) {
            if spec.len() != t.rank() || spec.iter().any(|c| !c.is_ascii_alphabetic()) {
                return Err(bad(format!(
                    "spec {:?} for a tensor of shape {:?}",
                    spec.iter().collect::<String>(),
                    t.dims()
                )));
            }
            for (i, &c) in spec.iter().enumerate() {
                if spec[..i].contains(&c) {
                    return Err(bad(format!("letter {c:?} twice in one operand (diagonals are not supported)")));
                }
                match letters.iter().position(|&l| l == c) {
                    Some(p) if sizes[p] != t.dims()[i] && sizes[p] != 1 && t.dims()[i] != 1 => {
                        return Err(bad(format!("letter {c:?} has sizes {} and {}", sizes[p], t.dims()[i])));
                    }
                    Some(p) => sizes[p] = sizes[p].max(t.dims()[i]),
                    None => {
                        letters.push(c);
                        sizes.push(t.dims()[i]);
                    }
                }
            }
        }
        let out: Vec<char> = match out {
            Some(o) => o.chars().collect(),
            None => {
                let mut once: Vec<char> = letters
                    .iter()
                    .copied()
                    .filter(|c| inputs.iter().flatten().filter(|x| *x == c).count() == 1)
                    .collect();
                once.sort();
                once
            }
        };
        if let Some(c) = out.iter().find(|c| !letters.contains(c)) {
            return Err(bad(format!("output letter {c:?} is not in any operand")));
        }
        // Each operand in the order of `letters`, with size-1 dims for the letters it lacks.
        let aligned: Vec<Tensor> = inputs
            .iter()
            .zip(operands)
            .map(|(spec, t)| {
                let perm: Vec<usize> = letters.iter().filter_map(|c| spec.iter().position(|s| s == c)).collect();
                let p = t.try_permute(&perm)?;
                let dims: Vec<usize> =
                    letters.iter().map(|c| spec.iter().position(|s| s == c).map_or(1, |i| t.dims()[i])).collect();
                p.try_reshape(dims)
            })
            .collect::<Result<_>>()?;
        let mut prod = aligned[0].clone();
        if let Some(b) = aligned.get(1) {
            prod = prod.try_mul(b)?;
        }
        let summed: Vec<isize> =
            (0..letters.len()).filter(|&i| !out.contains(&letters[i])).map(|i| i as isize).collect();
        let kept: Vec<char> = letters.iter().copied().filter(|c| out.contains(c)).collect();
        let reduced = if summed.is_empty() { prod } else { prod.try_sum(&summed, false)? };
        let reduced = reduced.try_broadcast_to(
            kept.iter().map(|c| sizes[letters.iter().position(|l| l == c).unwrap()]).collect::<Vec<_>>(),
        )?;
        let perm: Vec<usize> = out.iter().map(|c| kept.iter().position(|k| k == c).expect("kept")).collect();
        Ok(reduced.try_permute(&perm)?.contiguous())
    }

    /// Einstein summation; see [`Tensor::try_einsum`].
    ///
    /// # Panics
    /// On the errors of [`Tensor::try_einsum`].
    #[track_caller]
    pub fn einsum(equation: &str, operands: &[&Tensor]) -> Tensor {
        Tensor::try_einsum(equation, operands).unwrap_or_else(|e| panic!("{e}"))
    }
}
