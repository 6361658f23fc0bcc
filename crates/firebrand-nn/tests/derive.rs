//! `#[derive(Module)]`: names from the fields (nested, `Vec`, `Option`,
//! tuple structs), buffers, `#[module(skip)]`, train/eval propagation, the
//! child list, and `summary()` on a derived module.

use firebrand_autograd::{Tensor, manual_seed};
use firebrand_nn::{BatchNorm2d, Conv2d, Dropout, GlobalAvgPool, Linear, Module, ModuleExt, Padding};

#[derive(Module)]
struct Block {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.bn.forward(&self.conv.forward(x)).relu()
    }
}

/// Settings, a skipped field, a tensor parameter, a tensor buffer, `Vec`s and `Option`s.
#[derive(Module)]
#[module(describe = "Net")]
struct Net {
    stem: Block,
    blocks: Vec<Block>,
    pool: GlobalAvgPool,
    dropout: Dropout,
    head: Linear,
    extra: Option<Linear>,
    absent: Option<Linear>,
    scale: Tensor,
    #[module(buffer)]
    calls: Tensor,
    #[module(skip)]
    note: std::collections::HashMap<String, String>,
    width: usize,
}

impl Net {
    fn new(extra: bool) -> Net {
        let block =
            |cin, cout| Block { conv: Conv2d::new(cin, cout, 3).padding(Padding::Same), bn: BatchNorm2d::new(cout) };
        Net {
            stem: block(1, 4),
            blocks: vec![block(4, 4), block(4, 6)],
            pool: GlobalAvgPool,
            dropout: Dropout::new(0.5),
            head: Linear::new(6, 3),
            extra: extra.then(|| Linear::new(3, 3)),
            absent: None,
            scale: Tensor::ones([1]).requires_grad_(true),
            calls: Tensor::zeros([1]),
            note: Default::default(),
            width: 6,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.blocks.iter().fold(self.stem.forward(x), |h, b| b.forward(&h));
        let y = self.head.forward(&self.dropout.forward(&self.pool.forward(&h)));
        let y = match &self.extra {
            Some(e) => e.forward(&y),
            None => y,
        };
        assert_eq!(y.dims()[1], self.width / 2, "{:?}", self.note);
        y.mul(&self.scale)
    }
}

/// A tuple struct: fields are named by position, as in PyTorch's `Sequential`.
#[derive(Module)]
#[module(forward = run)]
struct Pair(Linear, Linear);

impl Pair {
    fn run(&self, x: &Tensor) -> Tensor {
        self.1.forward(&self.0.forward(x))
    }
}

#[test]
fn names_follow_the_fields() {
    manual_seed(0);
    let net = Net::new(true);
    let params: Vec<String> = net.named_parameters().into_iter().map(|(n, _)| n).collect();
    let mut want = Vec::new();
    for b in ["stem", "blocks.0", "blocks.1"] {
        want.extend([
            format!("{b}.conv.weight"),
            format!("{b}.conv.bias"),
            format!("{b}.bn.weight"),
            format!("{b}.bn.bias"),
        ]);
    }
    want.extend(["head.weight", "head.bias", "extra.weight", "extra.bias", "scale"].map(String::from));
    assert_eq!(params, want);
    let buffers: Vec<String> = net.named_buffers().into_iter().map(|(n, _)| n).collect();
    let mut want = Vec::new();
    for b in ["stem", "blocks.0", "blocks.1"] {
        want.extend(["running_mean", "running_var", "num_batches_tracked"].map(|s| format!("{b}.bn.{s}")));
    }
    want.push("calls".into());
    assert_eq!(buffers, want);
    assert!(!Net::new(false).named_parameters().iter().any(|(n, _)| n.starts_with("extra")));
    let pair = Pair(Linear::new(2, 3), Linear::new(3, 1));
    let names: Vec<String> = pair.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["0.weight", "0.bias", "1.weight", "1.bias"]);
    assert_eq!(pair.forward(&Tensor::zeros([5, 2])).dims(), &[5, 1]);
    assert_eq!(pair.describe(), "Pair");
}

#[test]
fn train_and_eval_reach_every_layer() {
    manual_seed(1);
    let mut net = Net::new(false);
    let x = Tensor::randn([4, 1, 5, 5], 0.0, 1.0);
    net.eval();
    let (a, b) = (net.forward(&x).to_vec::<f32>(), net.forward(&x).to_vec::<f32>());
    assert_eq!(a, b, "eval mode: dropout off, BatchNorm on running statistics");
    let before = net.blocks[1].bn.running_mean.to_vec::<f32>();
    net.forward(&x);
    assert_eq!(net.blocks[1].bn.running_mean.to_vec::<f32>(), before, "eval mode leaves statistics alone");
    net.train();
    net.forward(&x);
    assert_ne!(net.blocks[1].bn.running_mean.to_vec::<f32>(), before, "a nested BatchNorm in a Vec trains");
    assert_ne!(net.forward(&x).to_vec::<f32>(), net.forward(&x).to_vec::<f32>(), "dropout is on again");
}

#[test]
fn children_and_summary_walk_the_tree() {
    manual_seed(2);
    let net = Net::new(true);
    let names: Vec<String> = net.named_modules().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "stem",
            "stem.conv",
            "stem.bn",
            "blocks.0",
            "blocks.0.conv",
            "blocks.0.bn",
            "blocks.1",
            "blocks.1.conv",
            "blocks.1.bn",
            "pool",
            "dropout",
            "head",
            "extra"
        ]
    );
    let s = net.summary(&[1, 8, 8]);
    println!("{s}");
    assert!(s.contains("stem: Block") && s.contains("  conv: Conv2d(1 -> 4, 3x3, same)"), "{s}");
    assert!(s.contains("(None, 4, 8, 8)") && s.contains("(None, 6, 8, 8)") && s.contains("(None, 3)"), "{s}");
    // Block's parameter count: conv 4·1·9 + 4, bn 4 + 4.
    let stem_row = s.lines().find(|l| l.starts_with("stem: Block")).unwrap();
    assert!(stem_row.trim_end().ends_with(" 48"), "{stem_row}");
    assert!(s.contains(&format!("Total params: {}", net.num_parameters())), "{s}");
    // Nested blocks are called through their inherent `forward`: their own
    // rows have no shape, their layers do.
    let block_row = s.lines().find(|l| l.starts_with("blocks.0: Block")).unwrap();
    assert!(block_row.contains(" - "), "{block_row}");
}

#[derive(Module)]
struct Forgotten {
    layer: Linear,
}

#[test]
#[should_panic(expected = "no inherent method `fn forward(&self, x: &Tensor) -> Tensor`")]
fn a_missing_forward_is_a_clear_panic_not_a_stack_overflow() {
    let m = Forgotten { layer: Linear::new(2, 2) };
    let _ = &m.layer;
    m.forward(&Tensor::zeros([1, 2]));
}
