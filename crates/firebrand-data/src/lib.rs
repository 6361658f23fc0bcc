//! # firebrand-data
//!
//! Getting examples into batches.
//!
//! * [`Dataset`] (`len`, `get`, `get_batch`) and the in-memory
//!   [`TensorDataset`] with seeded `split` and `subset`.
//! * [`DataLoader`]: batch size, seeded per-epoch shuffling, `drop_last`,
//!   prefetch on a background thread; [`DistributedSampler`] shards every
//!   epoch across the processes of a data-parallel run
//!   ([`DataLoader::sampler`]).
//! * Readers returning typed [`DataError`]s that name the file: IDX for MNIST
//!   and Fashion-MNIST ([`load_mnist`], plain or `.gz`), and tabular CSV
//!   ([`read_csv`]: quoting, headers, the label by name or index, string
//!   columns one-hot or as indices, a [`Missing`]-value policy, and a
//!   [`CsvSchema`] to read new files the same way); [`find_dataset`] looks in `--data`,
//!   `FIREBRAND_DATA` and the standard places.
//! * [`Standardize`] (per-feature mean/std fitted on training data).
//! * Image [`Transform`]s applied by the loader per batch: [`Normalize`],
//!   [`RandomCrop`] (shifts with zero padding), [`RandomHorizontalFlip`],
//!   [`Compose`]; seeded per (seed, epoch, batch).
//! * [`digits`]: the UCI 8x8 digits embedded in the crate.
//! * Text: [`CharVocab`] (build, encode, decode, save/load) and
//!   [`TextWindows`] (`(window, next token)` examples with a stride);
//!   [`TokenBatches`] (random windows with next-token targets at every
//!   position, each batch a function of `(seed, step)`: language-model
//!   training that resumes exactly);
//!   [`BpeTokenizer`], a byte-level BPE trained on a corpus, saved and loaded.
//!
//! Batches are `(inputs, targets)` tensors for `firebrand-train`'s loop.
//!
//! ```
//! use firebrand_data::{digits, DataLoader};
//! let (train, test) = digits().split(0.2, 0);
//! let loader = DataLoader::new(train, 32).shuffle(0).prefetch(2);
//! let (x, y) = loader.epoch(0).next().unwrap();
//! assert_eq!((x.dims(), y.dims()), (&[32, 64][..], &[32][..]));
//! assert_eq!(test.x.dims()[0], 359);
//! ```

#![warn(missing_docs)]

mod bpe;
mod csv;
mod dataset;
mod digits;
mod error;
mod idx;
mod loader;
mod sampler;
mod text;
mod text_folder;
mod transform;

pub use bpe::BpeTokenizer;
pub use csv::{
    Categorical, Column, CsvData, CsvOptions, CsvSchema, FeatureColumn, FeatureKind, Missing, parse_csv,
    parse_csv_labeled, read_csv, read_csv_labeled, read_csv_with_schema,
};
pub use dataset::{Dataset, Standardize, Subset, TensorDataset, random_split};
pub use digits::digits;
pub use error::DataError;
pub use idx::{
    FASHION_MNIST_CLASSES, FASHION_MNIST_HINT, IdxArray, Split, find_dataset, find_text, load_fashion_mnist,
    load_mnist, parse_idx, read_idx, read_text,
};
pub use loader::{Batches, DataLoader};
pub use sampler::{DistributedSampler, launched_world_size};
pub use text::{CharVocab, TextWindows, TokenBatches};
pub use text_folder::{TextFolder, text_dataset_from_directory};
pub use transform::{Compose, Normalize, RandomCrop, RandomHorizontalFlip, Transform};
