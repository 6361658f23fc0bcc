//! An index op on `Device::Wgpu(0)` meets an index out of range: the device
//! checks as it runs, so the op returns at once and the next
//! synchronization returns `IndexOutOfRange` naming the op, the index and the
//! size (a readback panics naming them). Its own test binary: the device
//! reports the error to whatever synchronizes next in the process.
#![cfg(feature = "wgpu")]

use firebrand::prelude::*;

#[test]
fn an_index_out_of_range_is_reported_at_the_next_synchronization() {
    let dev = Device::Wgpu(0);
    if let Err(e) = Tensor::zeros([1]).to_device(dev) {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but no wgpu adapter: {e}");
        eprintln!("SKIPPED: no wgpu adapter ({e})");
        return;
    }
    let t = Tensor::ones([2, 2]).to_device(dev).unwrap();
    let bad = Tensor::from_vec(vec![2i64], [1]).to_device(dev).unwrap();
    let _ = t.try_index_select(0, &bad).unwrap();
    let e = firebrand::synchronize(dev).unwrap_err();
    assert!(matches!(e, Error::IndexOutOfRange { op: "index_select", index: 2, size: 2 }), "{e}");
    // Reported once; the device goes on.
    firebrand::synchronize(dev).unwrap();
    assert_eq!(t.sum_all().item(), 4.0);
    // An embedding lookup past the table panics at the readback, naming it.
    let y = t.index_select(0, &bad);
    let msg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| y.to_vec::<f32>())).unwrap_err();
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("index_select") && msg.contains("synchronize"), "{msg}");
}
