//! The `Tensor` type: shared storage, a strided layout, a device, and (when it
//! takes part in autograd) the op that produced it.

use crate::random;
use firebrand_tensor::backend::{Backend, Storage, as_cpu, registered_backend};
use firebrand_tensor::{CpuStorage, DType, Device, Element, Error, Layout, Result, Shape};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

/// Unique identity of a tensor handle (views get their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Computes the gradients of an op's inputs from `(output, grad_output)`.
pub(crate) type BackwardFn = Box<dyn Fn(&Tensor, &Tensor) -> Vec<Option<Tensor>> + Send + Sync>;

/// The recorded op that produced a tensor.
pub(crate) struct GradFn {
    pub(crate) name: &'static str,
    pub(crate) inputs: Vec<Tensor>,
    pub(crate) backward: BackwardFn,
    /// The storage versions of the inputs, then of the output, when the op
    /// ran: backward refuses to run on data modified in place since.
    pub(crate) versions: Vec<u64>,
    /// Where the forward pass was called, in anomaly mode.
    pub(crate) site: crate::anomaly::CallSite,
}

/// A storage shared by a tensor and its views, with PyTorch's version
/// counter: every in-place write bumps it.
#[derive(Debug)]
pub(crate) struct StorageCell {
    data: RwLock<Storage>,
    version: AtomicU64,
}

impl StorageCell {
    pub(crate) fn new(s: Storage) -> Self {
        StorageCell { data: RwLock::new(s), version: AtomicU64::new(0) }
    }
    pub(crate) fn read(&self) -> std::sync::LockResult<RwLockReadGuard<'_, Storage>> {
        self.data.read()
    }
    /// Write access for an in-place op; bumps the version.
    pub(crate) fn write(&self) -> std::sync::LockResult<std::sync::RwLockWriteGuard<'_, Storage>> {
        self.version.fetch_add(1, Ordering::Relaxed);
        self.data.write()
    }
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }
}

pub(crate) struct TensorImpl {
    pub(crate) id: TensorId,
    pub(crate) storage: Arc<StorageCell>,
    pub(crate) layout: Layout,
    pub(crate) requires_grad: AtomicBool,
    pub(crate) grad_fn: Option<GradFn>,
    pub(crate) grad: Mutex<Option<Tensor>>,
}

/// An n-dimensional array with a runtime shape, living on a [`Device`], that
/// can record the ops applied to it for reverse-mode autograd.
///
/// Cloning is cheap (a reference count); views such as [`Tensor::transpose`]
/// or [`Tensor::narrow`] share the storage and only change the layout.
///
/// **Creating** tensors: from data, filled, ranges, random (seeded by
/// [`manual_seed`](crate::manual_seed)), in any [`DType`](crate::DType):
///
/// ```
/// use firebrand_autograd::{DType, Tensor, manual_seed};
/// let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]); // (2, 3) f32
/// let ids = Tensor::from_vec(vec![3i64, 0, 2], [3]); // i64
/// let z = Tensor::zeros([2, 3]);
/// let r = Tensor::arange(0.0, 1.0, 0.25); // [0, 0.25, 0.5, 0.75]
/// manual_seed(0);
/// let n = Tensor::randn([4, 4], 0.0, 1.0);
/// let h = a.to_dtype(DType::F16);
/// assert_eq!((a.dims(), ids.dtype(), r.elem_count(), h.dtype()), (&[2, 3][..], DType::I64, 4, DType::F16));
/// assert_eq!(z.shape(), a.shape());
/// assert_eq!(n.dims(), &[4, 4]);
/// ```
///
/// **Indexing and views**: [`Tensor::i`] takes positions and ranges as
/// PyTorch's `x[...]` does; `t()`, `narrow`, `reshape`, `permute` make views
/// without copying:
///
/// ```
/// use firebrand_autograd::Tensor;
/// let x = Tensor::arange(0.0, 6.0, 1.0).reshape([2, 3]);
/// assert_eq!(x.i((-1, 1..)).to_vec::<f32>(), vec![4.0, 5.0]); // x[-1, 1:]
/// assert_eq!(x.t().dims(), &[3, 2]);
/// assert_eq!(x.narrow(1, 0, 2).to_vec::<f32>(), vec![0.0, 1.0, 3.0, 4.0]);
/// let mask = x.gt(&Tensor::scalar(2.0)); // bool
/// assert_eq!(x.masked_select(&mask).to_vec::<f32>(), vec![3.0, 4.0, 5.0]);
/// ```
///
/// **Reductions** take the dims to reduce (an empty list reduces all, as in
/// PyTorch) and whether to keep them:
///
/// ```
/// use firebrand_autograd::Tensor;
/// let x = Tensor::from_vec(vec![1.0f32, 5.0, -2.0, 4.0], [2, 2]);
/// assert_eq!(x.sum(&[1], false).to_vec::<f32>(), vec![6.0, 2.0]);
/// assert_eq!(x.mean(&[0], true).dims(), &[1, 2]);
/// assert_eq!(x.max_all().item(), 5.0);
/// assert_eq!(x.argmax(-1, false).to_vec::<i64>(), vec![1, 1]);
/// assert_eq!(x.sum(&[], false).item(), 8.0);
/// ```
///
/// **Autograd**: mark leaves with `requires_grad_(true)`, call `backward()`
/// on a scalar, read `grad()`; [`no_grad`](crate::no_grad) stops recording:
///
/// ```
/// use firebrand_autograd::Tensor;
///
/// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]);
/// let w = Tensor::from_vec(vec![0.5f32, -1.0], [2, 1]).requires_grad_(true);
/// let loss = x.matmul(&w).square().sum_all();
/// loss.backward();
/// // d/dw sum((x w)^2) = 2 xᵀ (x w)
/// assert_eq!(w.grad().unwrap().to_vec::<f32>(), vec![-18.0, -26.0]);
/// let frozen = firebrand_autograd::with_no_grad(|| x.matmul(&w));
/// assert!(!frozen.requires_grad());
/// ```
///
/// # Panics
/// The plain forms of ops panic on a shape or dtype mismatch, with a message
/// naming the op and the shapes; each has a `try_` form returning
/// [`Result`](crate::Result).
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<TensorImpl>);

impl Tensor {
    // ---- construction -------------------------------------------------------

    pub(crate) fn from_parts(storage: Arc<StorageCell>, layout: Layout, grad_fn: Option<GradFn>) -> Tensor {
        let requires_grad = grad_fn.is_some();
        Tensor(Arc::new(TensorImpl {
            id: TensorId::new(),
            storage,
            layout,
            requires_grad: AtomicBool::new(requires_grad),
            grad_fn,
            grad: Mutex::new(None),
        }))
    }

    /// A new contiguous CPU tensor owning `storage`.
    pub(crate) fn from_storage(storage: CpuStorage, shape: impl Into<Shape>) -> Tensor {
        Tensor::from_backend(Box::new(storage), shape)
    }

    /// A new contiguous tensor owning a backend's storage.
    pub(crate) fn from_backend(storage: Storage, shape: impl Into<Shape>) -> Tensor {
        Tensor::from_parts(Arc::new(StorageCell::new(storage)), Layout::contiguous(shape), None)
    }

    /// The view that undoes `permute(perm)` on a fresh (unrecorded) tensor.
    pub(crate) fn unpermuted(&self, perm: &[usize]) -> Tensor {
        let mut inv = vec![0; perm.len()];
        perm.iter().enumerate().for_each(|(i, &p)| inv[p] = i);
        self.view_with(self.layout().permute(&inv).expect("inverse of a permutation"))
    }

    /// A view of this tensor's storage with another layout (no autograd record).
    pub(crate) fn view_with(&self, layout: Layout) -> Tensor {
        Tensor::from_parts(self.0.storage.clone(), layout, None)
    }

    /// A tensor from a flat vector in row-major order.
    ///
    /// # Panics
    /// When `data.len()` differs from the shape's element count; see [`Tensor::try_from_vec`].
    #[track_caller]
    pub fn from_vec<T: Element>(data: Vec<T>, shape: impl Into<Shape>) -> Tensor {
        Tensor::try_from_vec(data, shape).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A tensor from a flat vector in row-major order.
    ///
    /// # Errors
    /// When `data.len()` differs from the shape's element count.
    pub fn try_from_vec<T: Element>(data: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::InvalidShape {
                op: "from_vec",
                msg: format!("{} elements given for {} expected", data.len(), shape.elem_count()),
                shape,
            });
        }
        let storage = CpuStorage::from_vec(data);
        Ok(Tensor::from_storage(storage, shape))
    }

    /// A tensor copied from a slice.
    ///
    /// # Panics
    /// When the length differs from the shape's element count.
    #[track_caller]
    pub fn from_slice<T: Element>(data: &[T], shape: impl Into<Shape>) -> Tensor {
        Tensor::from_vec(data.to_vec(), shape)
    }

    /// A 0-dimensional `f32` tensor.
    pub fn scalar(v: f32) -> Tensor {
        Tensor::from_vec(vec![v], ())
    }

    /// A tensor of `dtype` filled with `v` (converted by the [`Element`]
    /// rules: truncated toward zero for integers, `v != 0` for bool).
    ///
    /// ```
    /// use firebrand_autograd::{DType, Tensor};
    /// let t = Tensor::full_dtype(2.7, [2], DType::I32);
    /// assert_eq!(t.to_vec::<i32>(), vec![2, 2]);
    /// ```
    pub fn full_dtype(v: f64, shape: impl Into<Shape>, dtype: DType) -> Tensor {
        let shape = shape.into();
        let n = shape.elem_count();
        if dtype == DType::F32 {
            return Tensor::full(v as f32, shape);
        }
        let st = firebrand_tensor::cpu_of_dtype!(dtype, T => vec![<T as Element>::from_f64(v); n]);
        Tensor::from_storage(st, shape)
    }

    /// A tensor filled with `v` (`f32`).
    pub fn full(v: f32, shape: impl Into<Shape>) -> Tensor {
        let shape = shape.into();
        let mut buf = firebrand_tensor::pool::take_f32(shape.elem_count());
        buf.fill(v);
        Tensor::from_storage(CpuStorage::F32(buf), shape)
    }

    /// Zeros (`f32`).
    pub fn zeros(shape: impl Into<Shape>) -> Tensor {
        Tensor::full(0.0, shape)
    }

    /// Ones (`f32`).
    pub fn ones(shape: impl Into<Shape>) -> Tensor {
        Tensor::full(1.0, shape)
    }

    /// `v` everywhere on `device` (PyTorch's `torch.full(..., device=)`).
    ///
    /// # Errors
    /// When `device` has no backend.
    pub fn full_on(v: f32, shape: impl Into<Shape>, device: Device) -> Result<Tensor> {
        Tensor::full(v, shape).to_device(device)
    }

    /// Zeros with this tensor's shape, on its device.
    pub fn zeros_like(&self) -> Tensor {
        self.full_like(0.0)
    }

    /// Ones with this tensor's shape, on its device.
    pub fn ones_like(&self) -> Tensor {
        self.full_like(1.0)
    }

    /// `v` everywhere, with this tensor's shape, dtype and device.
    pub fn full_like(&self, v: f32) -> Tensor {
        Tensor::full_dtype(v as f64, self.shape().clone(), self.dtype())
            .to_device(self.device())
            .expect("the tensor's own device has a backend")
    }

    /// The identity matrix `(n, n)`.
    pub fn eye(n: usize) -> Tensor {
        let mut v = vec![0.0f32; n * n];
        (0..n).for_each(|i| v[i * n + i] = 1.0);
        Tensor::from_vec(v, [n, n])
    }

    /// `start, start + step, ...` below `end` (`f32`, like `torch.arange`).
    ///
    /// # Panics
    /// When `step` is zero or has the wrong sign to reach `end`.
    #[track_caller]
    pub fn arange(start: f32, end: f32, step: f32) -> Tensor {
        assert!(step != 0.0 && (end - start) * step >= 0.0, "arange: step {step} cannot go from {start} to {end}");
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        Tensor::from_vec((0..n).map(|i| start + i as f32 * step).collect::<Vec<f32>>(), [n])
    }

    /// `start..end` as `i64` (indices).
    pub fn arange_i64(start: i64, end: i64) -> Tensor {
        let v: Vec<i64> = (start..end.max(start)).collect();
        let n = v.len();
        Tensor::from_vec(v, [n])
    }

    /// Uniform samples in `[lo, hi)` from this thread's generator (see [`crate::manual_seed`]).
    pub fn rand(shape: impl Into<Shape>, lo: f32, hi: f32) -> Tensor {
        let shape = shape.into();
        let v = random::with_global(|r| random::uniform(r, shape.elem_count(), lo, hi));
        Tensor::from_vec(v, shape)
    }

    /// Normal samples with the given mean and standard deviation from this thread's generator.
    pub fn randn(shape: impl Into<Shape>, mean: f32, std: f32) -> Tensor {
        let shape = shape.into();
        let v = random::with_global(|r| random::normal(r, shape.elem_count(), mean, std));
        Tensor::from_vec(v, shape)
    }

    /// `steps` evenly spaced values from `start` to `end`, both included
    /// (`f32`, PyTorch's `linspace`).
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// assert_eq!(Tensor::linspace(0.0, 1.0, 5).to_vec::<f32>(), vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    /// assert_eq!(Tensor::linspace(2.0, 3.0, 1).to_vec::<f32>(), vec![2.0]);
    /// ```
    pub fn linspace(start: f32, end: f32, steps: usize) -> Tensor {
        if steps == 1 {
            return Tensor::from_vec(vec![start], [1]);
        }
        let step = if steps > 1 { (end as f64 - start as f64) / (steps - 1) as f64 } else { 0.0 };
        // From both ends towards the middle, as PyTorch, so `end` is exact.
        let v: Vec<f32> = (0..steps)
            .map(|i| {
                if i < steps / 2 { start as f64 + step * i as f64 } else { end as f64 - step * (steps - 1 - i) as f64 }
            })
            .map(|x| x as f32)
            .collect();
        Tensor::from_vec(v, [steps])
    }

    /// Uniform samples in `[0, 1)` with this tensor's shape, dtype and
    /// device (PyTorch's `rand_like`; float dtypes).
    pub fn rand_like(&self) -> Tensor {
        Tensor::rand(self.shape().clone(), 0.0, 1.0)
            .to_dtype(self.dtype().to_float())
            .to_device(self.device())
            .expect("own device")
    }

    /// Standard normal samples with this tensor's shape, dtype and device.
    pub fn randn_like(&self) -> Tensor {
        Tensor::randn(self.shape().clone(), 0.0, 1.0)
            .to_dtype(self.dtype().to_float())
            .to_device(self.device())
            .expect("own device")
    }

    /// Uniform integers in `[low, high)` (`i64`, PyTorch's `randint`) from
    /// this thread's generator.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let t = Tensor::randint(-2, 3, [1000]);
    /// let v = t.to_vec::<i64>();
    /// assert!(v.iter().all(|&x| (-2..3).contains(&x)));
    /// assert!((-2..3).all(|k| v.contains(&k)));
    /// ```
    ///
    /// # Panics
    /// When `high <= low`.
    #[track_caller]
    pub fn randint(low: i64, high: i64, shape: impl Into<Shape>) -> Tensor {
        assert!(high > low, "randint: empty range {low}..{high}");
        let shape = shape.into();
        let span = (high - low) as u64;
        let v: Vec<i64> = random::with_global(|r| {
            (0..shape.elem_count()).map(|_| low + (rand::Rng::next_u64(r) % span) as i64).collect()
        });
        Tensor::from_vec(v, shape)
    }

    /// Uniform samples in `[lo, hi)` from a caller-supplied generator.
    pub fn rand_with<R: rand::Rng + ?Sized>(shape: impl Into<Shape>, lo: f32, hi: f32, rng: &mut R) -> Tensor {
        let shape = shape.into();
        Tensor::from_vec(random::uniform(rng, shape.elem_count(), lo, hi), shape)
    }

    /// Normal samples from a caller-supplied generator.
    pub fn randn_with<R: rand::Rng + ?Sized>(shape: impl Into<Shape>, mean: f32, std: f32, rng: &mut R) -> Tensor {
        let shape = shape.into();
        Tensor::from_vec(random::normal(rng, shape.elem_count(), mean, std), shape)
    }

    /// A tensor from an `ndarray` array (copied into row-major order).
    pub fn from_ndarray<T: Element, D: ndarray::Dimension>(a: &ndarray::Array<T, D>) -> Tensor {
        let shape = a.shape().to_vec();
        Tensor::from_vec(a.iter().copied().collect::<Vec<T>>(), shape)
    }

    /// The elements as an `ndarray` array, converted to `T`.
    pub fn to_ndarray<T: Element>(&self) -> ndarray::ArrayD<T> {
        ndarray::ArrayD::from_shape_vec(self.dims().to_vec(), self.to_vec::<T>()).expect("shape matches")
    }

    // ---- accessors ----------------------------------------------------------

    /// The tensor's identity.
    pub fn id(&self) -> TensorId {
        self.0.id
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        self.0.layout.shape()
    }

    /// The dimension sizes.
    pub fn dims(&self) -> &[usize] {
        self.0.layout.dims()
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.dims().len()
    }

    /// Size of dimension `d` (negative counts from the end).
    ///
    /// # Panics
    /// When `d` is out of range.
    #[track_caller]
    pub fn size(&self, d: isize) -> usize {
        self.shape().dim(d).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.0.layout.elem_count()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.0.storage.read().unwrap().dtype()
    }

    /// The device holding the storage.
    pub fn device(&self) -> Device {
        self.0.storage.read().unwrap().device()
    }

    /// The strided layout.
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }

    /// True when the elements are in row-major order without gaps.
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }

    /// True when two tensors share one storage buffer (one is a view of the other).
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    /// A copy of the tensor on `device` (this tensor itself when already
    /// there), PyTorch's `x.to(device)`. Differentiable: the gradient goes
    /// back to the source device.
    ///
    /// ```
    /// use firebrand_autograd::{Device, Tensor};
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0], [2]);
    /// assert_eq!(x.to_device(Device::Cpu).unwrap().to_vec::<f32>(), [1.0, 2.0]);
    /// ```
    ///
    /// # Errors
    /// [`Error::DeviceUnavailable`] for a device with no registered backend.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let host = self.contiguous().storage().to_cpu();
        let storage = backend_of(device, "to_device")?.upload(host)?;
        let from = self.device();
        let out = Tensor::from_backend(storage, self.shape().clone());
        Ok(crate::ops::record(out, "to_device", &[self], move |_, g| {
            vec![Some(g.to_device(from).expect("the source device served this tensor"))]
        }))
    }

    /// The elements in row-major order as `T` (copied to the host first
    /// when the tensor lives on another device).
    ///
    /// Reading integers or bools as floats, or a float type as another,
    /// converts each value. Reading floats as integers or bools would
    /// truncate, so it is refused: convert with [`Tensor::to_dtype`] first.
    ///
    /// ```
    /// use firebrand_autograd::{DType, Tensor};
    /// let t = Tensor::from_vec(vec![1.5f32, -2.5], [2]);
    /// assert_eq!(t.to_vec::<f64>(), vec![1.5, -2.5]);
    /// assert!(t.try_to_vec::<i64>().is_err());
    /// assert_eq!(t.to_dtype(DType::I64).to_vec::<i64>(), vec![1, -2]);
    /// ```
    ///
    /// # Panics
    /// On a float tensor read as an integer or bool type.
    #[track_caller]
    pub fn to_vec<T: Element>(&self) -> Vec<T> {
        self.try_to_vec().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Tensor::to_vec`], returning an error instead of panicking.
    ///
    /// # Errors
    /// On a float tensor read as an integer or bool type.
    pub fn try_to_vec<T: Element>(&self) -> Result<Vec<T>> {
        if self.dtype().is_float() && !T::DTYPE.is_float() {
            return Err(Error::DType {
                op: "to_vec",
                got: self.dtype(),
                expected: "a float element type (use to_dtype to convert)",
            });
        }
        let s = self.storage();
        Ok(match as_cpu(&**s) {
            Some(c) => c.to_vec(&self.0.layout),
            None => s.to_cpu().to_vec(&self.0.layout),
        })
    }

    /// The single element of a one-element tensor as `f32` (PyTorch's `item()`).
    ///
    /// # Panics
    /// When the tensor has more or fewer than one element.
    #[track_caller]
    pub fn item(&self) -> f32 {
        self.try_item().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The single element of a one-element tensor.
    ///
    /// # Errors
    /// When the tensor has more or fewer than one element.
    pub fn try_item(&self) -> Result<f32> {
        if self.elem_count() != 1 {
            return Err(Error::InvalidShape {
                op: "item",
                shape: self.shape().clone(),
                msg: "needs exactly one element".into(),
            });
        }
        Ok(self.to_vec::<f64>()[0] as f32)
    }

    /// This tensor converted to `dtype` (PyTorch's `.to(dtype)`): float to
    /// integer truncates toward zero, anything to bool tests for non-zero.
    /// Between float dtypes the conversion is differentiable (the gradient
    /// is converted back); into an integer or bool type it cuts the graph.
    /// The tensor itself when it already has `dtype`.
    ///
    /// ```
    /// use firebrand_autograd::{DType, Tensor};
    /// let x = Tensor::from_vec(vec![-1.7f32, 0.0, 2.9], [3]);
    /// assert_eq!(x.to_dtype(DType::I32).to_vec::<i32>(), vec![-1, 0, 2]);
    /// assert_eq!(x.to_dtype(DType::Bool).to_vec::<bool>(), vec![true, false, true]);
    /// assert_eq!(x.to_dtype(DType::F16).to_dtype(DType::F32).to_vec::<f32>()[2], 2.900390625);
    /// ```
    ///
    /// # Panics
    /// When the device cannot hold `dtype`; see [`Tensor::try_to_dtype`].
    #[track_caller]
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        self.try_to_dtype(dtype).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Tensor::to_dtype`], returning an error instead of panicking.
    ///
    /// # Errors
    /// When the device cannot hold `dtype`.
    pub fn try_to_dtype(&self, dtype: DType) -> Result<Tensor> {
        let from = self.dtype();
        if from == dtype {
            return Ok(self.clone());
        }
        let st = self.backend("to_dtype")?.to_dtype(&**self.storage(), self.layout(), dtype)?;
        let out = Tensor::from_backend(st, self.shape().clone());
        if !(from.is_float() && dtype.is_float()) {
            return Ok(out);
        }
        Ok(crate::ops::record(out, "to_dtype", &[self], move |_, g| vec![Some(g.to_dtype(from))]))
    }

    // ---- storage access for ops ---------------------------------------------

    /// Read access to the storage.
    pub(crate) fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.0.storage.read().unwrap()
    }

    /// The backend of this tensor's device.
    pub(crate) fn backend(&self, op: &'static str) -> Result<&'static dyn Backend> {
        backend_of(self.device(), op)
    }

    /// This tensor with a storage of its own, contiguous from offset 0 (itself
    /// when it already is), so its storage can go to kernels that take
    /// contiguous buffers.
    pub(crate) fn dense(&self, op: &'static str) -> Result<Tensor> {
        let l = self.layout();
        if l.is_contiguous() && l.offset() == 0 && l.elem_count() == self.storage().len() {
            return Ok(self.clone());
        }
        let st = self.backend(op)?.contiguous(&**self.storage(), l)?;
        Ok(Tensor::from_backend(st, self.shape().clone()))
    }

    // ---- autograd state -----------------------------------------------------

    /// The storage's version counter (PyTorch's `_version`): every in-place
    /// write to this tensor or a view of it adds one.
    pub fn version(&self) -> u64 {
        self.0.storage.version()
    }

    /// True when gradients flow to or through this tensor.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad.load(Ordering::Relaxed)
    }

    /// Marks a leaf tensor as a parameter whose gradient `backward` fills in
    /// (PyTorch's `requires_grad_`). Returns the same tensor for chaining.
    ///
    /// # Panics
    /// When called on a non-leaf tensor (one produced by a recorded op), or
    /// with `on` for a tensor of an integer or bool dtype.
    #[track_caller]
    pub fn requires_grad_(self, on: bool) -> Tensor {
        assert!(self.is_leaf(), "requires_grad_: only leaf tensors can change requires_grad; use detach() first");
        assert!(
            !on || self.dtype().is_float(),
            "requires_grad_: only floating-point tensors can require gradients (this one is {})",
            self.dtype()
        );
        self.0.requires_grad.store(on, Ordering::Relaxed);
        self
    }

    /// True for tensors not produced by a recorded op.
    pub fn is_leaf(&self) -> bool {
        self.0.grad_fn.is_none()
    }

    /// Name of the op that produced this tensor, if recorded.
    pub fn grad_fn_name(&self) -> Option<&'static str> {
        self.0.grad_fn.as_ref().map(|g| g.name)
    }

    /// The accumulated gradient of a leaf after `backward`.
    pub fn grad(&self) -> Option<Tensor> {
        self.0.grad.lock().unwrap().clone()
    }

    /// Clears the accumulated gradient (PyTorch's `grad = None`).
    pub fn zero_grad(&self) {
        *self.0.grad.lock().unwrap() = None;
    }

    /// Replaces the accumulated gradient.
    pub fn set_grad(&self, g: Option<Tensor>) {
        *self.0.grad.lock().unwrap() = g;
    }

    /// The same data cut off from the graph (shares storage).
    pub fn detach(&self) -> Tensor {
        self.view_with(self.0.layout.clone())
    }

    /// A detached copy with its own contiguous storage (what PyTorch's
    /// `t.detach().clone()` gives): later in-place changes to either tensor
    /// leave the other as it is. `Clone` on a `Tensor` only shares it.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let t = Tensor::from_vec(vec![1.0f32, 2.0], [2]);
    /// let kept = t.detach_copy();
    /// t.fill_(0.0).unwrap();
    /// assert_eq!(kept.to_vec::<f32>(), vec![1.0, 2.0]);
    /// ```
    pub fn detach_copy(&self) -> Tensor {
        let out = Tensor::full_dtype(0.0, self.shape().clone(), self.dtype());
        out.copy_(self).expect("same shape and dtype, on the CPU");
        out
    }

    /// Overwrites this tensor's elements in place with `src`'s, visible
    /// through every view of the storage (PyTorch's `copy_`, outside
    /// autograd: meant for optimizers and weight loading). `src` broadcasts
    /// to this tensor's shape and is converted to its dtype; this tensor may
    /// be any view, e.g. a column.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let t = Tensor::zeros([2, 3]);
    /// t.narrow(1, 1, 1).copy_(&Tensor::from_vec(vec![7i64], [1])).unwrap(); // a column
    /// assert_eq!(t.to_vec::<f32>(), vec![0.0, 7.0, 0.0, 0.0, 7.0, 0.0]);
    /// ```
    ///
    /// # Errors
    /// When `src` does not broadcast to this shape, or this tensor is on a
    /// device and is a view that does not span its whole storage.
    pub fn copy_(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape()
            && src.shape().broadcast_with(self.shape(), "copy_").ok().as_ref() != Some(self.shape())
        {
            return Err(Error::ShapeMismatch { op: "copy_", lhs: self.shape().clone(), rhs: src.shape().clone() });
        }
        if !self.device().is_cpu() {
            // On a device: the converted values replace the storage (a whole
            // tensor only; a device has no in-place strided writes yet).
            let src = src.detach().try_broadcast_to(self.shape().clone())?.try_to_dtype(self.dtype())?;
            return self.set_data_(src.to_device(self.device())?);
        }
        let src =
            src.detach().try_broadcast_to(self.shape().clone())?.try_to_dtype(self.dtype())?.to_device(Device::Cpu)?;
        let host = {
            let st = src.storage();
            as_cpu(&**st).expect("on the CPU").to_dtype(src.layout(), self.dtype())
        };
        let layout = self.0.layout.clone();
        let mut s = self.0.storage.write().unwrap();
        let device = s.device();
        let Some(dst) = s.as_any_mut().downcast_mut::<CpuStorage>() else {
            return Err(Error::DeviceUnavailable {
                op: "copy_",
                device,
                msg: "in-place copies need a CPU tensor".into(),
            });
        };
        firebrand_tensor::with_cpu!(dst, v => {
            let vals = host.as_slice().expect("converted to the destination's dtype");
            match layout.contiguous_range() {
                Some(r) => v[r].copy_from_slice(vals),
                None => layout.strided_index().zip(vals).for_each(|(i, &x)| v[i] = x),
            }
        });
        Ok(())
    }

    /// Replaces this tensor's data with `src`'s, in place, PyTorch's
    /// `p.data = src`: every clone of this tensor (a module's parameter, an
    /// optimizer's handle on it) and every view of its storage then sees the
    /// new values, dtype and device. A gradient follows to the new device.
    /// Not recorded by autograd. `src`'s buffer is taken as it is when
    /// nothing else holds it (a fresh result: no copy); otherwise it is
    /// copied, so `src`'s other holders keep their data.
    ///
    /// ```
    /// use firebrand_autograd::{Device, Tensor};
    /// let p = Tensor::zeros([2]);
    /// let alias = p.clone();
    /// p.set_data_(Tensor::from_vec(vec![1.0f32, 2.0], [2]).to_device(Device::Cpu).unwrap()).unwrap();
    /// assert_eq!(alias.to_vec::<f32>(), [1.0, 2.0]);
    /// ```
    ///
    /// # Errors
    /// When the shapes differ, or this tensor is a view that does not span
    /// its whole storage (only such a tensor can be replaced safely).
    pub fn set_data_(&self, src: Tensor) -> Result<()> {
        let op = "set_data_";
        if src.shape() != self.shape() {
            return Err(Error::ShapeMismatch { op, lhs: self.shape().clone(), rhs: src.shape().clone() });
        }
        if !self.spans_storage() {
            return Err(Error::msg(op, "only a tensor spanning its whole storage can take new data".to_string()));
        }
        let fresh = match src.into_sole_storage() {
            Ok(s) => s,
            Err(src) => backend_of(src.device(), op)?.contiguous(&**src.storage(), src.layout())?,
        };
        let device = fresh.device();
        *self.0.storage.write().unwrap() = fresh;
        if let Some(g) = self.grad()
            && g.device() != device
        {
            self.set_grad(Some(g.to_device(device)?.detach()));
        }
        Ok(())
    }

    /// True when this tensor is its storage, contiguous from element 0 to the end.
    fn spans_storage(&self) -> bool {
        self.is_contiguous() && self.0.layout.offset() == 0 && self.0.storage.read().unwrap().len() == self.elem_count()
    }

    /// This tensor's buffer, when the tensor spans it and nothing else (no
    /// clone, no view) holds it; else the tensor back.
    fn into_sole_storage(self) -> std::result::Result<Storage, Tensor> {
        if !(self.spans_storage() && Arc::strong_count(&self.0) == 1 && Arc::strong_count(&self.0.storage) == 1) {
            return Err(self);
        }
        // The tensor is dropped with an empty buffer in its place.
        let empty: Storage = Box::new(CpuStorage::F32(Vec::new()));
        Ok(std::mem::replace(&mut *self.0.storage.write().unwrap(), empty))
    }

    /// Runs `f` on this tensor's `f32` elements in row-major order, borrowing
    /// the storage when it is a contiguous CPU buffer and copying otherwise
    /// (read-only access for optimizers, metrics and serialization).
    ///
    /// # Errors
    /// When the tensor is not `f32`.
    pub fn with_f32_slice<R>(&self, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
        if self.dtype() != DType::F32 {
            return Err(Error::DType { op: "with_f32_slice", got: self.dtype(), expected: "f32" });
        }
        let s = self.storage();
        if let (Some(CpuStorage::F32(v)), Some(r)) = (as_cpu(&**s), self.layout().contiguous_range()) {
            return Ok(f(&v[r]));
        }
        drop(s);
        Ok(f(&self.to_vec::<f32>()))
    }

    /// Runs `f` on this tensor's elements in place, as a contiguous `f32` slice
    /// (not recorded by autograd; used by optimizers).
    ///
    /// # Errors
    /// When the tensor is not `f32` or not contiguous.
    pub fn update_f32(&self, op: &'static str, f: impl FnOnce(&mut [f32])) -> Result<()> {
        let range = self
            .0
            .layout
            .contiguous_range()
            .ok_or_else(|| Error::msg(op, "in-place update needs a contiguous tensor"))?;
        let mut s = self.0.storage.write().unwrap();
        let device = s.device();
        match s.as_any_mut().downcast_mut::<CpuStorage>() {
            Some(CpuStorage::F32(v)) => {
                f(&mut v[range]);
                Ok(())
            }
            Some(other) => Err(Error::DType { op, got: other.dtype(), expected: "f32" }),
            None => Err(Error::DeviceUnavailable { op, device, msg: "in-place host updates need a CPU tensor".into() }),
        }
    }
}

/// The backend serving `device`.
pub(crate) fn backend_of(device: Device, op: &'static str) -> Result<&'static dyn Backend> {
    match device {
        Device::Cpu => Ok(&firebrand_ops::CPU),
        #[cfg(feature = "wgpu")]
        Device::Wgpu(n) => registered_backend(device, op).or_else(|_| {
            // The first use of an adapter opens it.
            firebrand_wgpu::init(n)?;
            registered_backend(device, op)
        }),
        other => registered_backend(other, op),
    }
}

/// Checks that all tensors live on one device and returns its backend.
pub(crate) fn same_backend(op: &'static str, ts: &[&Tensor]) -> Result<&'static dyn Backend> {
    let d = ts[0].device();
    backend_of(check_devices(op, ts.iter().map(|t| t.device()), d)?, op)
}

pub(crate) fn check_devices(op: &'static str, devices: impl Iterator<Item = Device>, first: Device) -> Result<Device> {
    for d in devices {
        if d != first {
            return Err(Error::DeviceMismatch { op, lhs: first, rhs: d });
        }
    }
    Ok(first)
}

impl Drop for TensorImpl {
    fn drop(&mut self) {
        // Unlink long graphs iteratively so dropping the output of a deep chain
        // (an unrolled RNN, thousands of steps) cannot overflow the stack.
        let Some(g) = self.grad_fn.take() else { return };
        let mut stack: Vec<Tensor> = g.inputs;
        while let Some(t) = stack.pop() {
            if let Ok(mut inner) = Arc::try_unwrap(t.0)
                && let Some(g) = inner.grad_fn.take()
            {
                stack.extend(g.inputs);
            }
        }
    }
}
