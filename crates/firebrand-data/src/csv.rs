//! Tabular CSV, plain or gzipped, through the `csv` crate: quoting,
//! headers, the label column by name or index, categorical (string) columns
//! as indices or one-hot, and a policy for missing and non-finite values.
//! What was learned from the file (the columns, their categories and fill
//! values, the label's classes) is a [`CsvSchema`], saved beside a model and
//! applied to new files with [`read_csv_with_schema`].

use crate::idx::read_maybe_gz;
use crate::{DataError, TensorDataset};
use firebrand_autograd::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// A column, by header name or by position (negative counts from the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Column {
    /// By position; `-1` is the last column.
    Index(isize),
    /// By header name. A name no header has, that reads as an integer, is taken as a position.
    Name(String),
}

impl From<&str> for Column {
    fn from(s: &str) -> Column {
        Column::Name(s.to_string())
    }
}

impl From<isize> for Column {
    fn from(i: isize) -> Column {
        Column::Index(i)
    }
}

/// What to do with a missing (empty, `NA`, `?`, …), NaN or infinite value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Missing {
    /// An error naming the line and the column (the default).
    #[default]
    Error,
    /// Leave the row out (counted in [`CsvData::dropped_rows`]).
    DropRow,
    /// Fill a numeric feature with its column's mean and a categorical one
    /// with its most frequent value. A missing label is still an error.
    ImputeMean,
}

/// How string-valued feature columns become numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Categorical {
    /// One 0/1 column per category (pandas' `get_dummies`; the default).
    #[default]
    OneHot,
    /// The category's index (categories in sorted order).
    Index,
    /// Refuse: every feature must be a number.
    Refuse,
}

/// Options of [`read_csv`].
#[derive(Debug, Clone, PartialEq)]
pub struct CsvOptions {
    /// The label column (the last by default).
    pub label: Column,
    /// The first line names the columns (default `true`).
    pub header: bool,
    /// The field separator (default `b','`).
    pub delimiter: u8,
    /// Missing and non-finite values.
    pub missing: Missing,
    /// String-valued feature columns.
    pub categorical: Categorical,
    /// The number of classes, when known: a label at or above it is an error.
    pub classes: Option<usize>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            label: Column::Index(-1),
            header: true,
            delimiter: b',',
            missing: Missing::Error,
            categorical: Categorical::OneHot,
            classes: None,
        }
    }
}

/// How one feature column becomes numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FeatureKind {
    /// A number as it is; `fill` replaces a missing one (imputation).
    Numeric {
        /// The imputed value.
        fill: Option<f32>,
    },
    /// One of `categories`: its index, or one-hot over them; `fill` (an
    /// index) replaces a missing one.
    Categorical {
        /// The categories, sorted; a value's index is its position here.
        categories: Vec<String>,
        /// One 0/1 column per category instead of the index.
        one_hot: bool,
        /// The imputed category.
        fill: Option<usize>,
    },
}

/// A feature column: its name (the header's, or `column N` counting from 1) and encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureColumn {
    /// The column's name.
    pub name: String,
    /// Its position in the file, from 0.
    pub position: usize,
    /// How it becomes numbers.
    pub kind: FeatureKind,
}

/// What [`read_csv`] learned from a file: the feature columns and their
/// encodings, the label column and its classes. Save it beside a model
/// ([`CsvSchema::save`]) and read new files the same way with
/// [`read_csv_with_schema`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CsvSchema {
    /// The label column's name.
    pub label: String,
    /// Its position in the file, from 0.
    pub label_position: usize,
    /// The number of fields per row.
    pub fields: usize,
    /// The feature columns, in file order.
    pub features: Vec<FeatureColumn>,
    /// For string labels, the class names in index order; `None` for integer labels.
    pub label_names: Option<Vec<String>>,
    /// The number of classes.
    pub classes: usize,
}

impl CsvSchema {
    /// The width of a feature row (one-hot columns count once per category).
    pub fn width(&self) -> usize {
        self.features
            .iter()
            .map(|f| match &f.kind {
                FeatureKind::Categorical { categories, one_hot: true, .. } => categories.len(),
                _ => 1,
            })
            .sum()
    }

    /// The schema as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data serializes")
    }

    /// Writes [`CsvSchema::to_json`] to `path`.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), DataError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_json()).map_err(|source| DataError::Io { path: path.into(), source })
    }

    /// Reads a schema [`CsvSchema::save`] wrote.
    ///
    /// # Errors
    /// When the file cannot be read or is not such JSON.
    pub fn load(path: impl AsRef<Path>) -> Result<CsvSchema, DataError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.into(), source })?;
        serde_json::from_str(&text).map_err(|e| DataError::format(path, format!("not a CSV schema: {e}")))
    }
}

/// A CSV file read into tensors.
#[derive(Debug, Clone)]
pub struct CsvData {
    /// Features `(N, F)`, `f32`.
    pub x: Tensor,
    /// Class labels `(N,)`, `i64`.
    pub y: Tensor,
    /// How the columns were encoded.
    pub schema: CsvSchema,
    /// Rows left out under [`Missing::DropRow`].
    pub dropped_rows: usize,
}

impl CsvData {
    /// The features and labels as a data set for `fit`.
    pub fn dataset(&self) -> TensorDataset {
        TensorDataset::new(self.x.clone(), self.y.clone()).expect("as many labels as rows")
    }
}

/// A cell read from the file: a finite number, a string, or missing (with what stood there).
enum Cell<'a> {
    Number(f64),
    Text(&'a str),
    Missing(&'a str),
}

fn cell(field: &str) -> Cell<'_> {
    let f = field.trim();
    if matches!(f, "" | "NA" | "N/A" | "na" | "n/a" | "null" | "NULL" | "None" | "?") {
        return Cell::Missing(f);
    }
    match f.parse::<f64>() {
        Ok(v) if v.is_finite() => Cell::Number(v),
        Ok(_) => Cell::Missing(f),
        Err(_) => Cell::Text(f),
    }
}

struct Rows {
    names: Vec<String>,
    rows: Vec<(u64, csv::StringRecord)>, // (line, fields)
}

fn read_rows(bytes: &[u8], opts: &CsvOptions, path: &Path) -> Result<Rows, DataError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(DataError::format(path, "the file is empty"));
    }
    let mut reader =
        csv::ReaderBuilder::new().has_headers(false).delimiter(opts.delimiter).flexible(true).from_reader(bytes);
    let mut rows = Vec::new();
    let mut width = None;
    for record in reader.records() {
        let record = record.map_err(|e| {
            let at = e.position().map(|p| format!("line {}: ", p.line())).unwrap_or_default();
            DataError::format(path, format!("{at}{e}"))
        })?;
        let line = record.position().map_or(0, |p| p.line());
        if record.len() == 1 && record[0].trim().is_empty() {
            continue; // a blank line
        }
        let w = *width.get_or_insert(record.len());
        if record.len() != w {
            return Err(DataError::format(path, format!("line {line}: {} fields, expected {w}", record.len())));
        }
        rows.push((line, record));
    }
    let width = width.unwrap_or(0);
    let names = if opts.header && !rows.is_empty() {
        let (_, h) = rows.remove(0);
        h.iter().map(|s| s.trim().to_string()).collect()
    } else {
        (1..=width).map(|i| format!("column {i}")).collect()
    };
    if rows.is_empty() {
        return Err(DataError::format(path, "no data rows"));
    }
    Ok(Rows { names, rows })
}

fn resolve(column: &Column, names: &[String], path: &Path) -> Result<usize, DataError> {
    let w = names.len() as isize;
    let index = |i: isize| {
        let j = if i < 0 { w + i } else { i };
        (0..w)
            .contains(&j)
            .then_some(j as usize)
            .ok_or_else(|| DataError::format(path, format!("label column {i} is outside the {w} columns")))
    };
    match column {
        Column::Index(i) => index(*i),
        Column::Name(n) => match names.iter().position(|h| h == n) {
            Some(p) => Ok(p),
            None => match n.parse::<isize>() {
                Ok(i) => index(i),
                Err(_) => Err(DataError::format(path, format!("no column named {n:?}; the columns are {names:?}"))),
            },
        },
    }
}

fn missing_error(path: &Path, line: u64, name: &str, pos: usize, what: &str) -> DataError {
    let what = if what.is_empty() { "an empty field".to_string() } else { format!("{what:?}") };
    DataError::format(
        path,
        format!(
            "line {line}, column {name:?} ({}): missing or non-finite value ({what}); \
             choose a policy to drop such rows or impute them",
            pos + 1
        ),
    )
}

/// Reads a CSV file (plain or `.gz`) into features and class labels, learning
/// each column's encoding.
///
/// ```
/// use firebrand_data::{CsvOptions, Missing, read_csv};
/// let path = std::env::temp_dir().join(format!("fb_doc_{}.csv", std::process::id()));
/// std::fs::write(&path, "size,colour,note,kind\n1.5,red,\"a, quoted\",0\n2,blue,x,1\n,red,y,1\n").unwrap();
/// let err = read_csv(&path, &CsvOptions { label: "kind".into(), ..Default::default() }).unwrap_err();
/// assert!(err.to_string().contains("line 4, column \"size\" (1): missing"));
/// let opts = CsvOptions { label: "kind".into(), missing: Missing::ImputeMean, ..Default::default() };
/// let data = read_csv(&path, &opts).unwrap();
/// // size (imputed 1.75 on line 4), colour one-hot (blue, red), note one-hot (3 values)
/// assert_eq!(data.x.dims(), &[3, 6]);
/// assert_eq!(data.x.to_vec::<f32>()[12..15], [1.75, 0.0, 1.0]);
/// assert_eq!(data.y.to_vec::<i64>(), [0, 1, 1]);
/// # std::fs::remove_file(path).unwrap();
/// ```
///
/// # Errors
/// [`DataError::Format`] naming the file, and the line and column where it
/// helps: an empty file or one without data rows, a row with another field
/// count, a label column that does not exist, a missing or non-finite value
/// (under [`Missing::Error`]), a string feature under
/// [`Categorical::Refuse`], a label that is not an integer, negative, or at or
/// above [`CsvOptions::classes`].
pub fn read_csv(path: impl AsRef<Path>, opts: &CsvOptions) -> Result<CsvData, DataError> {
    let path = path.as_ref();
    parse_csv(&read_maybe_gz(path)?, opts, path)
}

/// [`read_csv`] on bytes in memory; `name` stands for the file in errors.
///
/// # Errors
/// As [`read_csv`].
pub fn parse_csv(bytes: &[u8], opts: &CsvOptions, name: &Path) -> Result<CsvData, DataError> {
    let Rows { names, rows } = read_rows(bytes, opts, name)?;
    let label_position = resolve(&opts.label, &names, name)?;
    let label_name = names[label_position].clone();
    let positions: Vec<usize> = (0..names.len()).filter(|&p| p != label_position).collect();

    // Rows with a missing value anywhere: an error, or left out.
    let mut dropped = 0;
    let mut kept = Vec::with_capacity(rows.len());
    'rows: for (line, rec) in &rows {
        for p in std::iter::once(label_position).chain(positions.iter().copied()) {
            if let Cell::Missing(what) = cell(&rec[p]) {
                match opts.missing {
                    Missing::DropRow => {
                        dropped += 1;
                        continue 'rows;
                    }
                    Missing::ImputeMean if p != label_position => {}
                    Missing::ImputeMean => {
                        return Err(DataError::format(
                            name,
                            format!(
                                "line {line}, label column {label_name:?}: the label is missing; a label cannot be imputed"
                            ),
                        ));
                    }
                    Missing::Error => return Err(missing_error(name, *line, &names[p], p, what)),
                }
            }
        }
        kept.push((*line, rec));
    }
    if kept.is_empty() {
        return Err(DataError::format(name, format!("every one of the {} rows has a missing value", rows.len())));
    }

    // Each feature column: numeric unless some value is a string.
    let mut features = Vec::with_capacity(positions.len());
    for &p in &positions {
        let text = kept.iter().find_map(|(line, r)| match cell(&r[p]) {
            Cell::Text(t) => Some((*line, t)),
            _ => None,
        });
        let kind = match (text, opts.categorical) {
            (None, _) => {
                let present: Vec<f64> = kept
                    .iter()
                    .filter_map(|(_, r)| if let Cell::Number(v) = cell(&r[p]) { Some(v) } else { None })
                    .collect();
                let fill = (opts.missing == Missing::ImputeMean && present.len() < kept.len())
                    .then(|| (present.iter().sum::<f64>() / present.len().max(1) as f64) as f32);
                FeatureKind::Numeric { fill }
            }
            (Some((line, t)), Categorical::Refuse) => {
                return Err(DataError::format(
                    name,
                    format!("line {line}, column {:?} ({}): {t:?} is not a number", names[p], p + 1),
                ));
            }
            (Some(_), enc) => {
                let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                for (_, r) in &kept {
                    if !matches!(cell(&r[p]), Cell::Missing(_)) {
                        *counts.entry(r[p].trim().to_string()).or_default() += 1;
                    }
                }
                let categories: Vec<String> = counts.keys().cloned().collect();
                let most = counts.iter().max_by_key(|(_, c)| **c).map(|(k, _)| k.clone());
                let fill = (opts.missing == Missing::ImputeMean)
                    .then(|| most.and_then(|m| categories.iter().position(|c| *c == m)))
                    .flatten();
                FeatureKind::Categorical { categories, one_hot: enc == Categorical::OneHot, fill }
            }
        };
        features.push(FeatureColumn { name: names[p].clone(), position: p, kind });
    }

    // Labels: integers from 0, or strings given indices in sorted order.
    let label_text = kept.iter().any(|(_, r)| matches!(cell(&r[label_position]), Cell::Text(_)));
    let label_names = label_text.then(|| {
        let set: std::collections::BTreeSet<String> =
            kept.iter().map(|(_, r)| r[label_position].trim().to_string()).collect();
        set.into_iter().collect::<Vec<_>>()
    });
    let classes = match &label_names {
        Some(n) => n.len(),
        None => {
            let max = kept
                .iter()
                .filter_map(|(_, r)| if let Cell::Number(v) = cell(&r[label_position]) { Some(v) } else { None })
                .fold(0.0f64, f64::max);
            opts.classes.unwrap_or((max as usize).saturating_add(1))
        }
    };
    let schema = CsvSchema {
        label: label_name,
        label_position,
        fields: names.len(),
        features,
        label_names,
        classes: opts.classes.unwrap_or(classes),
    };
    let (x, y) = encode(&kept, &schema, name)?;
    Ok(CsvData { x, y, schema, dropped_rows: dropped })
}

/// Turns rows into `(x, y)` with `schema`'s encodings.
fn encode(rows: &[(u64, &csv::StringRecord)], schema: &CsvSchema, path: &Path) -> Result<(Tensor, Tensor), DataError> {
    let width = schema.width();
    let mut x = Vec::with_capacity(rows.len() * width);
    let mut y = Vec::with_capacity(rows.len());
    let lp = schema.label_position;
    for &(line, r) in rows {
        if r.len() != schema.fields {
            return Err(DataError::format(
                path,
                format!("line {line}: {} fields, expected {}", r.len(), schema.fields),
            ));
        }
        let raw = r[lp].trim();
        let label = match &schema.label_names {
            Some(names) => names.iter().position(|n| n == raw).ok_or_else(|| {
                DataError::format(path, format!("line {line}: label {raw:?} is not one of the classes {names:?}"))
            })? as i64,
            None => match cell(raw) {
                Cell::Number(v) if v.fract() != 0.0 => {
                    return Err(DataError::format(path, format!("line {line}: label {raw:?} is not an integer")));
                }
                Cell::Number(v) if v < 0.0 => {
                    return Err(DataError::format(
                        path,
                        format!("line {line}: label {raw} is negative; class labels run from 0"),
                    ));
                }
                Cell::Number(v) if v as usize >= schema.classes => {
                    return Err(DataError::format(
                        path,
                        format!("line {line}: label {raw} is out of range for {} classes", schema.classes),
                    ));
                }
                Cell::Number(v) => v as i64,
                _ => {
                    return Err(DataError::format(path, format!("line {line}: label {raw:?} is not an integer")));
                }
            },
        };
        y.push(label);
        for f in &schema.features {
            let c = cell(&r[f.position]);
            let missing = |what: &str| missing_error(path, line, &f.name, f.position, what);
            match (&f.kind, c) {
                (FeatureKind::Numeric { .. }, Cell::Number(v)) => x.push(v as f32),
                (FeatureKind::Numeric { fill: Some(v) }, Cell::Missing(_)) => x.push(*v),
                (FeatureKind::Numeric { .. }, Cell::Missing(w)) => return Err(missing(w)),
                (FeatureKind::Numeric { .. }, Cell::Text(t)) => {
                    return Err(DataError::format(
                        path,
                        format!("line {line}, column {:?} ({}): {t:?} is not a number", f.name, f.position + 1),
                    ));
                }
                (FeatureKind::Categorical { categories, one_hot, fill }, c) => {
                    let index = match c {
                        Cell::Missing(w) => fill.ok_or_else(|| missing(w))?,
                        _ => {
                            let v = r[f.position].trim();
                            categories.iter().position(|k| k == v).ok_or_else(|| {
                                DataError::format(
                                    path,
                                    format!(
                                        "line {line}, column {:?} ({}): category {v:?} was not seen when the schema was made ({categories:?})",
                                        f.name,
                                        f.position + 1
                                    ),
                                )
                            })?
                        }
                    };
                    if *one_hot {
                        x.extend((0..categories.len()).map(|k| if k == index { 1.0 } else { 0.0 }));
                    } else {
                        x.push(index as f32);
                    }
                }
            }
        }
    }
    let n = y.len();
    Ok((Tensor::from_vec(x, [n, width]), Tensor::from_vec(y, [n])))
}

/// Reads a CSV file with the encodings a [`read_csv`] call learned (the same
/// columns, categories, fill values and classes), e.g. a test set or new
/// data for a saved model. `opts` gives the header, delimiter and the
/// missing-value policy (imputation uses the schema's fill values).
///
/// # Errors
/// As [`read_csv`], and for a field count other than the schema's or a
/// category or label it does not know (naming the line and column).
pub fn read_csv_with_schema(
    path: impl AsRef<Path>,
    schema: &CsvSchema,
    opts: &CsvOptions,
) -> Result<CsvData, DataError> {
    let path = path.as_ref();
    let Rows { rows, .. } = read_rows(&read_maybe_gz(path)?, opts, path)?;
    let mut dropped = 0;
    let kept: Vec<(u64, &csv::StringRecord)> = rows
        .iter()
        .filter(|(_, r)| {
            let has_missing = r.iter().any(|f| matches!(cell(f), Cell::Missing(_)));
            let drop = opts.missing == Missing::DropRow && has_missing;
            dropped += drop as usize;
            !drop
        })
        .map(|(l, r)| (*l, r))
        .collect();
    let (x, y) = encode(&kept, schema, path)?;
    Ok(CsvData { x, y, schema: schema.clone(), dropped_rows: dropped })
}

/// Parses numeric CSV text into features `(N, F)` (`f32`) and integer
/// labels `(N,)` (`i64`) taken from column `label_col` (negative counts from
/// the end); `header` skips the first line. `name` is used in errors. Every
/// feature must be a number; [`read_csv`] takes the rest.
///
/// # Errors
/// [`DataError::Format`] naming the line for a wrong field count, a value that
/// is not a number, a missing value, or a label that is not a non-negative integer.
pub fn parse_csv_labeled(
    text: &str,
    label_col: isize,
    header: bool,
    name: &Path,
) -> Result<(Tensor, Tensor), DataError> {
    let opts =
        CsvOptions { label: Column::Index(label_col), header, categorical: Categorical::Refuse, ..Default::default() };
    let d = parse_csv(text.as_bytes(), &opts, name)?;
    Ok((d.x, d.y))
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
