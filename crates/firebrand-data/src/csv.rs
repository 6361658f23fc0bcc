//! Numeric CSV with a label column, plain or gzipped.

use crate::DataError;
use crate::idx::read_maybe_gz;
use firebrand_autograd::Tensor;
use std::path::Path;

/// Parses CSV text of numbers into features `(N, F)` (`f32`) and integer
/// labels `(N,)` (`i64`) taken from column `label_col` (negative counts from
/// the end); `header` skips the first line. `name` is used in errors.
///
/// # Errors
/// [`DataError::Format`] naming the line for a wrong field count, a value that
/// is not a number, or a non-integer label.
pub fn parse_csv_labeled(
    text: &str,
    label_col: isize,
    header: bool,
    name: &Path,
) -> Result<(Tensor, Tensor), DataError> {
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut width: Option<usize> = None;
    for (lineno, line) in text.lines().enumerate().skip(header as usize) {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let w = *width.get_or_insert(fields.len());
        if fields.len() != w {
            return Err(DataError::format(name, format!("line {}: {} fields, expected {w}", lineno + 1, fields.len())));
        }
        let lc = if label_col < 0 { w as isize + label_col } else { label_col };
        if lc < 0 || lc as usize >= w {
            return Err(DataError::format(name, format!("label column {label_col} outside the {w} fields")));
        }
        for (i, f) in fields.iter().enumerate() {
            let v: f64 = f.parse().map_err(|_| {
                DataError::format(name, format!("line {}, field {}: {f:?} is not a number", lineno + 1, i + 1))
            })?;
            if i == lc as usize {
                if v.fract() != 0.0 {
                    return Err(DataError::format(name, format!("line {}: label {f:?} is not an integer", lineno + 1)));
                }
                y.push(v as i64);
            } else {
                x.push(v as f32);
            }
        }
    }
    let n = y.len();
    let f = width.map_or(0, |w| w - 1);
    Ok((Tensor::from_vec(x, [n, f]), Tensor::from_vec(y, [n])))
}

/// Reads a labeled numeric CSV file (plain or `.gz`); see [`parse_csv_labeled`].
///
/// # Errors
/// On I/O failure, invalid UTF-8 or malformed content.
pub fn read_csv_labeled(path: impl AsRef<Path>, label_col: isize, header: bool) -> Result<(Tensor, Tensor), DataError> {
    let path = path.as_ref();
    let bytes = read_maybe_gz(path)?;
    let text = String::from_utf8(bytes).map_err(|e| DataError::format(path, format!("not UTF-8 text: {e}")))?;
    parse_csv_labeled(&text, label_col, header, path)
}
