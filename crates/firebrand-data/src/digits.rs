//! The UCI 8x8 handwritten digits, embedded in the crate (CC BY 4.0; see
//! `data/README.md`), so examples and tests need no download.

use crate::TensorDataset;
use crate::csv::parse_csv_labeled;
use std::io::Read;
use std::path::Path;

static DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// All 1,797 digits: inputs `(1797, 64)` scaled to `[0, 1]`, labels `(1797,)` in `0..10`.
///
/// Source: E. Alpaydin and C. Kaynak, *Optical Recognition of Handwritten
/// Digits*, UCI Machine Learning Repository (CC BY 4.0).
///
/// ```
/// let ds = firebrand_data::digits();
/// assert_eq!(ds.x.dims(), &[1797, 64]);
/// ```
pub fn digits() -> TensorDataset {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_CSV_GZ).read_to_string(&mut text).expect("the embedded file is valid gzip");
    let (x, y) =
        parse_csv_labeled(&text, -1, false, Path::new("<embedded digits.csv.gz>")).expect("the embedded file is valid");
    TensorDataset::new(x * (1.0 / 16.0), y).expect("as many labels as images")
}
