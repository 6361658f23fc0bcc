//! LSTM, GRU, RNN and Embedding against PyTorch (float64 references from
//! `reference/make_reference.py`: outputs, final states, and gradients for
//! the input, the initial state and every parameter), plus gradchecks.

use firebrand_autograd::{GradcheckOptions, Tensor, gradcheck, manual_seed};
use firebrand_nn::{Embedding, GRU, LSTM, Module, ModuleExt, RNN, Recurrent, RnnState};
use serde_json::Value;

mod common;
use common::{cases, close_within, f32s};

fn close(got: &[f32], want: &[f32], what: &str) {
    close_within(got, want, what, 3e-5);
}

/// A layer of the case's kind, boxed with access to `forward_with_state`.
enum Layer {
    Lstm(LSTM),
    Gru(GRU),
    Rnn(RNN),
}

impl Layer {
    fn build(spec: &Value) -> Layer {
        let n = |k: &str| spec[k].as_u64().unwrap() as usize;
        let bi = spec["bidirectional"].as_bool().unwrap();
        match spec["kind"].as_str().unwrap() {
            "lstm" => Layer::Lstm(LSTM::with_layers(n("input"), n("hidden"), n("layers"), bi, true)),
            "gru" => Layer::Gru(GRU::with_layers(n("input"), n("hidden"), n("layers"), bi, true)),
            "rnn_tanh" => Layer::Rnn(RNN::new(n("input"), n("hidden"))),
            "rnn_relu" => Layer::Rnn(RNN::relu(n("input"), n("hidden"))),
            k => panic!("unknown kind {k}"),
        }
    }

    fn core(&self) -> &Recurrent {
        match self {
            Layer::Lstm(l) => l,
            Layer::Gru(l) => l,
            Layer::Rnn(l) => l,
        }
    }

    fn params(&self) -> Vec<(String, Tensor)> {
        match self {
            Layer::Lstm(l) => l.named_parameters(),
            Layer::Gru(l) => l.named_parameters(),
            Layer::Rnn(l) => l.named_parameters(),
        }
    }
}

#[test]
fn recurrent_layers_match_pytorch() {
    let c = cases();
    let all = c["recurrent"].as_object().unwrap();
    assert_eq!(all.len(), 6);
    for (name, case) in all {
        let layer = Layer::build(&case["spec"]);
        let params = layer.params();
        for (pname, p) in &params {
            p.copy_(&Tensor::from_vec(f32s(&case[pname]), p.shape().clone())).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let xs: Vec<usize> = case["x_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let x = Tensor::from_vec(f32s(&case["x"]), xs.clone()).requires_grad_(true);
        let hn_len = f32s(&case["h_n"]).len();
        let (ld, h) = (hn_len / xs[0] / layer.core().hidden_size(), layer.core().hidden_size());
        let state = case.get("h0").map(|h0| RnnState {
            h: Tensor::from_vec(f32s(h0), [ld, xs[0], h]).requires_grad_(true),
            c: case.get("c0").map(|c0| Tensor::from_vec(f32s(c0), [ld, xs[0], h]).requires_grad_(true)),
        });
        let (out, st) = layer.core().forward_with_state(&x, state.as_ref());
        close(&out.to_vec::<f32>(), &f32s(&case["y"]), &format!("{name}: output"));
        close(&st.h.to_vec::<f32>(), &f32s(&case["h_n"]), &format!("{name}: h_n"));
        let mut loss = out.mul(&Tensor::from_vec(f32s(&case["wout"]), out.shape().clone())).sum_all()
            + st.h.mul(&Tensor::from_vec(f32s(&case["wh"]), st.h.shape().clone())).sum_all();
        if let Some(cn) = &st.c {
            close(&cn.to_vec::<f32>(), &f32s(&case["c_n"]), &format!("{name}: c_n"));
            loss += cn.mul(&Tensor::from_vec(f32s(&case["wc"]), cn.shape().clone())).sum_all();
        }
        loss.backward();
        close(&x.grad().unwrap().to_vec::<f32>(), &f32s(&case["gx"]), &format!("{name}: grad x"));
        if let Some(s) = &state {
            close(&s.h.grad().unwrap().to_vec::<f32>(), &f32s(&case["g_h0"]), &format!("{name}: grad h0"));
            if let Some(c0) = &s.c {
                close(&c0.grad().unwrap().to_vec::<f32>(), &f32s(&case["g_c0"]), &format!("{name}: grad c0"));
            }
        }
        for (pname, p) in &params {
            let g = p.grad().unwrap_or_else(|| panic!("{name}: no grad for {pname}"));
            close(&g.to_vec::<f32>(), &f32s(&case[format!("g_{pname}")]), &format!("{name}: grad {pname}"));
        }
    }
}

#[test]
fn recurrent_layers_pass_gradcheck() {
    manual_seed(5);
    let x = Tensor::randn([2, 4, 3], 0.0, 1.0).requires_grad_(true);
    type Run = Box<dyn Fn(&Tensor) -> Tensor>;
    let layers: Vec<(&str, Run)> = vec![
        (
            "lstm",
            Box::new({
                let l = LSTM::with_layers(3, 4, 2, true, true);
                move |x: &Tensor| {
                    let (o, s) = l.forward_with_state(x, None);
                    o.sum_all() + s.c.unwrap().sum_all()
                }
            }),
        ),
        (
            "gru",
            Box::new({
                let l = GRU::new(3, 5);
                move |x: &Tensor| l.forward(x)
            }),
        ),
        (
            "rnn",
            Box::new({
                let l = RNN::new(3, 4).return_sequences(false);
                move |x: &Tensor| l.forward(x)
            }),
        ),
    ];
    for (name, f) in layers {
        if let Err(e) = gradcheck(|t| f(&t[0]), std::slice::from_ref(&x), GradcheckOptions::default()) {
            panic!("{name}: {e}");
        }
    }
}

#[test]
fn final_state_only_matches_the_full_sequence_path() {
    manual_seed(8);
    let x = Tensor::randn([3, 6, 4], 0.0, 1.0).requires_grad_(true);
    for bi in [false, true] {
        let full = LSTM::with_layers(4, 5, 2, bi, true);
        let last = LSTM::with_layers(4, 5, 2, bi, true).return_sequences(false);
        for ((_, a), (_, b)) in full.named_parameters().iter().zip(last.named_parameters()) {
            b.copy_(a).unwrap();
        }
        let (_, s) = full.forward_with_state(&x, None);
        let dirs = if bi { 2 } else { 1 };
        let want = s.h.narrow(0, 2 * dirs - dirs, dirs).permute(&[1, 0, 2]).reshape([3, 5 * dirs]);
        let got = last.forward(&x);
        assert_eq!(got.to_vec::<f32>(), want.to_vec::<f32>());
        // Same gradients through either path.
        let w = Tensor::randn([3, 5 * dirs], 0.0, 1.0);
        want.mul(&w).sum_all().backward();
        let gx_full = x.grad().unwrap().to_vec::<f32>();
        x.zero_grad();
        got.mul(&w).sum_all().backward();
        let gx_last = x.grad().unwrap().to_vec::<f32>();
        x.zero_grad();
        for (a, b) in gx_full.iter().zip(&gx_last) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        for ((n, a), (_, b)) in full.named_parameters().iter().zip(last.named_parameters()) {
            for (u, v) in a.grad().unwrap().to_vec::<f32>().iter().zip(b.grad().unwrap().to_vec::<f32>()) {
                assert!((u - v).abs() < 1e-5, "{n}: {u} vs {v}");
            }
        }
    }
}

/// `OneHot(V)` into a recurrent layer: `Sequential` runs the layer's input
/// projection as a row gather (`forward_one_hot`). Outputs are the same bits
/// as the dense one-hot product, gradients agree to rounding, for every
/// kind, stacked and bidirectional, full sequence or final state, on a batch
/// big enough for the per-thread chunks of the LSTM scan; a non-finite weight
/// spreads NaN through every output as the dense product does.
#[test]
fn one_hot_ids_into_a_recurrent_layer_match_the_dense_one_hot_input() {
    use firebrand_nn::{OneHot, Sequential};
    let (b, t, v) = (40, 5, 7);
    let ids = Tensor::from_vec((0..b * t).map(|i| ((i * 5 + i / 3) % v) as i64).collect::<Vec<_>>(), [b, t]);
    fn check<M: Module + 'static>(what: &str, ids: &Tensor, v: usize, make: impl Fn() -> M) {
        manual_seed(3);
        let fused = Sequential::new().add(OneHot(v)).add(make());
        manual_seed(3);
        let layer = make(); // the same weights, run on the dense one-hot tensor
        let (y_fused, y_dense) = (fused.forward(ids), layer.forward(&ids.one_hot(v)));
        assert_eq!(y_fused.to_vec::<f32>(), y_dense.to_vec::<f32>(), "{what}: outputs");
        let w = Tensor::randn(y_dense.shape().clone(), 0.0, 1.0);
        y_fused.mul(&w).sum_all().backward();
        y_dense.mul(&w).sum_all().backward();
        let pairs = fused.named_parameters().into_iter().zip(layer.named_parameters());
        for ((n, a), (_, c)) in pairs {
            let (ga, gc) = (a.grad().unwrap().to_vec::<f32>(), c.grad().unwrap().to_vec::<f32>());
            close_within(&ga, &gc, &format!("{what}: grad of {n}"), 1e-5);
        }
    }
    check("lstm", &ids, v, || LSTM::new(v, 6));
    check("lstm, final state", &ids, v, || LSTM::new(v, 6).return_sequences(false));
    check("lstm, 2 layers, bidirectional", &ids, v, || LSTM::with_layers(v, 4, 2, true, true));
    check("gru, final state", &ids, v, || GRU::with_layers(v, 5, 1, false, true).return_sequences(false));
    check("rnn without bias", &ids, v, || RNN::with_layers(v, 5, 1, false, false));
    // A NaN weight of one input symbol: the dense product (0·NaN) spreads it
    // to every row, not only those of that symbol; the fused layer does the same.
    manual_seed(3);
    let fused = Sequential::new().add(OneHot(v)).add(LSTM::new(v, 3));
    let dense = LSTM::new(v, 3);
    for ((_, a), (n, c)) in fused.named_parameters().into_iter().zip(dense.named_parameters()) {
        let mut vals = a.to_vec::<f32>();
        if n == "weight_ih_l0" {
            vals[0] = f32::NAN; // unit 0 of the input gate, symbol 0
        }
        let vals = Tensor::from_vec(vals, a.shape().clone());
        a.copy_(&vals).unwrap();
        c.copy_(&vals).unwrap();
    }
    let nan_mask = |y: Tensor| y.to_vec::<f32>().iter().map(|x| x.is_nan()).collect::<Vec<_>>();
    let (got, want) = (nan_mask(fused.forward(&ids)), nan_mask(dense.forward(&ids.one_hot(v))));
    assert!(want.iter().filter(|&&n| n).count() > b * t, "the dense path spreads NaN past symbol 0's rows");
    assert_eq!(got, want, "NaN where the dense product has it");
}

#[test]
fn embedding_matches_pytorch_and_skips_the_padding_row() {
    let c = &cases()["embedding"];
    let emb = Embedding::new(7, 3).padding_idx(2);
    emb.weight.copy_(&Tensor::from_vec(f32s(&c["weight"]), [7, 3])).unwrap();
    let ids: Vec<i64> = c["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let y = emb.forward(&Tensor::from_vec(ids, [2, 3]));
    assert_eq!(y.dims(), &[2, 3, 3]);
    close(&y.to_vec::<f32>(), &f32s(&c["y"]), "embedding");
    y.mul(&Tensor::from_vec(f32s(&c["wout"]), [2, 3, 3])).sum_all().backward();
    close(&emb.weight.grad().unwrap().to_vec::<f32>(), &f32s(&c["g_weight"]), "embedding grad");
    assert!(emb.weight.grad().unwrap().to_vec::<f32>()[6..9].iter().all(|g| *g == 0.0));
}

#[test]
fn shapes_names_and_errors() {
    let lstm = LSTM::with_layers(3, 4, 2, true, false).return_sequences(false);
    let names: Vec<String> = lstm.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "weight_ih_l0",
            "weight_hh_l0",
            "weight_ih_l0_reverse",
            "weight_hh_l0_reverse",
            "weight_ih_l1",
            "weight_hh_l1",
            "weight_ih_l1_reverse",
            "weight_hh_l1_reverse"
        ]
    );
    assert_eq!(lstm.named_parameters()[4].1.dims(), &[16, 8]); // layer 1 takes both directions
    assert_eq!(lstm.forward(&Tensor::zeros([5, 7, 3])).dims(), &[5, 8]);
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lstm.forward(&Tensor::zeros([5, 7, 2]))));
    let msg = err.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.contains("LSTM") && msg.contains("[5, 7, 2]"), "{msg}");
}
