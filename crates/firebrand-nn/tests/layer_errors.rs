//! A layer that cannot take its input says which layer it is, where it sits
//! in the model, what it expected and what it got.

use firebrand_autograd::Tensor;
use firebrand_nn::{
    BatchNorm2d, Conv1d, Conv2d, Embedding, GRU, LSTM, LayerNorm, Linear, MaxPool2d, Module, MultiHeadAttention,
    OneHot, ReLU, Sequential, TransformerEncoder, TransformerEncoderLayer, module_path,
};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The panic message of `f`.
fn message(f: impl FnOnce()) -> String {
    let e = catch_unwind(AssertUnwindSafe(f)).expect_err("the layer refuses this input");
    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap()
}

#[test]
fn sequential_names_the_position_and_the_layer() {
    let net = Sequential::new().add(Linear::new(10, 3));
    let m = message(|| drop(net.forward(&Tensor::zeros([2, 7]))));
    assert_eq!(m, "Sequential[0] Linear(10 -> 3): expected input (…, 10), got [2, 7]");
    // Deeper in, and nested: every container on the way.
    let net = Sequential::new()
        .add(Linear::new(4, 6))
        .add(ReLU)
        .add(Sequential::new().add(Linear::new(6, 6)).add(Linear::new(5, 2)));
    let m = message(|| drop(net.forward(&Tensor::zeros([3, 4]))));
    assert_eq!(m, "Sequential[2] > Sequential[1] Linear(5 -> 2): expected input (…, 5), got [3, 6]");
    // The path is gone once the forward pass has unwound.
    assert_eq!(module_path(), "");
    // A layer called on its own has no path.
    let m = message(|| drop(Linear::new(10, 3).forward(&Tensor::zeros([7]))));
    assert_eq!(m, "Linear(10 -> 3): expected input (…, 10), got [7]");
}

#[test]
fn convolution_pooling_and_normalization_layers_name_their_input() {
    let net = Sequential::new().add(Conv2d::new(1, 8, 3)).add(BatchNorm2d::new(4));
    let m = message(|| drop(net.forward(&Tensor::zeros([2, 3, 9, 9]))));
    assert!(m.starts_with("Sequential[0] Conv2d(1 -> 8, 3x3"), "{m}");
    assert!(m.ends_with(": expected input (N, 1, H, W), got [2, 3, 9, 9]"), "{m}");
    let m = message(|| drop(net.forward(&Tensor::zeros([2, 1, 9, 9]))));
    assert_eq!(m, "Sequential[1] BatchNorm2d(4): expected input (N, 4, H, W), got [2, 8, 7, 7]");
    let m = message(|| drop(Conv2d::new(1, 8, 3).forward(&Tensor::zeros([1, 9, 9]))));
    assert!(m.ends_with("expected input (N, 1, H, W), got [1, 9, 9]"), "{m}");
    let m = message(|| drop(Conv1d::new(2, 4, 3).forward(&Tensor::zeros([1, 3, 9]))));
    assert!(m.starts_with("Conv1d(2 -> 4") && m.ends_with("expected input (N, 2, L), got [1, 3, 9]"), "{m}");
    let m = message(|| drop(MaxPool2d::new(2).forward(&Tensor::zeros([4, 4]))));
    assert!(m.ends_with("expected input (N, C, H, W), got [4, 4]"), "{m}");
    let m = message(|| drop(LayerNorm::new(8).forward(&Tensor::zeros([2, 6]))));
    assert_eq!(m, "LayerNorm(8): expected input (…, 8), got [2, 6]");
}

#[test]
fn embeddings_refuse_wrong_ids_naming_the_value() {
    let net = Sequential::new().add(Embedding::new(10, 4));
    let m = message(|| drop(net.forward(&Tensor::from_vec(vec![1i64, 12, 3], [3]))));
    assert_eq!(
        m,
        "Sequential[0] Embedding(10, 4): expected input ids in 0..10, got [3]: id 12 at flat position 1 is out of range"
    );
    let m = message(|| drop(net.forward(&Tensor::zeros([3]))));
    assert!(m.contains("Embedding(10, 4): expected input i64 ids below 10, not F32"), "{m}");
    let m = message(|| drop(OneHot(5).forward(&Tensor::from_vec(vec![-1i64], [1]))));
    assert!(m.contains("id -1 at flat position 0"), "{m}");
}

#[test]
fn recurrent_and_transformer_layers_name_their_input() {
    let net = Sequential::new().add(LSTM::new(5, 8));
    let m = message(|| drop(net.forward(&Tensor::zeros([2, 3, 4]))));
    assert!(
        m.starts_with("Sequential[0] LSTM(5 -> 8") && m.ends_with("expected input (B, T, 5) with T > 0, got [2, 3, 4]"),
        "{m}"
    );
    let m = message(|| drop(GRU::new(5, 8).forward(&Tensor::zeros([2, 5]))));
    assert!(m.ends_with("expected input (B, T, 5), got [2, 5]"), "{m}");
    let m = message(|| drop(MultiHeadAttention::new(8, 2).forward(&Tensor::zeros([2, 3, 6]))));
    assert!(
        m.starts_with("MultiHeadAttention(") && m.ends_with("expected input query (B, T, 8), got [2, 3, 6]"),
        "{m}"
    );
    let enc = TransformerEncoder::new((0..2).map(|_| TransformerEncoderLayer::new(8, 2, 16)).collect());
    let m = message(|| drop(enc.forward(&Tensor::zeros([2, 3, 6]))));
    assert!(m.starts_with("TransformerEncoder > layers[0] > TransformerEncoderLayer "), "{m}");
    assert!(m.ends_with("got [2, 3, 6]"), "{m}");
}
