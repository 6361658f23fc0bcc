//! Networks the benches share, defined once so the criterion benches time
//! exactly what the workload runner trains.

use firebrand::prelude::*;

/// The `mlp` workload's network: Linear 784 → 128 + ReLU → Dropout 0.2 →
/// Linear 10, on `(N, 784)`.
#[allow(dead_code)] // the conv bench shares this module and uses only the CNN
pub fn fashion_mlp() -> Sequential {
    Sequential::new()
        .add(Linear::new(784, 128).with_activation(Activation::Relu))
        .add(Dropout::new(0.2))
        .add(Linear::new(128, 10))
}

/// The `cnn` workload's network (`../shared/bench/README.md`): Conv2d 32 3x3
/// same + ReLU → MaxPool 2 → Conv2d 64 3x3 same + ReLU → MaxPool 2 → Flatten
/// → Linear 10, on `(N, 1, 28, 28)`.
pub fn fashion_cnn() -> Sequential {
    Sequential::new()
        .add(Conv2d::new(1, 32, 3).padding(Padding::Same).with_activation(Activation::Relu))
        .add(MaxPool2d::new(2))
        .add(Conv2d::new(32, 64, 3).padding(Padding::Same).with_activation(Activation::Relu))
        .add(MaxPool2d::new(2))
        .add(Flatten)
        .add(Linear::new(3136, 10))
}
