//! Pooling layers (`nn.MaxPool2d`, `nn.AvgPool2d`, global average pooling).

use crate::Module;
use firebrand_autograd::{Tensor, Window2d};

fn window(kernel: usize, stride: usize, padding: usize) -> Window2d {
    assert!(kernel > 0 && stride > 0, "pooling: kernel {kernel} and stride {stride} must be positive");
    assert!(padding * 2 <= kernel, "pooling: padding {padding} must be at most half the kernel {kernel} (as PyTorch)");
    Window2d { kernel: (kernel, kernel), stride: (stride, stride), padding: (padding, padding), dilation: (1, 1) }
}

/// Max over `k x k` windows of `(N, C, H, W)` (stride defaults to `k`, as in
/// PyTorch and Keras); the gradient flows to each window's maximum.
///
/// ```
/// use firebrand_nn::{MaxPool2d, Module};
/// use firebrand_autograd::Tensor;
/// let y = MaxPool2d::new(2).forward(&Tensor::arange(0.0, 16.0, 1.0).reshape([1, 1, 4, 4]));
/// assert_eq!(y.to_vec::<f32>(), vec![5.0, 7.0, 13.0, 15.0]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct MaxPool2d {
    win: Window2d,
}

impl MaxPool2d {
    /// A `k x k` window with stride `k`.
    pub fn new(kernel: usize) -> Self {
        MaxPool2d { win: window(kernel, kernel, 0) }
    }

    /// A `k x k` window with a chosen stride and padding (padded cells never win).
    ///
    /// # Panics
    /// On a zero kernel or stride, or padding above half the kernel.
    pub fn with_stride(kernel: usize, stride: usize, padding: usize) -> Self {
        MaxPool2d { win: window(kernel, stride, padding) }
    }
}

impl MaxPool2d {
    /// Its window (kernel, stride, padding, dilation).
    pub fn window(&self) -> Window2d {
        self.win
    }
}

impl Module for MaxPool2d {
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::module::traced(self, || {
            if x.rank() != 4 {
                crate::module::input_error(self, "(N, C, H, W)", x.dims());
            }
            x.max_pool2d(self.win) // (N, C, H, W) -> (N, C, Ho, Wo)
        })
    }

    fn describe(&self) -> String {
        pool_describe("MaxPool2d", &self.win)
    }
}

fn pool_describe(name: &str, w: &Window2d) -> String {
    let mut s = format!("{name}({}x{}", w.kernel.0, w.kernel.1);
    if w.stride != w.kernel {
        s.push_str(&format!(", stride {}", w.stride.0));
    }
    if w.padding != (0, 0) {
        s.push_str(&format!(", pad {}", w.padding.0));
    }
    s.push(')');
    s
}

/// Mean over `k x k` windows of `(N, C, H, W)` (stride defaults to `k`).
/// With padding, cells over the border count as zeros in the mean
/// (`count_include_pad`, PyTorch's default).
///
/// ```
/// use firebrand_nn::{AvgPool2d, Module};
/// use firebrand_autograd::Tensor;
/// let y = AvgPool2d::new(2).forward(&Tensor::arange(0.0, 16.0, 1.0).reshape([1, 1, 4, 4]));
/// assert_eq!(y.to_vec::<f32>(), vec![2.5, 4.5, 10.5, 12.5]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct AvgPool2d {
    win: Window2d,
    count_include_pad: bool,
}

impl AvgPool2d {
    /// A `k x k` window with stride `k`.
    pub fn new(kernel: usize) -> Self {
        AvgPool2d { win: window(kernel, kernel, 0), count_include_pad: true }
    }

    /// A `k x k` window with a chosen stride and padding.
    ///
    /// # Panics
    /// On a zero kernel or stride, or padding above half the kernel.
    pub fn with_stride(kernel: usize, stride: usize, padding: usize) -> Self {
        AvgPool2d { win: window(kernel, stride, padding), count_include_pad: true }
    }

    /// Divide by the cells inside the input only (`count_include_pad=False`).
    pub fn exclude_padding(mut self) -> Self {
        self.count_include_pad = false;
        self
    }
}

impl Module for AvgPool2d {
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::module::traced(self, || {
            if x.rank() != 4 {
                crate::module::input_error(self, "(N, C, H, W)", x.dims());
            }
            x.avg_pool2d(self.win, self.count_include_pad) // (N, C, H, W) -> (N, C, Ho, Wo)
        })
    }

    fn describe(&self) -> String {
        pool_describe("AvgPool2d", &self.win)
    }
}

/// Mean over all spatial positions: `(N, C, H, W) -> (N, C)` (Keras'
/// `GlobalAveragePooling2D`; PyTorch's `AdaptiveAvgPool2d(1)` followed by
/// `Flatten`). Also accepts `(N, C, L)`.
///
/// ```
/// use firebrand_nn::{GlobalAvgPool, Module};
/// use firebrand_autograd::Tensor;
/// let y = GlobalAvgPool.forward(&Tensor::ones([2, 3, 5, 5]));
/// assert_eq!(y.dims(), &[2, 3]);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalAvgPool;

impl Module for GlobalAvgPool {
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::module::traced(self, || {
            if x.rank() < 3 {
                crate::module::input_error(self, "(N, C, …)", x.dims());
            }
            x.flatten(2, -1).mean(&[2], false)
        })
    }

    fn describe(&self) -> String {
        "GlobalAvgPool".into()
    }
}
