//! Tensor creation, views, errors, autograd bookkeeping and display.

use firebrand_autograd::{DType, Device, Error, Shape, Tensor, UnaryOp, is_grad_enabled, manual_seed, no_grad};

#[test]
fn tensors_cross_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tensor>();
    let w = Tensor::ones([3]).requires_grad_(true);
    let w2 = w.clone();
    let loss = std::thread::spawn(move || w2.square().sum_all()).join().unwrap();
    loss.backward();
    assert_eq!(w.grad().unwrap().to_vec::<f32>(), vec![2.0, 2.0, 2.0]);
}

#[test]
fn creation_and_access() {
    let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]);
    assert_eq!(t.dims(), &[2, 3]);
    assert_eq!(t.size(-1), 3);
    assert_eq!(t.dtype(), DType::F32);
    assert_eq!(t.device(), Device::Cpu);
    assert_eq!(Tensor::zeros([2]).to_vec::<f32>(), vec![0.0, 0.0]);
    assert_eq!(Tensor::full(2.5, [1, 2]).to_vec::<f32>(), vec![2.5, 2.5]);
    assert_eq!(Tensor::arange(0.0, 1.0, 0.25).to_vec::<f32>(), vec![0.0, 0.25, 0.5, 0.75]);
    assert_eq!(Tensor::arange_i64(2, 5).to_vec::<i64>(), vec![2, 3, 4]);
    assert_eq!(Tensor::eye(2).to_vec::<f32>(), vec![1.0, 0.0, 0.0, 1.0]);
    assert_eq!(Tensor::scalar(3.0).item(), 3.0);
    assert_eq!(t.to_dtype(DType::I64).to_vec::<i64>(), vec![1, 2, 3, 4, 5, 6]);
    assert!(Tensor::try_from_vec(vec![1.0f32; 5], [2, 3]).is_err());
    assert!(t.try_item().is_err());
    // ndarray round trip
    let a = ndarray::arr2(&[[1.0f32, 2.0], [3.0, 4.0]]);
    let from = Tensor::from_ndarray(&a);
    assert_eq!(from.t().to_ndarray::<f32>(), a.t().to_owned().into_dyn());
}

#[test]
fn views_share_storage_and_copy_when_needed() {
    let t = Tensor::arange(0.0, 24.0, 1.0).reshape([2, 3, 4]);
    let p = t.permute(&[2, 0, 1]);
    assert!(p.shares_storage(&t) && !p.is_contiguous());
    assert_eq!(p.dims(), &[4, 2, 3]);
    assert_eq!(p.select(0, 1).to_vec::<f32>(), vec![1.0, 5.0, 9.0, 13.0, 17.0, 21.0]);
    let n = t.narrow(2, 1, 2);
    assert!(n.shares_storage(&t));
    assert_eq!(n.reshape([2, 3, 2]).to_vec::<f32>(), n.to_vec::<f32>());
    // A transposed matrix must be copied to flatten.
    let tt = t.reshape([6, 4]).t();
    let flat = tt.reshape([24]);
    assert!(!flat.shares_storage(&t));
    assert_eq!(flat.to_vec::<f32>()[..3], [0.0, 4.0, 8.0]);
    let b = Tensor::from_vec(vec![1.0f32, 2.0], [2, 1]).broadcast_to([2, 3]);
    assert_eq!(b.to_vec::<f32>(), vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
    assert_eq!(Tensor::zeros([2, 1, 3]).squeeze(1).dims(), &[2, 3]);
    assert_eq!(Tensor::zeros([2, 3]).unsqueeze(-1).dims(), &[2, 3, 1]);
    assert_eq!(Tensor::zeros([5, 3]).chunk(2, 0).iter().map(|c| c.size(0)).collect::<Vec<_>>(), vec![3, 2]);
}

#[test]
fn ops_values_on_awkward_shapes() {
    let x = Tensor::from_vec(vec![3.0f32, -1.0, 2.0, 7.0, 0.5, 7.0], [2, 3]);
    assert_eq!(x.argmax(1, false).to_vec::<i64>(), vec![0, 0]);
    assert_eq!(x.argmin(0, true).dims(), &[1, 3]);
    assert_eq!(x.max(&[0], false).to_vec::<f32>(), vec![7.0, 0.5, 7.0]);
    assert_eq!(x.sum(&[0, 1], true).to_vec::<f32>(), vec![18.5]);
    assert_eq!(x.gt(&Tensor::scalar(2.0)).to_vec::<f32>(), vec![1.0, 0.0, 0.0, 1.0, 0.0, 1.0]);
    let idx = Tensor::from_vec(vec![2i64, 0], [2]);
    assert_eq!(idx.one_hot(3).to_vec::<f32>(), vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    assert_eq!(Tensor::cat(&[&idx, &idx], 0).to_vec::<i64>(), vec![2, 0, 2, 0]);
    let v = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [3]);
    assert_eq!(v.matmul(&v).item(), 14.0);
    assert_eq!(Tensor::stack(&[&v, &v], 0).dims(), &[2, 3]);
    // size-0 dims flow through
    let e = Tensor::zeros([0, 3]);
    assert_eq!(e.sum(&[0], false).to_vec::<f32>(), vec![0.0; 3]);
    assert_eq!(e.matmul(&Tensor::zeros([3, 2])).dims(), &[0, 2]);
}

#[test]
fn elementwise_outputs_keep_a_permuted_inputs_order() {
    let a = Tensor::arange(0.0, 6.0, 1.0).reshape([2, 3]);
    let b = Tensor::arange(10.0, 16.0, 1.0).reshape([2, 3]);
    let c = a.t().mul(&b.t());
    assert_eq!(c.dims(), &[3, 2]);
    assert!(!c.is_contiguous(), "the product of two transposes is itself transposed");
    assert_eq!(c.to_vec::<f32>(), a.mul(&b).t().to_vec::<f32>());
    let e = a.t().exp();
    assert_eq!(e.layout().strides(), &[1, 3]);
    assert_eq!(e.to_vec::<f32>(), a.exp().t().to_vec::<f32>());
}

#[test]
fn shape_errors_name_the_op_and_shapes() {
    let a = Tensor::zeros([2, 3]);
    let b = Tensor::zeros([4]);
    let e = a.try_add(&b).unwrap_err();
    assert_eq!(e.to_string(), "add: shape mismatch between [2, 3] and [4]");
    let e = a.try_matmul(&Tensor::zeros([2, 3])).unwrap_err();
    assert_eq!(e.to_string(), "matmul: shape mismatch between [2, 3] and [2, 3]");
    assert!(matches!(a.try_sum(&[2], false), Err(Error::DimOutOfRange { op: "sum", dim: 2, .. })));
    assert!(matches!(a.try_reshape([5]), Err(Error::ShapeMismatch { op: "reshape", .. })));
    let labels = Tensor::from_vec(vec![1i64, 2], [2]);
    // exp of integers computes in f32 (as PyTorch); mean of integers is refused (as PyTorch).
    assert_eq!(labels.try_unary(UnaryOp::Exp).unwrap().dtype(), firebrand_autograd::DType::F32);
    assert!(matches!(labels.try_mean(&[], false), Err(Error::DType { op: "mean", .. })));
    assert!(matches!(
        a.try_index_select(0, &Tensor::from_vec(vec![5i64], [1])),
        Err(Error::IndexOutOfRange { index: 5, size: 2, .. })
    ));
    // An adapter no machine has (without the `wgpu` feature, any adapter).
    assert!(matches!(a.to_device(Device::Wgpu(64)), Err(Error::DeviceUnavailable { .. })));
    let panic = std::panic::catch_unwind(|| Tensor::zeros([2, 3]).mul(&Tensor::zeros([3, 2]))).unwrap_err();
    let msg = panic.downcast_ref::<String>().unwrap();
    assert_eq!(msg, "mul: shape mismatch between [2, 3] and [3, 2]");
}

#[test]
fn gradients_accumulate_until_zeroed() {
    let w = Tensor::from_vec(vec![1.0f32, -2.0], [2]).requires_grad_(true);
    let loss = || w.square().sum_all();
    loss().backward();
    assert_eq!(w.grad().unwrap().to_vec::<f32>(), vec![2.0, -4.0]);
    loss().backward();
    assert_eq!(w.grad().unwrap().to_vec::<f32>(), vec![4.0, -8.0]);
    w.zero_grad();
    assert!(w.grad().is_none());
    // Two leaves handed one gradient by `add` get buffers of their own.
    let (p, q) = (Tensor::ones([2]).requires_grad_(true), Tensor::ones([2]).requires_grad_(true));
    p.add(&q).sum_all().backward();
    p.grad().unwrap().update_f32("test", |g| g.iter_mut().for_each(|x| *x *= 5.0)).unwrap();
    assert_eq!(q.grad().unwrap().to_vec::<f32>(), vec![1.0, 1.0]);
    // A leaf used twice in one graph gets both contributions.
    (w.mul(&Tensor::scalar(3.0)) + w.clone()).sum_all().backward();
    assert_eq!(w.grad().unwrap().to_vec::<f32>(), vec![4.0, 4.0]);
}

#[test]
fn no_grad_and_detach() {
    let w = Tensor::ones([3]).requires_grad_(true);
    {
        let _g = no_grad();
        assert!(!is_grad_enabled());
        let y = w.exp();
        assert!(!y.requires_grad() && y.is_leaf());
    }
    assert!(is_grad_enabled());
    let d = w.detach();
    assert!(!d.requires_grad() && d.shares_storage(&w));
    assert!(w.detach().sum_all().try_backward().is_err());
    assert!(w.try_backward().is_err(), "non-scalar backward needs an explicit gradient");
    let y = w.affine(2.0, 0.0);
    assert_eq!(y.grad_fn_name(), Some("affine"));
    y.backward_with_grad(&Tensor::from_vec(vec![1.0f32, 0.0, -1.0], [3]));
    assert_eq!(w.grad().unwrap().to_vec::<f32>(), vec![2.0, 0.0, -2.0]);
}

#[test]
fn deep_graphs_backward_and_drop_without_overflow() {
    let w = Tensor::scalar(1.0).requires_grad_(true);
    let mut h = w.clone();
    for _ in 0..100_000 {
        h = h.affine(1.0, 0.0);
    }
    h.backward();
    assert_eq!(w.grad().unwrap().item(), 1.0);
    drop(h);
}

#[test]
fn seeds_reproduce_exactly() {
    manual_seed(42);
    let a = Tensor::randn([100], 0.0, 1.0).to_vec::<f32>();
    let u = Tensor::rand([10], -1.0, 1.0).to_vec::<f32>();
    manual_seed(42);
    assert_eq!(Tensor::randn([100], 0.0, 1.0).to_vec::<f32>(), a);
    assert_eq!(Tensor::rand([10], -1.0, 1.0).to_vec::<f32>(), u);
    assert!(u.iter().all(|&x| (-1.0..1.0).contains(&x)));
    let mean = a.iter().sum::<f32>() / 100.0;
    assert!(mean.abs() < 0.3, "mean of 100 normals: {mean}");
}

#[test]
fn display_like_pytorch() {
    let t = Tensor::from_vec(vec![1i64, 2, 3], [3]);
    assert_eq!(t.to_string(), "tensor([1, 2, 3], dtype=i64)");
    let big = Tensor::zeros([40, 40]);
    let s = big.to_string();
    assert!(s.contains("...") && s.ends_with("shape=[40, 40])"), "{s}");
    let w = Tensor::ones([2]).requires_grad_(true);
    assert_eq!(w.to_string(), "tensor([1.0000, 1.0000], requires_grad=true)");
    assert_eq!(Tensor::scalar(0.5).to_string(), "tensor(0.5000)");
    assert_eq!(
        format!("{:?}", Tensor::scalar(0.5)),
        "Tensor { shape: [], dtype: f32, device: cpu, data: tensor(0.5000) }"
    );
    assert_eq!(Shape::from([2, 3]).to_string(), "[2, 3]");
}

#[test]
fn in_place_updates_are_seen_by_views() {
    let w = Tensor::zeros([2, 2]);
    let view = w.t();
    w.copy_(&Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2])).unwrap();
    assert_eq!(view.to_vec::<f32>(), vec![1.0, 3.0, 2.0, 4.0]);
    w.update_f32("test", |d| d.iter_mut().for_each(|x| *x *= 2.0)).unwrap();
    assert_eq!(w.to_vec::<f32>(), vec![2.0, 4.0, 6.0, 8.0]);
    assert!(view.update_f32("test", |_| {}).is_err(), "non-contiguous in-place update is refused");
}

#[test]
fn set_data_takes_a_sole_buffer_and_copies_a_shared_one() {
    let p = Tensor::zeros([2]);
    let alias = p.clone();
    // A fresh result: its buffer is taken.
    p.set_data_(Tensor::from_vec(vec![1.0f32, 2.0], [2]).affine(2.0, 0.0)).unwrap();
    assert_eq!(alias.to_vec::<f32>(), [2.0, 4.0]);
    // A tensor with another holder, and a view: copied, the holders keep their data.
    let src = Tensor::from_vec(vec![5.0f32, 6.0], [2]);
    let keep = src.clone();
    p.set_data_(src).unwrap();
    p.add_(&Tensor::scalar(1.0)).unwrap();
    assert_eq!((p.to_vec::<f32>(), keep.to_vec::<f32>()), (vec![6.0, 7.0], vec![5.0, 6.0]));
    let base = Tensor::arange(0.0, 4.0, 1.0);
    p.set_data_(base.narrow(0, 1, 2)).unwrap();
    assert_eq!((p.to_vec::<f32>(), base.to_vec::<f32>()), (vec![1.0, 2.0], vec![0.0, 1.0, 2.0, 3.0]));
    // Shapes must match, and only a whole tensor takes new data.
    assert!(matches!(p.set_data_(Tensor::zeros([3])), Err(Error::ShapeMismatch { .. })));
    assert!(base.narrow(0, 0, 2).set_data_(Tensor::zeros([2])).is_err());
}
