//! The fused scaled-dot-product attention op: finite-difference gradient
//! checks, and values and gradients against the composite form
//! (`softmax(q·kᵀ·scale + mask)·v` from primitive ops) on awkward shapes,
//! strided views, broadcast keys, causal offsets and padding masks.

use firebrand_autograd::{AttentionOptions, GradcheckOptions, Tensor, gradcheck, manual_seed};

/// The composite reference: the mask is an added `-inf` tensor.
fn reference(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttentionOptions) -> Tensor {
    let (b, t, s, d) = (q.dims()[0], q.dims()[2], k.dims()[2], q.dims()[3]);
    let scale = opts.scale.unwrap_or(1.0 / (d as f32).sqrt());
    let mut scores = q.matmul(&k.transpose(-1, -2)).affine(scale, 0.0); // (B, H, T, S)
    let pad = opts.key_padding_mask.map(|m| m.to_vec::<f32>());
    let mut mask = vec![0.0f32; b * t * s];
    for bi in 0..b {
        for ti in 0..t {
            for si in 0..s {
                let causal = opts.causal.is_some_and(|off| si > ti + off);
                if causal || pad.as_ref().is_some_and(|p| p[bi * s + si] != 0.0) {
                    mask[(bi * t + ti) * s + si] = f32::NEG_INFINITY;
                }
            }
        }
    }
    scores = scores.add(&Tensor::from_vec(mask, [b, 1, t, s]));
    if let Some(m) = opts.attn_mask {
        scores = scores.add(m);
    }
    scores.softmax(-1).matmul(v)
}

fn close(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    for (i, (x, y)) in a.to_vec::<f32>().iter().zip(b.to_vec::<f32>()).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
    }
}

struct Case {
    b: usize,
    h: usize,
    t: usize,
    s: usize,
    d: usize,
    causal: Option<usize>,
    padded: bool,
}

const CASES: [Case; 6] = [
    Case { b: 1, h: 1, t: 1, s: 1, d: 1, causal: None, padded: false },
    Case { b: 2, h: 3, t: 5, s: 5, d: 4, causal: Some(0), padded: false },
    Case { b: 2, h: 2, t: 3, s: 6, d: 5, causal: Some(3), padded: true },
    Case { b: 3, h: 2, t: 4, s: 7, d: 3, causal: None, padded: true },
    Case { b: 1, h: 2, t: 1, s: 9, d: 2, causal: Some(8), padded: false },
    Case { b: 2, h: 1, t: 33, s: 33, d: 16, causal: Some(0), padded: false },
];

/// A finite additive `(T, S)` mask.
fn additive(c: &Case) -> Tensor {
    Tensor::from_vec((0..c.t * c.s).map(|i| ((i * 5 + 1) % 4) as f32 * -0.6).collect::<Vec<_>>(), [c.t, c.s])
}

fn padding(c: &Case) -> Tensor {
    // The last key of every other batch entry is padding (never all of them).
    let m: Vec<f32> =
        (0..c.b * c.s).map(|i| (i % c.s == c.s - 1 && (i / c.s).is_multiple_of(2)) as u8 as f32).collect();
    Tensor::from_vec(m, [c.b, c.s])
}

#[test]
fn fused_equals_the_composite_form_in_values_and_gradients() {
    manual_seed(3);
    for (n, c) in CASES.iter().enumerate() {
        let pad = padding(c);
        let opts =
            AttentionOptions { causal: c.causal, key_padding_mask: c.padded.then_some(&pad), ..Default::default() };
        let q = Tensor::randn([c.b, c.h, c.t, c.d], 0.0, 1.0).requires_grad_(true);
        let k = Tensor::randn([c.b, c.h, c.s, c.d], 0.0, 1.0).requires_grad_(true);
        let v = Tensor::randn([c.b, c.h, c.s, c.d], 0.0, 1.0).requires_grad_(true);
        let w = Tensor::randn([c.b, c.h, c.t, c.d], 0.0, 1.0);
        let fused = q.scaled_dot_product_attention(&k, &v, &opts);
        fused.mul(&w).sum_all().backward();
        let grads: Vec<Tensor> = [&q, &k, &v].iter().map(|x| x.grad().unwrap()).collect();
        [&q, &k, &v].iter().for_each(|x| x.zero_grad());
        let want = reference(&q, &k, &v, &opts);
        want.mul(&w).sum_all().backward();
        close(&format!("case {n} output"), &fused, &want, 1e-5);
        for (name, (g, x)) in ["q", "k", "v"].iter().zip(grads.iter().zip([&q, &k, &v])) {
            close(&format!("case {n} d{name}"), g, &x.grad().unwrap(), 1e-4);
        }
    }
}

#[test]
fn gradcheck_on_masks_views_and_broadcast_keys() {
    manual_seed(5);
    let opts = GradcheckOptions::default();
    for c in &CASES[..5] {
        let (pad, add) = (padding(c), additive(c));
        let ao = AttentionOptions {
            causal: c.causal,
            key_padding_mask: c.padded.then_some(&pad),
            attn_mask: (!c.padded).then_some(&add),
            scale: Some(0.8),
            ..Default::default()
        };
        let inputs = [
            Tensor::randn([c.b, c.h, c.t, c.d], 0.0, 1.0).requires_grad_(true),
            Tensor::randn([c.b, c.h, c.s, c.d], 0.0, 1.0).requires_grad_(true),
            Tensor::randn([c.b, c.h, c.s, c.d], 0.0, 1.0).requires_grad_(true),
        ];
        let r = gradcheck(|x| x[0].scaled_dot_product_attention(&x[1], &x[2], &ao), &inputs, opts);
        if let Err(e) = r {
            panic!("attention {}x{}x{}x{}x{}: {e}", c.b, c.h, c.t, c.s, c.d);
        }
    }
    // Heads split from a fused (B, T, 3E) projection, read in place.
    let (b, t, h, d) = (2, 4, 2, 3);
    let e = h * d;
    let qkv = Tensor::randn([b, t, 3 * e], 0.0, 1.0).requires_grad_(true);
    let split = |x: &Tensor, i: usize| x.narrow(2, i * e, e).reshape([b, t, h, d]).permute(&[0, 2, 1, 3]);
    let causal = AttentionOptions::causal();
    let r = gradcheck(
        |x| split(&x[0], 0).scaled_dot_product_attention(&split(&x[0], 1), &split(&x[0], 2), &causal),
        std::slice::from_ref(&qkv),
        opts,
    );
    r.unwrap_or_else(|e| panic!("attention on fused-projection views: {e}"));
    // One key/value head broadcast over 3 query heads (multi-query attention).
    let q = Tensor::randn([2, 3, 4, 2], 0.0, 1.0).requires_grad_(true);
    let kv = Tensor::randn([2, 1, 5, 2], 0.0, 1.0).requires_grad_(true);
    let r = gradcheck(
        |x| {
            let k = x[1].broadcast_to([2, 3, 5, 2]);
            x[0].scaled_dot_product_attention(&k, &k, &AttentionOptions::default())
        },
        &[q, kv],
        opts,
    );
    r.unwrap_or_else(|e| panic!("attention with broadcast keys: {e}"));
    // A transposed head dim is copied first and still differentiates.
    let qt = Tensor::randn([1, 2, 3, 4], 0.0, 1.0).requires_grad_(true);
    let r = gradcheck(
        |x| {
            let q = x[0].transpose(2, 3); // (1, 2, 4, 3), last dim strided
            q.scaled_dot_product_attention(&q, &q, &AttentionOptions::causal())
        },
        &[qt],
        opts,
    );
    r.unwrap_or_else(|e| panic!("attention with a strided head dim: {e}"));
}

/// Dropout inside the kernel: gradcheck with a fixed seed (the same mask on
/// every evaluation), the same seed gives the same output, and averaged over
/// many seeds the output approaches the output without dropout.
#[test]
fn dropout_in_the_kernel() {
    manual_seed(13);
    let (b, h, t, s, d) = (2, 2, 4, 6, 3);
    let inputs = [
        Tensor::randn([b, h, t, d], 0.0, 1.0).requires_grad_(true),
        Tensor::randn([b, h, s, d], 0.0, 1.0).requires_grad_(true),
        Tensor::randn([b, h, s, d], 0.0, 1.0).requires_grad_(true),
    ];
    let opts =
        |seed| AttentionOptions { causal: Some(2), dropout: 0.3, dropout_seed: Some(seed), ..Default::default() };
    let r =
        gradcheck(|x| x[0].scaled_dot_product_attention(&x[1], &x[2], &opts(5)), &inputs, GradcheckOptions::default());
    r.unwrap_or_else(|e| panic!("attention with dropout: {e}"));
    let run = |seed| inputs[0].scaled_dot_product_attention(&inputs[1], &inputs[2], &opts(seed)).to_vec::<f32>();
    assert_eq!(run(9), run(9));
    assert_ne!(run(9), run(10));
    let plain = inputs[0]
        .scaled_dot_product_attention(
            &inputs[1],
            &inputs[2],
            &AttentionOptions { causal: Some(2), ..Default::default() },
        )
        .to_vec::<f32>();
    let n = 2000;
    let mut mean = vec![0.0f64; plain.len()];
    for seed in 0..n {
        run(seed).iter().zip(&mut mean).for_each(|(v, m)| *m += *v as f64 / n as f64);
    }
    for (i, (m, p)) in mean.iter().zip(&plain).enumerate() {
        assert!((m - *p as f64).abs() < 0.08, "mean over seeds [{i}] {m} vs without dropout {p}");
    }
    let bad = AttentionOptions { dropout: 1.0, ..Default::default() };
    let msg = inputs[0].try_scaled_dot_product_attention(&inputs[1], &inputs[2], &bad).unwrap_err().to_string();
    assert!(msg.contains("dropout"), "{msg}");
}

#[test]
fn errors_name_the_op_and_shapes() {
    let q = Tensor::zeros([2, 2, 3, 4]);
    let k = Tensor::zeros([2, 2, 5, 3]);
    let msg = q.try_scaled_dot_product_attention(&k, &k, &AttentionOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("scaled_dot_product_attention") && msg.contains("[2, 2, 5, 3]"), "{msg}");
    let k = Tensor::zeros([2, 2, 5, 4]);
    let bad = Tensor::zeros([2, 4]);
    let opts = AttentionOptions { key_padding_mask: Some(&bad), ..Default::default() };
    let msg = q.try_scaled_dot_product_attention(&k, &k, &opts).unwrap_err().to_string();
    assert!(msg.contains("(2, 5)") && msg.contains("[2, 4]"), "{msg}");
    let wrong = Tensor::zeros([3, 3]);
    let opts_mask = AttentionOptions { attn_mask: Some(&wrong), ..Default::default() };
    let msg = q.try_scaled_dot_product_attention(&k, &k, &opts_mask).unwrap_err().to_string();
    assert!(msg.contains("attn_mask") && msg.contains("(3, 5)") && msg.contains("[3, 3]"), "{msg}");
    let msg = Tensor::zeros([3, 4]).try_scaled_dot_product_attention(&k, &k, &opts).unwrap_err().to_string();
    assert!(msg.contains("(B, heads, T, d)"), "{msg}");
}
