//! # Firebrand
//!
//! A deep-learning framework in Rust: as easy as Keras, fast on the CPU,
//! correct to the last gradient.
//!
//! This facade re-exports the layers of the workspace:
//!
//! | crate | what it holds |
//! |---|---|
//! | [`tensor`] (`firebrand-tensor`) | shapes, strided layouts, dtypes, devices, errors, CPU storage |
//! | [`ops`] (`firebrand-ops`) | CPU kernels: AVX-512 gemm, SIMD elementwise, reductions, softmax, indexing, im2col and pooling |
//! | [`autograd`] (`firebrand-autograd`) | the user-facing [`Tensor`], reverse-mode autograd, `gradcheck` |
//! | [`nn`] (`firebrand-nn`) | `Module` and `#[derive(Module)]`, layers (dense, convolution, pooling, batch norm, recurrent, transformer), losses, `Sequential`, `summary()`, safetensors weights |
//! | [`optim`] (`firebrand-optim`) | SGD, Adam, AdamW, RMSprop (PyTorch's rules), clipping, LR schedules |
//! | [`data`] (`firebrand-data`) | `Dataset`, `DataLoader`, image transforms, IDX/CSV readers, the embedded digits |
//! | [`train`] (`firebrand-train`) | Keras-like `Model` with `fit`/`evaluate`/`predict`, callbacks, metrics, history and its plots |
//!
//! Most programs only need the [`prelude`]:
//!
//! ```
//! use firebrand::prelude::*;
//!
//! manual_seed(0);
//! // Fit y = 3x - 1 with plain gradient descent.
//! let x = Tensor::rand([64, 1], -1.0, 1.0);
//! let y = &x * 3.0 - 1.0;
//! let w = Tensor::zeros([1, 1]).requires_grad_(true);
//! let b = Tensor::zeros([1]).requires_grad_(true);
//! for _ in 0..200 {
//!     let loss = (x.matmul(&w) + &b - &y).square().mean_all();
//!     loss.backward();
//!     for p in [&w, &b] {
//!         let g = p.grad().unwrap().to_vec::<f32>();
//!         p.update_f32("sgd", |d| d.iter_mut().zip(&g).for_each(|(d, g)| *d -= 0.5 * g)).unwrap();
//!         p.zero_grad();
//!     }
//! }
//! assert!((w.item() - 3.0).abs() < 1e-3 && (b.item() + 1.0).abs() < 1e-3);
//! ```

#![warn(missing_docs)]

#[doc(inline)]
pub use firebrand_autograd as autograd;
#[doc(inline)]
pub use firebrand_data as data;
/// Data-parallel training on MPI (facade feature `mpi`):
/// `DistributedDataParallel`, `ProcessGroup`, `DistributedSampler`; see
/// `docs/distributed.md`.
#[cfg(feature = "mpi")]
pub use firebrand_distributed as distributed;
#[doc(inline)]
pub use firebrand_nn as nn;
#[doc(inline)]
pub use firebrand_ops as ops;
#[doc(inline)]
pub use firebrand_optim as optim;
#[doc(inline)]
pub use firebrand_pretrained as pretrained;
#[doc(inline)]
pub use firebrand_tensor as tensor;
#[doc(inline)]
pub use firebrand_train as train;
/// The GPU device (facade feature `wgpu`): [`wgpu::adapters`] lists the
/// adapters; `Device::Wgpu(n)` uses the n-th.
#[cfg(feature = "wgpu")]
pub use firebrand_wgpu as wgpu;

pub use firebrand_ops::gemm::{MatmulPrecision, float32_matmul_precision, set_float32_matmul_precision};

pub use firebrand_autograd::{
    ConvOptions, DType, Device, Error, GradcheckOptions, MemoryStats, Result, Shape, Tensor, UnaryOp, Window2d,
    gradcheck, manual_seed, memory_stats, no_grad, reset_peak_memory, synchronize, with_no_grad,
};

/// The names most programs need: `use firebrand::prelude::*;`.
pub mod prelude {
    pub use firebrand_autograd::{
        AttentionOptions, DType, Device, Error, Result, Shape, Tensor, TensorIndex, bf16, f16, manual_seed, no_grad,
        with_no_grad,
    };
    pub use firebrand_data::{DataLoader, Dataset, TensorDataset};
    pub use firebrand_nn::loss::{Reduction, Target};
    pub use firebrand_nn::{
        Activation, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv1d, Conv2d, ConvConfig, Dropout, Embedding, Flatten, GELU,
        GRU, GlobalAvgPool, Gpt, GptConfig, Hardsigmoid, Hardswish, Hardtanh, Init, LSTM, LayerNorm, LeakyReLU, Linear,
        MaxPool2d, Module, ModuleExt, MultiHeadAttention, OneHot, Padding, RMSNorm, RNN, ReLU, ReLU6, Sampler,
        Sampling, Sequential, SiLU, Sigmoid, Softmax, Tanh, TransformerDecoder, TransformerDecoderLayer,
        TransformerEncoder, TransformerEncoderLayer,
    };
    pub use firebrand_optim::{
        Adam, AdamW, CosineWithWarmup, ExponentialLr, LrSchedule, Optimizer, RmsProp, Sgd, StepLr,
    };
    pub use firebrand_train::{
        Callback, CsvLogger, EarlyStopping, FitError, FitOptions, GradientClipping, History, Loss, LrScheduler, Model,
        ModelCheckpoint, Monitor, NonFinite, ReduceLrOnPlateau, TrainContext, Validation,
    };
}

/// The README's code example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
