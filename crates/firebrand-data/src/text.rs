//! Text: a character vocabulary and a dataset of `(window, next token)`
//! pairs cut from a token sequence.

use crate::{DataError, Dataset};
use firebrand_autograd::Tensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Writes `text` to `path` through a temporary file and a rename, so a
/// crash leaves the old file or the new one, never half of one.
pub(crate) fn write_text_atomic(path: &Path, text: &str) -> Result<(), DataError> {
    let tmp = path.with_extension("tmp");
    let io = |source| DataError::Io { path: path.to_path_buf(), source };
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The characters of a text, sorted, each with an id (`char` level
/// tokenization, as in char-RNN).
///
/// ```
/// use firebrand_data::CharVocab;
/// let vocab = CharVocab::build("hello world");
/// assert_eq!(vocab.len(), 8); // ' ', d, e, h, l, o, r, w
/// let ids = vocab.encode("hold").unwrap();
/// assert_eq!(vocab.decode(&ids), "hold");
/// assert!(vocab.encode("hex").is_err()); // 'x' is not in the vocabulary
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CharVocab {
    chars: Vec<char>,
    index: HashMap<char, usize>,
}

impl CharVocab {
    /// Every distinct character of `text`, sorted by code point.
    pub fn build(text: &str) -> CharVocab {
        let mut chars: Vec<char> = text.chars().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        chars.dedup();
        CharVocab::from_chars(chars)
    }

    fn from_chars(chars: Vec<char>) -> CharVocab {
        let index = chars.iter().enumerate().map(|(i, c)| (*c, i)).collect();
        CharVocab { chars, index }
    }

    /// Number of characters.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The id of `c`, if it is in the vocabulary.
    pub fn id(&self, c: char) -> Option<usize> {
        self.index.get(&c).copied()
    }

    /// The character of `id`.
    ///
    /// # Panics
    /// When `id` is out of range.
    pub fn char(&self, id: usize) -> char {
        self.chars[id]
    }

    /// The ids of `text`'s characters.
    ///
    /// # Errors
    /// [`DataError::Format`] naming the first character not in the vocabulary
    /// and its position.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, DataError> {
        text.chars()
            .enumerate()
            .map(|(i, c)| {
                self.id(c).map(|id| id as i64).ok_or_else(|| DataError::Format {
                    path: PathBuf::from("<text>"),
                    msg: format!(
                        "character {c:?} at position {i} is not in the vocabulary of {} characters",
                        self.len()
                    ),
                })
            })
            .collect()
    }

    /// The text of `ids` (ids out of range become `�`).
    pub fn decode(&self, ids: &[i64]) -> String {
        ids.iter().map(|&i| self.chars.get(i as usize).copied().unwrap_or('\u{FFFD}')).collect()
    }

    /// Writes the vocabulary as UTF-8 text, one character per line with
    /// newline and backslash escaped (`\n`, `\\`), atomically.
    ///
    /// # Errors
    /// [`DataError::Io`] when the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), DataError> {
        let path = path.as_ref();
        let mut s = String::from("firebrand-char-vocab 1\n");
        for c in &self.chars {
            match c {
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                '\\' => s.push_str("\\\\"),
                c => s.push(*c),
            }
            s.push('\n');
        }
        write_text_atomic(path, &s)
    }

    /// Reads a vocabulary written by [`CharVocab::save`].
    ///
    /// # Errors
    /// [`DataError::Io`] or, for a malformed file, [`DataError::Format`] with the line.
    pub fn load(path: impl AsRef<Path>) -> Result<CharVocab, DataError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
        let bad =
            |line: usize, msg: &str| DataError::Format { path: path.to_path_buf(), msg: format!("line {line}: {msg}") };
        let mut lines = text.split('\n');
        if lines.next() != Some("firebrand-char-vocab 1") {
            return Err(bad(1, "not a firebrand character vocabulary (bad header)"));
        }
        let mut chars = Vec::new();
        for (i, l) in lines.enumerate() {
            let c = match l {
                "" => continue,
                "\\n" => '\n',
                "\\r" => '\r',
                "\\\\" => '\\',
                l if l.chars().count() == 1 => l.chars().next().expect("one char"),
                _ => return Err(bad(i + 2, &format!("expected one character, found {l:?}"))),
            };
            if chars.contains(&c) {
                return Err(bad(i + 2, &format!("{c:?} appears twice")));
            }
            chars.push(c);
        }
        Ok(CharVocab::from_chars(chars))
    }
}

/// Windows of `window` tokens from a sequence, each paired with the token
/// that follows it, starting every `step` tokens: the training examples of a
/// next-character model. Inputs are `(window,)` `i64` ids, targets `i64`
/// scalars; batches `(B, window)` and `(B,)`.
///
/// ```
/// use firebrand_data::{Dataset, TextWindows};
/// let ds = TextWindows::new((0..10).collect(), 4, 3);
/// assert_eq!(ds.len(), 2); // windows at 0 and 3 (6 would leave no next token)
/// let (x, y) = ds.get_batch(&[1]);
/// assert_eq!(x.to_vec::<i64>(), vec![3, 4, 5, 6]);
/// assert_eq!(y.to_vec::<i64>(), vec![7]);
/// ```
#[derive(Clone)]
pub struct TextWindows {
    tokens: std::sync::Arc<Vec<i64>>,
    starts: Vec<usize>,
    window: usize,
}

impl TextWindows {
    /// Every window of `window` tokens starting at multiples of `step` that
    /// has a next token.
    ///
    /// # Panics
    /// When `window` or `step` is zero.
    pub fn new(tokens: Vec<i64>, window: usize, step: usize) -> TextWindows {
        assert!(window > 0 && step > 0, "TextWindows: window {window} and step {step} must be positive");
        let starts =
            if tokens.len() > window { (0..tokens.len() - window).step_by(step).collect() } else { Vec::new() };
        TextWindows { tokens: std::sync::Arc::new(tokens), starts, window }
    }

    /// Tokens per window.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Every window as one in-memory [`TensorDataset`](crate::TensorDataset)
    /// (`x`: `(N, window)`, `y`: `(N,)`), for `Model::fit`.
    pub fn to_tensor_dataset(&self) -> crate::TensorDataset {
        let all: Vec<usize> = (0..self.starts.len()).collect();
        let (x, y) = self.get_batch(&all);
        crate::TensorDataset::new(x, y).expect("as many targets as windows")
    }

    /// The first `1 - fraction` of the windows and the rest, in order (a
    /// validation set from the end of the text, as in the `char_lstm` workload).
    pub fn split_tail(&self, fraction: f32) -> (TextWindows, TextWindows) {
        let n_train = ((1.0 - fraction.clamp(0.0, 1.0)) * self.starts.len() as f32) as usize;
        let part = |s: &[usize]| TextWindows { tokens: self.tokens.clone(), starts: s.to_vec(), window: self.window };
        (part(&self.starts[..n_train]), part(&self.starts[n_train..]))
    }
}

impl Dataset for TextWindows {
    fn len(&self) -> usize {
        self.starts.len()
    }

    fn get(&self, i: usize) -> (Tensor, Tensor) {
        let s = self.starts[i];
        (
            Tensor::from_vec(self.tokens[s..s + self.window].to_vec(), [self.window]),
            Tensor::from_vec(vec![self.tokens[s + self.window]], Vec::<usize>::new()),
        )
    }

    fn get_batch(&self, indices: &[usize]) -> (Tensor, Tensor) {
        let mut x = Vec::with_capacity(indices.len() * self.window);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            let s = self.starts[i];
            x.extend_from_slice(&self.tokens[s..s + self.window]);
            y.push(self.tokens[s + self.window]);
        }
        (Tensor::from_vec(x, [indices.len(), self.window]), Tensor::from_vec(y, [indices.len()]))
    }
}

/// A token sequence drawn from as random windows (nanoGPT's `get_batch`):
/// each batch holds `B` windows of `context` tokens at uniformly random
/// starts, with the next-token targets (the same windows shifted by one).
/// A batch is a pure function of `(seed, step)`, so a resumed run draws the
/// batches the uninterrupted run would have.
///
/// ```
/// use firebrand_data::TokenBatches;
/// let data = TokenBatches::new((0..100).collect(), 8);
/// let (x, y) = data.batch(4, 0, 0); // (4, 8) inputs and targets, i64
/// assert_eq!(x.dims(), &[4, 8]);
/// let (xs, ys) = (x.to_vec::<i64>(), y.to_vec::<i64>());
/// assert!(xs.iter().zip(&ys).all(|(a, b)| b - a == 1));
/// assert_eq!(data.batch(4, 0, 0).0.to_vec::<i64>(), xs); // same (seed, step), same batch
/// ```
#[derive(Clone)]
pub struct TokenBatches {
    tokens: std::sync::Arc<Vec<i64>>,
    context: usize,
}

impl TokenBatches {
    /// Windows of `context` tokens from `tokens`.
    ///
    /// # Panics
    /// When `tokens` has no more than `context` tokens.
    pub fn new(tokens: Vec<i64>, context: usize) -> TokenBatches {
        assert!(
            context > 0 && tokens.len() > context,
            "TokenBatches: {} tokens leave no window of {context} with a next token",
            tokens.len()
        );
        TokenBatches { tokens: std::sync::Arc::new(tokens), context }
    }

    /// The first `1 - fraction` of `tokens` and the rest (e.g. 0.1 for a
    /// 90/10 train/validation split), each as windows of `context`.
    pub fn split(tokens: Vec<i64>, fraction: f32, context: usize) -> (TokenBatches, TokenBatches) {
        let n = ((1.0 - fraction.clamp(0.0, 1.0)) * tokens.len() as f32) as usize;
        let val = tokens[n..].to_vec();
        let mut train = tokens;
        train.truncate(n);
        (TokenBatches::new(train, context), TokenBatches::new(val, context))
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when no tokens are held (never, after [`TokenBatches::new`]).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Window length.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Batch number `step` of the stream seeded by `seed`: inputs and
    /// targets, `(batch, context)` each.
    pub fn batch(&self, batch: usize, seed: u64, step: u64) -> (Tensor, Tensor) {
        self.rows(batch, seed, step, 0..batch)
    }

    /// Rows `keep` of the `batch` windows of step `step`: every window's
    /// start is drawn (so the rows are those of the whole batch), only the
    /// kept ones are copied.
    fn rows(&self, batch: usize, seed: u64, step: u64, keep: std::ops::Range<usize>) -> (Tensor, Tensor) {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step);
        let (t, n) = (self.context, self.tokens.len() - self.context);
        let mut x = Vec::with_capacity(keep.len() * t);
        let mut y = Vec::with_capacity(keep.len() * t);
        for row in 0..batch {
            let s = rng.random_range(0..n);
            if keep.contains(&row) {
                x.extend_from_slice(&self.tokens[s..s + t]);
                y.extend_from_slice(&self.tokens[s + 1..s + t + 1]);
            }
        }
        (Tensor::from_vec(x, [keep.len(), t]), Tensor::from_vec(y, [keep.len(), t]))
    }

    /// Rank `rank`'s part of step `step` in a data-parallel run of
    /// `world_size` processes at `batch` windows each: rows
    /// `rank·batch .. (rank+1)·batch` of [`TokenBatches::batch`] with
    /// `world_size · batch` windows, so the ranks together read exactly what
    /// one process at the whole batch reads.
    ///
    /// ```
    /// use firebrand_data::TokenBatches;
    /// let tb = TokenBatches::new((0..100).collect(), 4);
    /// let (whole, _) = tb.batch(6, 1, 9);
    /// let (part, _) = tb.batch_shard(3, 1, 9, 1, 2);
    /// assert_eq!(part.to_vec::<i64>(), whole.narrow(0, 3, 3).to_vec::<i64>());
    /// ```
    ///
    /// # Panics
    /// When `rank >= world_size`.
    pub fn batch_shard(&self, batch: usize, seed: u64, step: u64, rank: usize, world_size: usize) -> (Tensor, Tensor) {
        assert!(rank < world_size, "TokenBatches::batch_shard: rank {rank} is not in a world of {world_size}");
        self.rows(batch * world_size, seed, step, rank * batch..(rank + 1) * batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_round_trips_through_a_file_with_awkward_characters() {
        let v = CharVocab::build("a\nb\\c\r é🙂 a");
        let path = std::env::temp_dir().join(format!("fb_vocab_{}.txt", std::process::id()));
        v.save(&path).unwrap();
        assert_eq!(CharVocab::load(&path).unwrap(), v);
        std::fs::write(&path, "firebrand-char-vocab 1\nab\n").unwrap();
        let e = CharVocab::load(&path).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("\"ab\""), "{e}");
        std::fs::write(&path, "something else\n").unwrap();
        assert!(CharVocab::load(&path).unwrap_err().to_string().contains("header"));
        std::fs::remove_file(&path).unwrap();
        let e = v.encode("aXb").unwrap_err().to_string();
        assert!(e.contains("'X'") && e.contains("position 1"), "{e}");
    }

    #[test]
    fn token_batches_cover_the_text_and_split_in_order() {
        let (train, val) = TokenBatches::split((0..1000).collect(), 0.1, 16);
        assert_eq!((train.len(), val.len()), (900, 100));
        let mut seen_last = false;
        for step in 0..200 {
            let (x, y) = val.batch(8, 3, step);
            let (x, y) = (x.to_vec::<i64>(), y.to_vec::<i64>());
            assert!(x.iter().all(|&v| (900..1000).contains(&v)) && y.iter().all(|&v| (901..1000).contains(&v)));
            seen_last |= y.contains(&999);
        }
        assert!(seen_last, "the last window is drawn");
        assert_ne!(train.batch(8, 3, 0).0.to_vec::<i64>(), train.batch(8, 3, 1).0.to_vec::<i64>());
        assert_ne!(train.batch(8, 3, 0).0.to_vec::<i64>(), train.batch(8, 4, 0).0.to_vec::<i64>());
    }

    #[test]
    fn windows_and_tail_split() {
        let ds = TextWindows::new((0..100).collect(), 40, 3);
        assert_eq!(ds.len(), 20); // starts 0, 3, …, 57
        let (tr, va) = ds.split_tail(0.1);
        assert_eq!((tr.len(), va.len()), (18, 2));
        let (x, y) = va.get_batch(&[0, 1]);
        assert_eq!(x.dims(), &[2, 40]);
        assert_eq!(x.to_vec::<i64>()[0], 54);
        assert_eq!(y.to_vec::<i64>(), vec![94, 97]);
        let (x1, y1) = ds.get(2);
        assert_eq!((x1.to_vec::<i64>()[0], y1.to_vec::<i64>()), (6, vec![46]));
    }
}
