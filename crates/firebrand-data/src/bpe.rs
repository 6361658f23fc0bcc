//! A byte-level BPE tokenizer (the GPT-2 scheme, simplified): text is split
//! into pieces (a word with its leading space, or a run of other
//! whitespace), each piece into bytes, and learned merges join the most
//! frequent adjacent pairs into new tokens. Every byte is a token, so any
//! text encodes and decoding is exact.

use crate::DataError;
use std::collections::HashMap;
use std::path::Path;

/// A trained byte-level BPE vocabulary: ids 0–255 are bytes, each later id is
/// a merge of two earlier ones.
///
/// ```
/// use firebrand_data::BpeTokenizer;
/// let bpe = BpeTokenizer::train("the cat and the hat and the bat", 270);
/// let ids = bpe.encode("the hat");
/// assert!(ids.len() < "the hat".len()); // merges shorten the sequence
/// assert_eq!(bpe.decode(&ids), "the hat");
/// assert_eq!(bpe.decode(&bpe.encode("ünïcode ✓")), "ünïcode ✓"); // bytes cover everything
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BpeTokenizer {
    merges: Vec<(u32, u32)>,
    ranks: HashMap<(u32, u32), u32>,
    tokens: Vec<Vec<u8>>, // id -> bytes
}

/// Splits text into pieces: a word with its leading space, or a run of other
/// whitespace (merges never cross a piece).
fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut prev_space = false;
    for (i, c) in text.char_indices() {
        let space = c.is_whitespace();
        // A new piece starts at whitespace after a word, and at a word after
        // whitespace other than a single leading ' ' (which joins the word).
        let boundary = i > start && if space { !prev_space } else { prev_space && text[start..i] != *" " };
        if boundary {
            let cut = if !space && prev_space && text[..i].ends_with(' ') && i - 1 > start { i - 1 } else { i };
            out.push(&text[start..cut]);
            start = cut;
        }
        prev_space = space;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

impl BpeTokenizer {
    fn from_merges(merges: Vec<(u32, u32)>) -> BpeTokenizer {
        let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for &(a, b) in &merges {
            let mut t = tokens[a as usize].clone();
            t.extend_from_slice(&tokens[b as usize]);
            tokens.push(t);
        }
        let ranks = merges.iter().enumerate().map(|(i, &p)| (p, i as u32)).collect();
        BpeTokenizer { merges, ranks, tokens }
    }

    /// Learns merges from `text` until the vocabulary has `vocab_size`
    /// tokens (at least the 256 bytes) or no pair occurs twice. Each round
    /// merges the most frequent pair (ties: the smallest ids).
    pub fn train(text: &str, vocab_size: usize) -> BpeTokenizer {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for p in pieces(text) {
            *counts.entry(p).or_default() += 1;
        }
        let mut words: Vec<(Vec<u32>, usize)> =
            counts.into_iter().map(|(w, n)| (w.bytes().map(u32::from).collect(), n)).collect();
        words.sort(); // deterministic order
        let mut merges = Vec::new();
        while 256 + merges.len() < vocab_size {
            let mut pair_counts: HashMap<(u32, u32), usize> = HashMap::new();
            for (w, n) in &words {
                for p in w.windows(2) {
                    *pair_counts.entry((p[0], p[1])).or_default() += n;
                }
            }
            let Some((&best, &n)) = pair_counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))) else { break };
            if n < 2 {
                break;
            }
            let id = 256 + merges.len() as u32;
            for (w, _) in &mut words {
                merge_pair(w, best, id);
            }
            merges.push(best);
        }
        BpeTokenizer::from_merges(merges)
    }

    /// Number of tokens (256 bytes plus the merges).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Always false: the 256 byte tokens are always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The token ids of `text`.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut out = Vec::new();
        let mut cache: HashMap<&str, Vec<u32>> = HashMap::new();
        for p in pieces(text) {
            let ids = cache.entry(p).or_insert_with(|| self.encode_piece(p));
            out.extend(ids.iter().map(|&i| i as i64));
        }
        out
    }

    fn encode_piece(&self, piece: &str) -> Vec<u32> {
        let mut w: Vec<u32> = piece.bytes().map(u32::from).collect();
        // Apply the earliest-learned merge present, until none applies.
        loop {
            let best = w.windows(2).filter_map(|p| self.ranks.get(&(p[0], p[1])).map(|&r| (r, (p[0], p[1])))).min();
            let Some((rank, pair)) = best else { break };
            merge_pair(&mut w, pair, 256 + rank);
        }
        w
    }

    /// The text of `ids` (invalid UTF-8 from a partial sequence becomes `�`;
    /// ids out of range are skipped).
    pub fn decode(&self, ids: &[i64]) -> String {
        let bytes: Vec<u8> = ids.iter().filter_map(|&i| self.tokens.get(i as usize)).flatten().copied().collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Writes the merges, one `a b` pair per line after a header, atomically.
    ///
    /// # Errors
    /// [`DataError::Io`] when the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), DataError> {
        let path = path.as_ref();
        let mut s = String::from("firebrand-bpe 1\n");
        for (a, b) in &self.merges {
            s.push_str(&format!("{a} {b}\n"));
        }
        crate::text::write_text_atomic(path, &s)
    }

    /// Reads merges written by [`BpeTokenizer::save`].
    ///
    /// # Errors
    /// [`DataError::Io`], or [`DataError::Format`] naming the line of a
    /// malformed file or a merge that refers to a later token.
    pub fn load(path: impl AsRef<Path>) -> Result<BpeTokenizer, DataError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
        let bad = |line: usize, msg: String| DataError::Format {
            path: path.to_path_buf(),
            msg: format!("line {line}: {msg}"),
        };
        let mut lines = text.lines();
        if lines.next() != Some("firebrand-bpe 1") {
            return Err(bad(1, "not a firebrand BPE file (bad header)".into()));
        }
        let mut merges = Vec::new();
        for (i, l) in lines.enumerate().filter(|(_, l)| !l.is_empty()) {
            let ids: Vec<u32> = l
                .split(' ')
                .map(|t| t.parse::<u32>())
                .collect::<Result<_, _>>()
                .map_err(|e| bad(i + 2, format!("{l:?}: {e}")))?;
            let next = 256 + merges.len() as u32;
            match ids[..] {
                [a, b] if a < next && b < next => merges.push((a, b)),
                _ => return Err(bad(i + 2, format!("expected two ids below {next}, found {l:?}"))),
            }
        }
        Ok(BpeTokenizer::from_merges(merges))
    }
}

/// Replaces every occurrence of `pair` in `w` by `id`, left to right.
fn merge_pair(w: &mut Vec<u32>, pair: (u32, u32), id: u32) {
    let mut out = Vec::with_capacity(w.len());
    let mut i = 0;
    while i < w.len() {
        if i + 1 < w.len() && (w[i], w[i + 1]) == pair {
            out.push(id);
            i += 2;
        } else {
            out.push(w[i]);
            i += 1;
        }
    }
    *w = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_keep_the_leading_space_with_the_word() {
        assert_eq!(pieces("the cat  sat\nok"), vec!["the", " cat", " ", " sat", "\n", "ok"]);
        assert_eq!(pieces("  a"), vec![" ", " a"]);
        assert_eq!(pieces(""), Vec::<&str>::new());
    }

    #[test]
    fn trains_encodes_decodes_and_round_trips_files() {
        let text = "to be or not to be that is the question to be";
        let bpe = BpeTokenizer::train(text, 300);
        assert!(bpe.len() > 256 && bpe.len() <= 300);
        // The most frequent piece " be" (and "to") becomes one token.
        assert_eq!(bpe.encode(" be").len(), 1);
        for s in [text, "a brand new sentence, with ü and 🙂", ""] {
            assert_eq!(bpe.decode(&bpe.encode(s)), s);
        }
        let n = bpe.encode(text).len();
        assert!(n * 4 < text.len() * 3, "{n} tokens for {} bytes", text.len()); // stops when no pair repeats
        // Deterministic training.
        assert_eq!(BpeTokenizer::train(text, 300), bpe);
        let path = std::env::temp_dir().join(format!("fb_bpe_{}.txt", std::process::id()));
        bpe.save(&path).unwrap();
        assert_eq!(BpeTokenizer::load(&path).unwrap(), bpe);
        std::fs::write(&path, "firebrand-bpe 1\n1 2\n300 4\n").unwrap();
        let e = BpeTokenizer::load(&path).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("below 257"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }
}
