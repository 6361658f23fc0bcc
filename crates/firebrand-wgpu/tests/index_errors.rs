//! Index kernels meet out-of-range indices: the device records the first bad
//! one as its kernels run, and the next `synchronize` returns it (a readback
//! panics naming it). Its own test binary, so no other test's readback
//! meets the error: the device's flag is shared by everything on it.

use firebrand_tensor::{CpuStorage, Layout, Shape};

#[test]
fn out_of_range_indices_are_reported_at_the_next_synchronization() {
    let dev = match firebrand_wgpu::init(0) {
        Ok(()) => firebrand_tensor::backend::registered_backend(firebrand_tensor::Device::Wgpu(0), "test").unwrap(),
        Err(e) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but no wgpu adapter: {e}");
            eprintln!("SKIPPED: no wgpu adapter ({e})");
            return;
        }
    };
    let i64s = |v: &[i64]| CpuStorage::I64(v.to_vec());
    let g = dev.upload(CpuStorage::F32((0..3 * 5 * 7).map(|i| i as f32).collect())).unwrap();
    // An index out of range is an error naming it, negative ones too. The
    // device checks as it runs (no wait per op): `synchronize` returns the
    // first bad index since the last readback, and the flag is then clear.
    for bad in [5i64, -1, 1 << 40] {
        let b = dev.upload(i64s(&[0, bad, 1])).unwrap();
        let l = Layout::contiguous(Shape::from(vec![3, 5, 7]));
        assert!(dev.index_select(&*g, &l, 1, &*b).is_ok(), "recorded, not waited for");
        match dev.synchronize() {
            Err(firebrand_tensor::Error::IndexOutOfRange { op: "index_select", index, size: 5 }) => {
                assert_eq!(index, bad)
            }
            other => panic!("index {bad}: {other:?}"),
        }
        assert!(dev.synchronize().is_ok(), "the flag is cleared once reported");
        dev.index_add(&*g, 3, 5, 7, &*dev.upload(i64s(&[bad, 0, 1, 2, 3])).unwrap()).unwrap();
        let e = dev.synchronize().unwrap_err();
        assert!(matches!(e, firebrand_tensor::Error::IndexOutOfRange { op: "index_add", size: 5, .. }), "{e}");
    }
    // A readback after a bad index panics naming it.
    let b = dev.upload(i64s(&[7])).unwrap();
    let l = Layout::contiguous(Shape::from(vec![3, 5, 7]));
    let out = dev.index_select(&*g, &l, 1, &*b).unwrap();
    let msg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| out.to_cpu())).unwrap_err();
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("index_select") && msg.contains('7') && msg.contains("synchronize"), "{msg}");
    assert!(dev.synchronize().is_ok());
}
