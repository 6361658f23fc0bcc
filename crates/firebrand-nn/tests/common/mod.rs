//! Helpers shared by the test files that compare against the PyTorch
//! references in `reference/nn_reference.json`.
#![allow(dead_code)] // each test binary uses its own subset

use serde_json::Value;

/// The reference cases.
pub fn cases() -> Value {
    serde_json::from_str::<Value>(include_str!("../reference/nn_reference.json")).unwrap()["cases"].clone()
}

/// A JSON array of numbers as `f32`s.
pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// A JSON array of sizes.
pub fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

/// Asserts `|got - want| <= tol · (1 + |want|)` element by element.
pub fn close_within(got: &[f32], want: &[f32], what: &str, tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: {g} vs PyTorch {w}");
    }
}
