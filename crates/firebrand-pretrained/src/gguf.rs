//! A reader of GGUF v3 files (llama.cpp's checkpoint format): the metadata
//! (architecture, sizes, the tokenizer's vocabulary and merges, the chat
//! template) and the tensors, dequantized to `f32` on load from `F32`,
//! `F16`, `BF16`, `Q8_0`, `Q4_0` and `Q4_1`.
//!
//! Layout: the magic `GGUF`, a version, the tensor and key-value counts,
//! the key-value pairs, one info per tensor (name, dims with the contiguous
//! one first, type, offset), then the tensor data from the next multiple of
//! `general.alignment` (32). A tensor's dims here are PyTorch's order (the
//! file's reversed). The block formats hold 32 values each:
//! `Q8_0` a `f16` scale `d` and 32 `i8` (`x = d·q`), `Q4_0` `d` and 16 bytes
//! of nibbles (`x = d·(q − 8)`, low nibbles first), `Q4_1` `d`, a `f16`
//! minimum `m` and the nibbles (`x = d·q + m`).

use crate::{PretrainedError, Result};
use firebrand_autograd::Tensor;
use firebrand_ops::gemm::blocks::{BlockFormat, BlockWeight};
use half::f16;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `UINT8`..`UINT64`, widened.
    U64(u64),
    /// `INT8`..`INT64`, widened.
    I64(i64),
    /// `FLOAT32` and `FLOAT64`, widened.
    F64(f64),
    /// `BOOL`.
    Bool(bool),
    /// `STRING`.
    Str(String),
    /// `ARRAY` (of any one type).
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U64(v) => Some(v),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F64(v) => Some(v),
            MetaValue::U64(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, if it is an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// A tensor's element type (`ggml_type`); only some are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
    /// bfloat16.
    BF16,
    /// Blocks of 32: an `f16` scale and 32 `i8`.
    Q8_0,
    /// Blocks of 32: an `f16` scale and 32 4-bit values offset by 8.
    Q4_0,
    /// Blocks of 32: an `f16` scale, an `f16` minimum and 32 4-bit values.
    Q4_1,
    /// Another type (its `ggml_type` number), not read by this build.
    Other(u32),
}

impl GgmlType {
    fn from_code(c: u32) -> GgmlType {
        match c {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// `(values per block, bytes per block)`, for the types read.
    fn block(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Other(_) => return None,
        })
    }
}

/// One tensor's entry in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Its name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Its shape in PyTorch's order (the last dim contiguous).
    pub dims: Vec<usize>,
    /// Its element type.
    pub kind: GgmlType,
    /// Where its data starts, from the start of the data section.
    pub offset: u64,
}

/// An opened GGUF file: metadata, tensor infos and the bytes.
pub struct GgufFile {
    path: PathBuf,
    /// The format version (2 or 3).
    pub version: u32,
    /// The key-value metadata.
    pub metadata: BTreeMap<String, MetaValue>,
    /// The tensors, in file order.
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GgufFile({}, v{}, {} tensors)", self.path.display(), self.version, self.tensors.len())
    }
}

/// A bounds-checked cursor over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl Cursor<'_> {
    fn err(&self, msg: impl Into<String>) -> PretrainedError {
        PretrainedError::Gguf { path: self.path.to_path_buf(), tensor: None, msg: msg.into() }
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.err(format!("truncated: {n} bytes wanted at offset {} of {}", self.at, self.bytes.len())));
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u64()?;
        // Every element takes a byte at least: a count past the file is corrupt.
        if n > (self.bytes.len() - self.at) as u64 {
            return Err(self.err(format!("{what} of {n} at offset {} runs past the end of the file", self.at)));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.len("a string")?;
        let at = self.at;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| self.err(format!("a string at offset {at} is not UTF-8")))
    }

    fn value(&mut self, kind: u32) -> Result<MetaValue> {
        let b = |c: &mut Self, n| c.take(n).map(|s| s.to_vec());
        Ok(match kind {
            0 => MetaValue::U64(b(self, 1)?[0] as u64),
            1 => MetaValue::I64(b(self, 1)?[0] as i8 as i64),
            2 => MetaValue::U64(u16::from_le_bytes(b(self, 2)?.try_into().expect("2")) as u64),
            3 => MetaValue::I64(i16::from_le_bytes(b(self, 2)?.try_into().expect("2")) as i64),
            4 => MetaValue::U64(self.u32()? as u64),
            5 => MetaValue::I64(self.u32()? as i32 as i64),
            6 => MetaValue::F64(f32::from_bits(self.u32()?) as f64),
            7 => MetaValue::Bool(b(self, 1)?[0] != 0),
            8 => MetaValue::Str(self.string()?),
            9 => {
                let elem = self.u32()?;
                if elem == 9 {
                    return Err(self.err("nested arrays are not read"));
                }
                let n = self.len("an array")?;
                MetaValue::Array((0..n).map(|_| self.value(elem)).collect::<Result<_>>()?)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(self.u64()? as i64),
            12 => MetaValue::F64(f64::from_bits(self.u64()?)),
            other => return Err(self.err(format!("unknown metadata value type {other} at offset {}", self.at - 4))),
        })
    }
}

impl GgufFile {
    /// Reads a GGUF file (v2 or v3): the header, metadata and tensor infos,
    /// checking that every tensor's data lies inside the file.
    ///
    /// # Errors
    /// [`PretrainedError::Io`] when it cannot be read; [`PretrainedError::Gguf`]
    /// naming the file (and the tensor) for bad magic, another version, a
    /// truncated file, an unknown value type, or a tensor past the end.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|source| PretrainedError::Io { path: path.clone(), source })?;
        let mut c = Cursor { bytes: &bytes, at: 0, path: &path };
        if bytes.len() < 4 || &bytes[..4] != b"GGUF" {
            let magic = &bytes[..bytes.len().min(4)];
            return Err(c.err(format!("not a GGUF file (magic {magic:?}, expected \"GGUF\")")));
        }
        c.take(4)?;
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(c.err(format!("GGUF version {version}; this reader reads 2 and 3")));
        }
        let (n_tensors, n_kv) = (c.len("the tensor count")?, c.len("the metadata count")?);
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let kind = c.u32()?;
            let v = c.value(kind)?;
            metadata.insert(key, v);
        }
        // Grown as the infos are read: a corrupt count reserves nothing.
        let mut tensors = Vec::with_capacity(n_tensors.min(4096));
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            if n_dims > 8 {
                return Err(PretrainedError::Gguf { path, tensor: Some(name), msg: format!("{n_dims} dims") });
            }
            let mut dims = (0..n_dims).map(|_| c.u64().map(|d| d as usize)).collect::<Result<Vec<_>>>()?;
            dims.reverse();
            let kind = GgmlType::from_code(c.u32()?);
            let offset = c.u64()?;
            tensors.push(TensorInfo { name, dims, kind, offset });
        }
        let align = metadata.get("general.alignment").and_then(MetaValue::as_u64).unwrap_or(32).max(1) as usize;
        let data_start = c.at.next_multiple_of(align);
        let file = GgufFile { path, version, metadata, tensors, data_start, bytes };
        for t in &file.tensors {
            if let Some(n) = file.byte_len(t)? {
                let end = (file.data_start as u64).checked_add(t.offset).and_then(|e| e.checked_add(n as u64));
                if end.is_none_or(|end| end > file.bytes.len() as u64) {
                    let at = end.map_or("past 2^64".to_string(), |e| format!("at {e}"));
                    return Err(file.tensor_err(
                        t,
                        format!("its {n} bytes at offset {} end {at}, past the file's {}", t.offset, file.bytes.len()),
                    ));
                }
            }
        }
        Ok(file)
    }

    fn tensor_err(&self, t: &TensorInfo, msg: impl Into<String>) -> PretrainedError {
        PretrainedError::Gguf { path: self.path.clone(), tensor: Some(t.name.clone()), msg: msg.into() }
    }

    /// Bytes of a tensor's data (`None` for a type not read).
    fn byte_len(&self, t: &TensorInfo) -> Result<Option<usize>> {
        let Some((per, bytes)) = t.kind.block() else { return Ok(None) };
        let too_big = || self.tensor_err(t, format!("dims {:?} hold more bytes than a file can", t.dims));
        let n = t.dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(too_big)?;
        let row = t.dims.last().copied().unwrap_or(1);
        if per > 1 && !row.is_multiple_of(per) {
            return Err(self.tensor_err(t, format!("rows of {row} values do not fill blocks of {per} ({:?})", t.kind)));
        }
        Ok(Some((n / per).checked_mul(bytes).ok_or_else(too_big)?))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// A required non-negative integer (`llama.block_count`).
    ///
    /// # Errors
    /// [`PretrainedError::Gguf`] naming the key when it is missing or not one.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.get(key).and_then(MetaValue::as_u64).map(|v| v as usize).ok_or_else(|| PretrainedError::Gguf {
            path: self.path.clone(),
            tensor: None,
            msg: format!("metadata {key:?} is missing or not a non-negative integer"),
        })
    }

    /// The architecture (`general.architecture`, e.g. `llama`).
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(MetaValue::as_str)
    }

    /// The chat template (`tokenizer.chat_template`, Jinja), if the file has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.get("tokenizer.chat_template").and_then(MetaValue::as_str)
    }

    /// The info of the tensor called `name`.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor called `name`, dequantized to `f32`, in PyTorch's shape.
    ///
    /// # Errors
    /// [`PretrainedError::Gguf`] naming the tensor when it is absent or of a type this build does not read.
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let t = self.info(name).ok_or_else(|| PretrainedError::Gguf {
            path: self.path.clone(),
            tensor: Some(name.into()),
            msg: "not in the file".into(),
        })?;
        let n = self
            .byte_len(t)?
            .ok_or_else(|| self.tensor_err(t, format!("type {:?} is not read by this build", t.kind)))?;
        let at = self.data_start + t.offset as usize;
        let v = dequantize(t.kind, &self.bytes[at..at + n]);
        Ok(Tensor::from_vec(v, t.dims.clone()))
    }

    /// The tensor called `name` as a block weight `(rows, cols)`, its bytes
    /// as the file holds them (no dequantizing): `None` when it is not in
    /// one of the block formats (`Q8_0`, `Q4_0`, `Q4_1`) or not 2-D.
    ///
    /// # Errors
    /// [`PretrainedError::Gguf`] naming the tensor when it is absent or its
    /// data does not fill its blocks.
    pub fn block_weight(&self, name: &str) -> Result<Option<BlockWeight>> {
        let t = self.info(name).ok_or_else(|| PretrainedError::Gguf {
            path: self.path.clone(),
            tensor: Some(name.into()),
            msg: "not in the file".into(),
        })?;
        let format = match t.kind {
            GgmlType::Q8_0 => BlockFormat::Q8_0,
            GgmlType::Q4_0 => BlockFormat::Q4_0,
            GgmlType::Q4_1 => BlockFormat::Q4_1,
            _ => return Ok(None),
        };
        let &[n, k] = t.dims.as_slice() else { return Ok(None) };
        let len = self.byte_len(t)?.expect("a block type is read");
        let at = self.data_start + t.offset as usize;
        BlockWeight::from_gguf_bytes(format, &self.bytes[at..at + len], n, k)
            .map(Some)
            .map_err(|e| self.tensor_err(t, e.0))
    }

    /// Every tensor, dequantized, by name.
    ///
    /// # Errors
    /// As [`GgufFile::tensor`].
    pub fn load_all(&self) -> Result<BTreeMap<String, Tensor>> {
        self.tensors.iter().map(|t| Ok((t.name.clone(), self.tensor(&t.name)?))).collect()
    }
}

/// The `f32` values of `data`, a whole number of `kind`'s blocks.
///
/// # Panics
/// On a type this build does not read.
pub fn dequantize(kind: GgmlType, data: &[u8]) -> Vec<f32> {
    let h = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    match kind {
        GgmlType::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        GgmlType::F16 => data.chunks_exact(2).map(h).collect(),
        GgmlType::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        GgmlType::Q8_0 => data
            .chunks_exact(34)
            .flat_map(|b| {
                let d = h(&b[..2]);
                b[2..].iter().map(move |&q| d * q as i8 as f32)
            })
            .collect(),
        GgmlType::Q4_0 => data
            .chunks_exact(18)
            .flat_map(|b| {
                let d = h(&b[..2]);
                let qs = &b[2..];
                let lo = qs.iter().map(move |&q| d * ((q & 0x0f) as f32 - 8.0));
                let hi = qs.iter().map(move |&q| d * ((q >> 4) as f32 - 8.0));
                lo.chain(hi).collect::<Vec<_>>()
            })
            .collect(),
        GgmlType::Q4_1 => data
            .chunks_exact(20)
            .flat_map(|b| {
                let (d, m) = (h(&b[..2]), h(&b[2..4]));
                let qs = &b[4..];
                let lo = qs.iter().map(move |&q| d * (q & 0x0f) as f32 + m);
                let hi = qs.iter().map(move |&q| d * (q >> 4) as f32 + m);
                lo.chain(hi).collect::<Vec<_>>()
            })
            .collect(),
        GgmlType::Other(c) => panic!("dequantize: ggml type {c} is not read by this build"),
    }
}
