//! A custom module written with `#[derive(Module)]` and no hand-written
//! visitor: it trains with `fit`, saves, loads strictly into a fresh copy,
//! and that copy predicts the same, BatchNorm buffers included.

use firebrand_autograd::{Tensor, manual_seed};
use firebrand_data::{Dataset, TensorDataset, digits};
use firebrand_nn::{BatchNorm2d, Conv2d, Linear, MaxPool2d, Module, ModuleExt, Padding, load_weights, save_weights};
use firebrand_optim::Adam;
use firebrand_train::{FitOptions, Loss, Model};

#[derive(Module)]
struct SmallCnn {
    conv: Conv2d,
    bn: BatchNorm2d,
    pool: MaxPool2d,
    head: Linear,
}

impl SmallCnn {
    fn new() -> Self {
        SmallCnn {
            conv: Conv2d::new(1, 8, 3).padding(Padding::Same),
            bn: BatchNorm2d::new(8),
            pool: MaxPool2d::new(2),
            head: Linear::new(8 * 4 * 4, 10),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        // x: (N, 1, 8, 8)
        let h = self.pool.forward(&self.bn.forward(&self.conv.forward(x)).relu()); // (N, 8, 4, 4)
        self.head.forward(&h.flatten(1, -1))
    }
}

#[test]
fn a_derived_cnn_trains_saves_and_loads_to_identical_predictions() {
    let d = digits();
    let images = TensorDataset::new(d.x.reshape([d.len(), 1, 8, 8]), d.y.clone()).unwrap();
    let (train, test) = images.split(0.2, 0);
    manual_seed(0);
    let net = SmallCnn::new();
    let opt = Adam::new(net.named_parameters(), 3e-3);
    let mut model = Model::new(net, opt, Loss::CROSS_ENTROPY);
    model.fit(&train, &FitOptions { epochs: 4, verbose: false, ..Default::default() }).unwrap();
    let acc = model.evaluate(&test, 128).metrics.unwrap().accuracy;
    assert!(acc > 0.9, "test accuracy {acc}");
    let names: Vec<String> = model.net.state_dict().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"bn.running_var".to_string()) && names.contains(&"bn.num_batches_tracked".to_string()));

    let path = std::env::temp_dir().join(format!("firebrand-derived-cnn-{}.safetensors", std::process::id()));
    save_weights(&model.net, &path).unwrap();
    manual_seed(1);
    let fresh = SmallCnn::new();
    let report = load_weights(&fresh, &path, true).unwrap();
    assert!(report.missing.is_empty() && report.unexpected.is_empty(), "{report:?}");
    assert_eq!(fresh.bn.running_mean.to_vec::<f32>(), model.net.bn.running_mean.to_vec::<f32>());
    let mut loaded = Model::for_inference(fresh, Loss::CROSS_ENTROPY);
    let (a, b) = (model.predict(&test.x, 64), loaded.predict(&test.x, 64));
    assert_eq!(a.to_vec::<f32>(), b.to_vec::<f32>(), "identical predictions");
    assert_eq!(loaded.evaluate(&test, 128).metrics.unwrap().accuracy, acc);
    std::fs::remove_file(path).unwrap();
}
