//! LayerNorm, RMSNorm and multi-head attention against PyTorch (float64
//! references from `reference/make_reference.py`: outputs and the gradients
//! of inputs and parameters), plus gradchecks.

use firebrand_autograd::{GradcheckOptions, Tensor, gradcheck, manual_seed};
use firebrand_nn::{
    KvCache, LayerNorm, Module, ModuleExt, MultiHeadAttention, RMSNorm, SinusoidalPositionalEncoding,
    TransformerDecoderLayer, TransformerEncoder, TransformerEncoderLayer, rotary,
};
use serde_json::Value;

mod common;
use common::{close_within, f32s, usizes};

fn cases() -> Value {
    common::cases()["blocks"].clone()
}

fn close(got: &[f32], want: &[f32], what: &str) {
    close_within(got, want, what, 3e-5);
}

fn check_case(name: &str, m: &dyn Module, run: &dyn Fn(&[Tensor]) -> Tensor) {
    let c = &cases()[name];
    let params = m.named_parameters();
    for (pn, p) in &params {
        p.copy_(&Tensor::from_vec(f32s(&c[pn]), p.shape().clone())).unwrap_or_else(|e| panic!("{name} {pn}: {e}"));
    }
    let n_in = (0..).take_while(|j| c.get(format!("x{j}")).is_some()).count();
    let xs: Vec<Tensor> = (0..n_in)
        .map(|j| Tensor::from_vec(f32s(&c[format!("x{j}")]), usizes(&c[format!("x{j}_shape")])).requires_grad_(true))
        .collect();
    let y = run(&xs);
    assert_eq!(y.dims(), usizes(&c["y_shape"]).as_slice(), "{name}");
    close(&y.to_vec::<f32>(), &f32s(&c["y"]), &format!("{name}: y"));
    y.mul(&Tensor::from_vec(f32s(&c["wout"]), y.shape().clone())).sum_all().backward();
    for (j, x) in xs.iter().enumerate() {
        close(&x.grad().unwrap().to_vec::<f32>(), &f32s(&c[format!("g_x{j}")]), &format!("{name}: grad x{j}"));
    }
    for (pn, p) in &params {
        close(&p.grad().unwrap().to_vec::<f32>(), &f32s(&c[format!("g_{pn}")]), &format!("{name}: grad {pn}"));
    }
}

#[test]
fn blocks_match_pytorch() {
    let ln = LayerNorm::new(6);
    check_case("layernorm", &ln, &|x| ln.forward(&x[0]));
    let rms = RMSNorm::new(6);
    check_case("rmsnorm", &rms, &|x| rms.forward(&x[0]));
    let mha = MultiHeadAttention::new(8, 2);
    check_case("mha_self", &mha, &|x| mha.forward(&x[0]));
    let causal = MultiHeadAttention::new(8, 2).causal(true);
    check_case("mha_causal", &causal, &|x| causal.forward(&x[0]));
    let post = TransformerEncoderLayer::new(8, 2, 16);
    check_case("encoder_post", &post, &|x| post.forward(&x[0]));
    let pre = TransformerEncoderLayer::new(8, 2, 16).norm_first(true).gelu(true);
    check_case("encoder_pre_gelu", &pre, &|x| pre.forward(&x[0]));
    let pad = Tensor::from_vec(vec![0i64, 0, 0, 1, 1, 0, 0, 0, 0, 0], [2, 5]);
    let dec = TransformerDecoderLayer::new(8, 2, 16).causal(true);
    check_case("decoder_post_causal", &dec, &|x| dec.decode(&x[0], &x[1], Some(&pad)));
    let dec_pre = TransformerDecoderLayer::new(8, 2, 16).norm_first(true).gelu(true);
    check_case("decoder_pre_gelu", &dec_pre, &|x| dec_pre.decode(&x[0], &x[1], None));
    let stack =
        TransformerEncoder::new((0..2).map(|_| TransformerEncoderLayer::new(8, 2, 16).norm_first(true)).collect())
            .final_norm(8);
    check_case("encoder_stack_pre", &stack, &|x| stack.forward(&x[0]));
    let cross = MultiHeadAttention::new(8, 4);
    check_case("mha_cross_padding", &cross, &|x| cross.attend(&x[0], &x[1], &x[1], Some(&pad)));
}

#[test]
fn blocks_pass_gradcheck() {
    manual_seed(4);
    let x = Tensor::randn([2, 4, 6], 0.0, 1.0).requires_grad_(true);
    let ln = LayerNorm::new(6);
    let rms = RMSNorm::new(6);
    let mha = MultiHeadAttention::new(6, 3).causal(true);
    let enc = TransformerEncoderLayer::new(6, 2, 12).norm_first(true).gelu(true).causal(true);
    type Run<'a> = &'a dyn Fn(&Tensor) -> Tensor;
    let runs: [(&str, Run); 4] = [
        ("layernorm", &|x| ln.forward(x)),
        ("rmsnorm", &|x| rms.forward(x)),
        ("mha causal", &|x| mha.forward(x)),
        ("encoder layer", &|x| enc.forward(x)),
    ];
    for (name, f) in runs {
        if let Err(e) = gradcheck(|t| f(&t[0]), std::slice::from_ref(&x), GradcheckOptions::default()) {
            panic!("{name}: {e}");
        }
    }
}

#[test]
fn causal_attention_ignores_the_future_and_positions_are_sinusoids() {
    manual_seed(2);
    let mha = MultiHeadAttention::new(8, 2).causal(true);
    let x = Tensor::randn([1, 6, 8], 0.0, 1.0);
    let y = mha.forward(&x);
    // Changing the last position leaves every earlier output unchanged.
    let mut v = x.to_vec::<f32>();
    v[5 * 8..].iter_mut().for_each(|a| *a += 3.0);
    let y2 = mha.forward(&Tensor::from_vec(v, [1, 6, 8]));
    close(&y2.narrow(1, 0, 5).to_vec::<f32>(), &y.narrow(1, 0, 5).to_vec::<f32>(), "causal prefix");
    let pe = SinusoidalPositionalEncoding::table(3, 4).to_vec::<f32>();
    close(&pe[4..8], &[1f32.sin(), 1f32.cos(), 0.01f32.sin(), 0.01f32.cos()], "PE row 1");
    assert_eq!(
        mha.named_parameters().iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    );
}

#[test]
fn rotary_positions_depend_only_on_distance_and_pass_gradcheck() {
    manual_seed(6);
    let (q, k) = (Tensor::randn([1, 1, 1, 8], 0.0, 1.0), Tensor::randn([1, 1, 1, 8], 0.0, 1.0));
    let dot = |m: usize, n: usize| rotary(&q, m).mul(&rotary(&k, n)).sum_all().item();
    // Same distance, same score; position 0 is the identity.
    assert!((dot(3, 1) - dot(7, 5)).abs() < 1e-4, "{} vs {}", dot(3, 1), dot(7, 5));
    assert!((dot(2, 2) - dot(0, 0)).abs() < 1e-4);
    assert_eq!(rotary(&q, 0).to_vec::<f32>(), q.to_vec::<f32>());
    // Pair i = 0 at position 1 rotates by 1 radian: (x0, x4) -> (x0 cos 1 - x4 sin 1, x0 sin 1 + x4 cos 1).
    let v = q.to_vec::<f32>();
    let r = rotary(&q, 1).to_vec::<f32>();
    assert!((r[0] - (v[0] * 1f32.cos() - v[4] * 1f32.sin())).abs() < 1e-6);
    assert!((r[4] - (v[0] * 1f32.sin() + v[4] * 1f32.cos())).abs() < 1e-6);
    let x = Tensor::randn([2, 3, 4], 0.0, 1.0).requires_grad_(true);
    gradcheck(|t| rotary(&t[0], 2), std::slice::from_ref(&x), GradcheckOptions::default()).unwrap();
}

#[test]
fn kv_cache_decoding_equals_the_full_causal_pass() {
    manual_seed(12);
    let mha = MultiHeadAttention::new(12, 3).causal(true);
    let x = Tensor::randn([2, 7, 12], 0.0, 1.0);
    let full = firebrand_autograd::with_no_grad(|| mha.forward(&x)).to_vec::<f32>();
    // A prompt of 3 positions, then one position at a time.
    let mut cache = KvCache::default();
    let mut parts = vec![mha.attend_cached(&x.narrow(1, 0, 3), &mut cache)];
    for t in 3..7 {
        parts.push(mha.attend_cached(&x.narrow(1, t, 1), &mut cache));
    }
    assert_eq!(cache.len(), 7);
    let inc = Tensor::cat(&parts.iter().collect::<Vec<_>>(), 1).to_vec::<f32>();
    for (i, (a, b)) in inc.iter().zip(&full).enumerate() {
        assert!((a - b).abs() < 1e-5, "position {i}: cached {a} vs full {b}");
    }
}

/// The fused kernel path against the composite reference path of the same
/// layer: self-attention (causal, padded) and cross-attention, values and
/// every gradient.
#[test]
fn fused_attention_equals_the_composite_reference() {
    manual_seed(21);
    let pad = Tensor::from_vec(vec![0.0f32, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], [2, 5]);
    let inf = f32::NEG_INFINITY;
    // (T, S) = (5, 5): one blocked pair per row and finite biases.
    let additive = Tensor::from_vec(
        (0..25).map(|i| if i % 6 == 1 { inf } else { (i % 3) as f32 * -0.5 }).collect::<Vec<f32>>(),
        [5, 5],
    );
    for (causal, padded, cross, masked) in [
        (true, false, false, false),
        (false, true, false, false),
        (true, true, false, false),
        (false, true, true, false),
        (false, false, false, true),
        (true, true, true, true),
    ] {
        let fused = MultiHeadAttention::new(12, 3).causal(causal);
        let reference = MultiHeadAttention::new(12, 3).causal(causal).fused(false);
        for ((_, a), (_, b)) in fused.named_parameters().iter().zip(reference.named_parameters()) {
            b.copy_(a).unwrap();
        }
        let x = Tensor::randn([2, 5, 12], 0.0, 1.0).requires_grad_(true);
        let mem = Tensor::randn([2, 5, 12], 0.0, 1.0).requires_grad_(true);
        let w = Tensor::randn([2, 5, 12], 0.0, 1.0);
        let mask = padded.then_some(&pad);
        let mut grads = Vec::new();
        let mut outs = Vec::new();
        for m in [&fused, &reference] {
            m.zero_grad();
            x.zero_grad();
            mem.zero_grad();
            let kv = if cross { &mem } else { &x };
            let y = if masked { m.attend_masked(&x, kv, kv, mask, &additive) } else { m.attend(&x, kv, kv, mask) };
            y.mul(&w).sum_all().backward();
            outs.push(y.to_vec::<f32>());
            let mut g = vec![x.grad().unwrap().to_vec::<f32>()];
            if cross {
                g.push(mem.grad().unwrap().to_vec::<f32>());
            }
            g.extend(m.parameters().iter().map(|p| p.grad().unwrap().to_vec::<f32>()));
            grads.push(g);
        }
        let what = format!("causal {causal} padded {padded} cross {cross} attn_mask {masked}");
        close(&outs[0], &outs[1], &format!("{what}: y"));
        for (i, (a, b)) in grads[0].iter().zip(&grads[1]).enumerate() {
            close(a, b, &format!("{what}: gradient {i}"));
        }
    }
}

/// KV-cached decoding through whole layers and a whole GPT model gives the
/// same logits as one full forward pass; generation is deterministic and
/// carries on past the context.
#[test]
fn gpt_cached_decoding_equals_the_full_pass() {
    use firebrand_nn::{Gpt, GptCache, GptConfig, Sampler, Sampling};
    manual_seed(31);
    let gpt = Gpt::new(GptConfig { vocab_size: 11, context: 9, layers: 2, heads: 2, embed: 8, dropout: 0.0 });
    let ids: Vec<i64> = vec![3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7];
    let x = Tensor::from_vec(ids.clone(), [2, 7]);
    let full = firebrand_autograd::with_no_grad(|| gpt.forward(&x)).to_vec::<f32>();
    let mut cache = GptCache::default();
    let mut parts = vec![gpt.forward_cached(&x.narrow(1, 0, 4), &mut cache)];
    for t in 4..7 {
        parts.push(gpt.forward_cached(&x.narrow(1, t, 1), &mut cache));
    }
    assert_eq!(cache.len(), 7);
    let inc = Tensor::cat(&parts.iter().collect::<Vec<_>>(), 1).to_vec::<f32>();
    assert_eq!(inc.len(), full.len());
    for (i, (a, b)) in inc.iter().zip(&full).enumerate() {
        assert!((a - b).abs() < 1e-5, "logit {i}: cached {a} vs full {b}");
    }
    // Greedy generation with the cache equals picking the argmax of a full pass each step.
    let out = gpt.generate(&[3, 1], 12, &mut Sampler::new(Sampling::Greedy, 0));
    assert_eq!(out.len(), 14);
    let mut want = vec![3i64, 1];
    for _ in 0..12 {
        let window = want[want.len().saturating_sub(9)..].to_vec();
        let n = window.len();
        let logits = firebrand_autograd::with_no_grad(|| gpt.forward(&Tensor::from_vec(window, [1, n])));
        let last = logits.narrow(1, n - 1, 1).to_vec::<f32>();
        let best = (0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        want.push(best as i64);
    }
    assert_eq!(out, want);
    // The causal layer on its own: pieces through forward_cached equal one pass.
    let layer = TransformerEncoderLayer::new(8, 2, 16).norm_first(true).causal(true);
    let h = Tensor::randn([1, 5, 8], 0.0, 1.0);
    let whole = firebrand_autograd::with_no_grad(|| layer.forward(&h)).to_vec::<f32>();
    let mut c = KvCache::default();
    let a = layer.forward_cached(&h.narrow(1, 0, 2), &mut c);
    let b = layer.forward_cached(&h.narrow(1, 2, 3), &mut c);
    let inc = Tensor::cat(&[&a, &b], 1).to_vec::<f32>();
    assert!(inc.iter().zip(&whole).all(|(x, y)| (x - y).abs() < 1e-5));
}

/// The decoder stack applies its layers in order, then its norm, under
/// PyTorch's `nn.TransformerDecoder` names; gradients reach every parameter.
#[test]
fn decoder_stack_composes_its_layers() {
    use firebrand_nn::TransformerDecoder;
    manual_seed(41);
    let dec = TransformerDecoder::new((0..2).map(|_| TransformerDecoderLayer::new(8, 2, 16).causal(true)).collect())
        .final_norm(8);
    let names: Vec<String> = dec.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"layers.1.multihead_attn.in_proj_weight".to_string()), "{names:?}");
    assert_eq!(names.last().map(String::as_str), Some("norm.bias"));
    let (tgt, mem) = (Tensor::randn([2, 4, 8], 0.0, 1.0), Tensor::randn([2, 6, 8], 0.0, 1.0));
    let pad = Tensor::from_vec(vec![0.0f32, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [2, 6]);
    let y = dec.decode(&tgt, &mem, Some(&pad));
    let by_hand = dec.norm.as_ref().unwrap().forward(&dec.layers[1].decode(
        &dec.layers[0].decode(&tgt, &mem, Some(&pad)),
        &mem,
        Some(&pad),
    ));
    assert_eq!(y.to_vec::<f32>(), by_hand.to_vec::<f32>());
    y.square().sum_all().backward();
    assert!(dec.parameters().iter().all(|p| p.grad().is_some()));
}

/// Attention dropout runs inside the fused kernel in training and not at all
/// in evaluation.
#[test]
fn attention_dropout_in_training_only() {
    manual_seed(51);
    let mut mha = MultiHeadAttention::new(8, 2).causal(true).dropout(0.5);
    let plain = MultiHeadAttention::new(8, 2).causal(true);
    for ((_, a), (_, b)) in mha.named_parameters().iter().zip(plain.named_parameters()) {
        b.copy_(a).unwrap();
    }
    let x = Tensor::randn([2, 5, 8], 0.0, 1.0).requires_grad_(true);
    let want = plain.forward(&x).to_vec::<f32>();
    let y = mha.forward(&x);
    assert_ne!(y.to_vec::<f32>(), want, "training mode drops weights");
    y.sum_all().backward();
    assert!(x.grad().is_some() && mha.parameters().iter().all(|p| p.grad().is_some()));
    mha.eval();
    assert_eq!(mha.forward(&x).to_vec::<f32>(), want, "evaluation mode does not");
}

/// A whole `Gpt` with PyTorch's weights (the model of `benches/pytorch/gpt.py`,
/// same parameter names, loaded by name): logits, loss and every gradient.
#[test]
fn gpt_matches_pytorch() {
    use firebrand_nn::{Gpt, GptConfig};
    let c = &common::cases()["gpt"];
    let gpt = Gpt::new(GptConfig { vocab_size: 11, context: 9, layers: 2, heads: 2, embed: 8, dropout: 0.0 });
    let params = gpt.named_parameters();
    for (name, p) in &params {
        let want = c.get(name).unwrap_or_else(|| panic!("PyTorch's GPT has no parameter {name}"));
        p.copy_(&Tensor::from_vec(f32s(want), p.shape().clone())).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let ids: Vec<i64> = usizes(&c["ids"]).into_iter().map(|v| v as i64).collect();
    let targets: Vec<i64> = usizes(&c["targets"]).into_iter().map(|v| v as i64).collect();
    let (ids, targets) = (Tensor::from_vec(ids, [2, 7]), Tensor::from_vec(targets, [2, 7]));
    close(&gpt.forward(&ids).to_vec::<f32>(), &f32s(&c["logits"]), "gpt: logits");
    let loss = gpt.loss(&ids, &targets);
    close(&[loss.item()], &[c["loss"].as_f64().unwrap() as f32], "gpt: loss");
    loss.backward();
    for (name, p) in &params {
        close(&p.grad().unwrap().to_vec::<f32>(), &f32s(&c[format!("g_{name}")]), &format!("gpt: grad {name}"));
    }
}

/// Weight tying: the shared matrix is one parameter whose gradient is the
/// sum of its two uses (checked against an untied copy), and state_dict
/// keeps both names so a tied checkpoint round-trips.
#[test]
fn gpt_weight_tying() {
    use firebrand_nn::{Gpt, GptConfig};
    manual_seed(61);
    let cfg = GptConfig { vocab_size: 7, context: 6, layers: 1, heads: 2, embed: 4, dropout: 0.0 };
    let tied = Gpt::new(cfg).tie_weights();
    let untied = Gpt::new(cfg);
    let names: Vec<String> = tied.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"wte.weight".to_string()) && !names.contains(&"lm_head.weight".to_string()), "{names:?}");
    assert!(tied.state_dict().iter().any(|(n, _)| n == "lm_head.weight"));
    for (name, t) in tied.state_dict() {
        let (_, u) = untied.state_dict().into_iter().find(|(n, _)| *n == name).unwrap();
        u.copy_(&t).unwrap();
    }
    let ids = Tensor::from_vec(vec![1i64, 2, 3, 4, 5, 6, 0, 1], [2, 4]);
    let targets = Tensor::from_vec(vec![2i64, 3, 4, 5, 6, 0, 1, 2], [2, 4]);
    let (lt, lu) = (tied.loss(&ids, &targets), untied.loss(&ids, &targets));
    assert_eq!(lt.item(), lu.item());
    lt.backward();
    lu.backward();
    let g = |m: &Gpt, which: &str| {
        m.state_dict().into_iter().find(|(n, _)| n == which).unwrap().1.grad().unwrap().to_vec::<f32>()
    };
    let sum: Vec<f32> = g(&untied, "wte.weight").iter().zip(g(&untied, "lm_head.weight")).map(|(a, b)| a + b).collect();
    close(&g(&tied, "wte.weight"), &sum, "tied gradient = embedding's + head's");
}
