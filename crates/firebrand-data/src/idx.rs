//! The IDX format of MNIST and Fashion-MNIST, plain or gzipped.

use crate::DataError;
use firebrand_autograd::Tensor;
use std::io::Read;
use std::path::{Path, PathBuf};

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    /// Dimension sizes.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let io = |source| DataError::Io { path: path.to_path_buf(), source };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::format(path, format!("corrupt gzip stream: {e}")))?;
        return Ok(out);
    }
    Ok(raw)
}

/// Parses IDX bytes (`name` is used in errors).
///
/// # Errors
/// [`DataError::Format`] for a bad magic number, an element type other than
/// unsigned bytes, or a size that disagrees with the header.
pub fn parse_idx(bytes: &[u8], name: &Path) -> Result<IdxArray, DataError> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::format(name, "bad magic number: not an IDX file"));
    }
    if bytes[2] != 0x08 {
        return Err(DataError::format(
            name,
            format!("element type 0x{:02x} is not supported (only unsigned bytes, 0x08)", bytes[2]),
        ));
    }
    let nd = bytes[3] as usize;
    let header = 4 + 4 * nd;
    if nd == 0 || bytes.len() < header {
        return Err(DataError::format(name, format!("truncated header ({} bytes for {nd} dimensions)", bytes.len())));
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let n = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| {
        DataError::format(name, format!("header dims {dims:?} describe more elements than memory can hold"))
    })?;
    let body = &bytes[header..];
    if body.len() != n {
        let what = if body.len() < n { "truncated" } else { "trailing bytes" };
        return Err(DataError::format(
            name,
            format!("{what}: header {dims:?} needs {n} bytes of data, found {}", body.len()),
        ));
    }
    Ok(IdxArray { dims, data: body.to_vec() })
}

/// Reads an IDX file (plain or `.gz`).
///
/// # Errors
/// On I/O failure or malformed content.
pub fn read_idx(path: impl AsRef<Path>) -> Result<IdxArray, DataError> {
    let path = path.as_ref();
    parse_idx(&read_maybe_gz(path)?, path)
}

/// Which half of MNIST-style data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The 60,000 training images (`train-*`).
    Train,
    /// The 10,000 test images (`t10k-*`).
    Test,
}

fn find_file(dir: &Path, stem: &str) -> Result<PathBuf, DataError> {
    let candidates = [dir.join(stem), dir.join(format!("{stem}.gz"))];
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| DataError::NotFound {
        what: stem.to_string(),
        looked: candidates.to_vec(),
        hint: "MNIST-style data needs the four IDX files in one folder".into(),
    })
}

/// Loads MNIST or Fashion-MNIST from `dir`: images `(N, 28, 28)` as `f32`
/// scaled to `[0, 1]`, labels `(N,)` as `i64`.
///
/// # Errors
/// When a file is missing or malformed, or image and label counts differ.
pub fn load_mnist(dir: impl AsRef<Path>, split: Split) -> Result<(Tensor, Tensor), DataError> {
    let dir = dir.as_ref();
    let prefix = if split == Split::Train { "train" } else { "t10k" };
    let img_path = find_file(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lbl_path = find_file(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = read_idx(&img_path)?;
    let labels = read_idx(&lbl_path)?;
    if images.dims.len() != 3 {
        return Err(DataError::format(
            &img_path,
            format!("expected 3 dimensions (N, rows, cols), found {:?}", images.dims),
        ));
    }
    if labels.dims.len() != 1 {
        return Err(DataError::format(&lbl_path, format!("expected 1 dimension, found {:?}", labels.dims)));
    }
    if images.dims[0] != labels.dims[0] {
        return Err(DataError::format(
            &lbl_path,
            format!("{} labels for {} images in {}", labels.dims[0], images.dims[0], img_path.display()),
        ));
    }
    let x: Vec<f32> = images.data.iter().map(|&b| b as f32 / 255.0).collect();
    let y: Vec<i64> = labels.data.iter().map(|&b| b as i64).collect();
    Ok((Tensor::from_vec(x, images.dims.clone()), Tensor::from_vec(y, [labels.dims[0]])))
}

/// Finds a data set folder: `explicit` if given, else `$FIREBRAND_DATA/<name>`
/// and `$FIREBRAND_DATA`, else the standard places (`/usr/share/datasets/<name>`,
/// as Debian's `dataset-fashion-mnist` installs, `../shared/data/<name>`,
/// `./data/<name>`). A folder counts when `probe` exists in it (plain or `.gz`).
///
/// # Errors
/// [`DataError::NotFound`] listing the places tried and `hint`.
pub fn find_dataset(name: &str, explicit: Option<&Path>, probe: &str, hint: &str) -> Result<PathBuf, DataError> {
    let mut looked = Vec::new();
    if let Some(p) = explicit {
        looked.push(p.to_path_buf());
    } else {
        if let Some(root) = std::env::var_os("FIREBRAND_DATA") {
            let root = PathBuf::from(root);
            looked.push(root.join(name));
            looked.push(root);
        }
        looked.push(PathBuf::from("/usr/share/datasets").join(name));
        looked.push(PathBuf::from("../shared/data").join(name));
        looked.push(PathBuf::from("data").join(name));
    }
    let found = looked.iter().find(|d| d.join(probe).is_file() || d.join(format!("{probe}.gz")).is_file());
    found.cloned().ok_or_else(|| DataError::NotFound {
        what: format!("data set {name:?}"),
        looked,
        hint: hint.to_string(),
    })
}

/// Fashion-MNIST's class names, by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// Finds Fashion-MNIST (as [`find_dataset`]: `explicit`, `FIREBRAND_DATA`,
/// the standard places) and loads both splits as datasets of images
/// `(N, 1, 28, 28)` in `[0, 1]` with `i64` labels; returns the folder too.
/// Flatten with `x.reshape([n, 784])` for an MLP.
///
/// # Errors
/// [`DataError::NotFound`] (with the places tried and how to install the
/// data) or a read error naming the file.
pub fn load_fashion_mnist(
    explicit: Option<&Path>,
) -> Result<(PathBuf, crate::TensorDataset, crate::TensorDataset), DataError> {
    let dir = find_dataset("fashion-mnist", explicit, "train-images-idx3-ubyte", FASHION_MNIST_HINT)?;
    let load = |split| -> Result<crate::TensorDataset, DataError> {
        let (x, y) = load_mnist(&dir, split)?;
        let n = x.dims()[0];
        Ok(crate::TensorDataset::new(x.reshape([n, 1, 28, 28]), y).expect("load_mnist checked the counts"))
    };
    let (train, test) = (load(Split::Train)?, load(Split::Test)?);
    Ok((dir, train, test))
}

/// Finds a text corpus: `explicit` (a file) if given, else `file` inside the
/// data set folder `name` as [`find_dataset`] looks for it (`FIREBRAND_DATA`,
/// the standard places).
///
/// # Errors
/// [`DataError::NotFound`] listing the places tried.
pub fn find_text(name: &str, file: &str, explicit: Option<&Path>) -> Result<PathBuf, DataError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(DataError::NotFound {
                what: format!("text file {}", p.display()),
                looked: vec![p.to_path_buf()],
                hint: String::new(),
            })
        };
    }
    let hint = format!("Pass --text FILE, or put {name}/{file} under FIREBRAND_DATA.");
    Ok(find_dataset(name, None, file, &hint)?.join(file))
}

/// Finds a text corpus as [`find_text`] does and reads it: its path and
/// its contents.
///
/// # Errors
/// [`DataError::NotFound`] listing the places tried, or [`DataError::Io`]
/// naming the file when it cannot be read or is not UTF-8.
pub fn read_text(name: &str, file: &str, explicit: Option<&Path>) -> Result<(PathBuf, String), DataError> {
    let path = find_text(name, file, explicit)?;
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((path, text)),
        Err(source) => Err(DataError::Io { path, source }),
    }
}

/// How to get Fashion-MNIST, for error messages.
pub const FASHION_MNIST_HINT: &str = "Install it with `apt-get install dataset-fashion-mnist` (Debian), or download the four \
     *-ubyte.gz files into a folder and pass `--data DIR` or set FIREBRAND_DATA.";
