//! Recurrent layers: `LSTM`, `GRU` and the Elman `RNN`, batch-first, with
//! PyTorch's parameter layout and names (`weight_ih_l0`, `bias_hh_l1_reverse`,
//! gates stacked `i, f, g, o` for the LSTM and `r, z, n` for the GRU), so
//! weights load from PyTorch state dicts.
//!
//! Each layer multiplies the whole input sequence by `W_ih` in one gemm, then
//! runs one `(B, H) · W_hhᵀ` gemm and the cell's elementwise math per step;
//! gradients come from autograd through those ops.

use crate::quantize::quantize_per_row;
use crate::{Init, Module};
use firebrand_autograd::Tensor;
use firebrand_ops::gemm::int8::QuantizedWeight;

/// Which recurrence a [`Recurrent`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RnnKind {
    /// Long short-term memory (4 gates).
    Lstm,
    /// Gated recurrent unit (3 gates).
    Gru,
    /// Elman RNN with `tanh`.
    RnnTanh,
    /// Elman RNN with ReLU.
    RnnRelu,
}

impl RnnKind {
    fn gates(self) -> usize {
        match self {
            RnnKind::Lstm => 4,
            RnnKind::Gru => 3,
            RnnKind::RnnTanh | RnnKind::RnnRelu => 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            RnnKind::Lstm => "LSTM",
            RnnKind::Gru => "GRU",
            RnnKind::RnnTanh | RnnKind::RnnRelu => "RNN",
        }
    }
}

/// The weights of one direction of one layer.
struct Cell {
    w_ih: Tensor,         // (G·H, I)
    w_hh: Tensor,         // (G·H, H)
    b_ih: Option<Tensor>, // (G·H,)
    b_hh: Option<Tensor>, // (G·H,)
    /// The dynamic int8 forms of `w_ih` and `w_hh` ([`crate::quantize::quantize_dynamic`]).
    int8: std::sync::RwLock<Option<CellInt8>>,
}

/// A cell's weights in int8, one scale per gate row.
#[derive(Clone)]
struct CellInt8 {
    w_ih: std::sync::Arc<QuantizedWeight>,
    w_hh: std::sync::Arc<QuantizedWeight>,
}

impl Cell {
    /// The int8 forms, when on and this call records no gradient.
    fn int8_for(&self, x: &Tensor) -> Option<CellInt8> {
        let q = self.int8.read().expect("not poisoned").clone()?;
        let params: Vec<&Tensor> = [&self.w_ih, &self.w_hh].into_iter().chain(&self.b_ih).chain(&self.b_hh).collect();
        crate::quantize::may_compute_quantized(x, &params).then_some(q)
    }
}

/// Hidden state of a recurrent layer: `h` is `(layers · directions, B, H)`;
/// `c` (the LSTM's cell state) has the same shape.
#[derive(Clone)]
pub struct RnnState {
    /// Hidden state, `(L·D, B, H)`.
    pub h: Tensor,
    /// Cell state, `(L·D, B, H)` (LSTM only).
    pub c: Option<Tensor>,
}

/// A recurrent layer's input: dense `(B, T, I)`, or class ids `(B, T)` that
/// stand for their one-hot rows (`OneHot(I)` followed by the layer).
#[derive(Clone, Copy)]
enum SeqInput<'a> {
    Dense(&'a Tensor),
    OneHot(&'a Tensor, usize),
}

impl SeqInput<'_> {
    /// `(B, T, I)`, or `None` for a tensor of the wrong rank.
    fn dims(&self) -> Option<(usize, usize, usize)> {
        match (*self, self.tensor().dims()) {
            (SeqInput::Dense(_), &[b, t, i]) => Some((b, t, i)),
            (SeqInput::OneHot(_, classes), &[b, t]) => Some((b, t, classes)),
            _ => None,
        }
    }

    fn tensor(&self) -> &Tensor {
        match self {
            SeqInput::Dense(x) | SeqInput::OneHot(x, _) => x,
        }
    }
}

/// The state and forward pass shared by [`LSTM`], [`GRU`] and [`RNN`]
/// (reachable through their `Deref`).
pub struct Recurrent {
    kind: RnnKind,
    hidden: usize,
    bidirectional: bool,
    dropout: f32,
    training: bool,
    return_sequences: bool,
    layers: Vec<Vec<Cell>>, // [layer][direction]
}

impl Recurrent {
    fn make(kind: RnnKind, input: usize, hidden: usize, layers: usize, bidirectional: bool, bias: bool) -> Self {
        assert!(hidden > 0 && layers > 0, "{}: hidden size and layers must be positive", kind.name());
        let g = kind.gates();
        let dirs = if bidirectional { 2 } else { 1 };
        // PyTorch: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H)).
        let init = |shape: Vec<usize>| Init::TorchDefault.tensor(shape, hidden, hidden).requires_grad_(true);
        let cells = (0..layers)
            .map(|l| {
                let in_l = if l == 0 { input } else { hidden * dirs };
                (0..dirs)
                    .map(|_| Cell {
                        w_ih: init(vec![g * hidden, in_l]),
                        w_hh: init(vec![g * hidden, hidden]),
                        b_ih: bias.then(|| init(vec![g * hidden])),
                        b_hh: bias.then(|| init(vec![g * hidden])),
                        int8: Default::default(),
                    })
                    .collect()
            })
            .collect();
        Recurrent { kind, hidden, bidirectional, dropout: 0.0, training: true, return_sequences: true, layers: cells }
    }

    /// Hidden size `H`.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Number of stacked layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// 2 when bidirectional, else 1.
    pub fn num_directions(&self) -> usize {
        if self.bidirectional { 2 } else { 1 }
    }

    /// Runs the layers over `x` `(B, T, I)` from `state` (zeros when `None`):
    /// the last layer's outputs `(B, T, D·H)` and the final state.
    ///
    /// # Panics
    /// On an input or state of the wrong shape, naming the layer and the shapes.
    pub fn forward_with_state(&self, x: &Tensor, state: Option<&RnnState>) -> (Tensor, RnnState) {
        self.run(SeqInput::Dense(x), state, true)
    }

    /// The layer's `forward` on the one-hot rows of `ids` `(B, T)` over
    /// `classes` (the layer's input size): the same as
    /// `forward(&ids.one_hot(classes))` without building the one-hot tensor.
    /// The first layer's input projection `onehot·W_ihᵀ + b` is then a row
    /// gather from `W_ihᵀ + b` `(classes, G·H)`, and its weight gradient an
    /// index-add: no `(B·T, classes)·(classes, G·H)` products either way (the
    /// rewrite XLA's algebraic simplifier makes of a dot with a one-hot). The
    /// outputs are the same bits as the dense path's; a non-finite weight
    /// takes the dense path, so that NaN and inf spread as they would there.
    /// `Sequential` uses this for `OneHot(n)` followed by a recurrent layer.
    ///
    /// # Panics
    /// On `ids` that are not `(B, T)` integers below `classes`, or `classes`
    /// other than the input size.
    ///
    /// ```
    /// use firebrand_nn::{LSTM, Module};
    /// use firebrand_autograd::Tensor;
    /// let lstm = LSTM::new(5, 8);
    /// let ids = Tensor::from_vec(vec![0i64, 4, 2, 1, 3, 0], [2, 3]); // (B, T)
    /// let fused = lstm.forward_one_hot(&ids, 5);
    /// assert_eq!(fused.to_vec::<f32>(), lstm.forward(&ids.one_hot(5)).to_vec::<f32>());
    /// ```
    pub fn forward_one_hot(&self, ids: &Tensor, classes: usize) -> Tensor {
        self.forward_input(SeqInput::OneHot(ids, classes))
    }

    /// `forward`: every step's output, or the final hidden state.
    fn forward_input(&self, x: SeqInput) -> Tensor {
        crate::module::traced(self, || {
            let (out, state) = self.run(x, None, self.return_sequences);
            if self.return_sequences {
                return out; // (B, T, D·H)
            }
            // The final hidden state of the last layer, both directions: (B, D·H).
            let dirs = self.num_directions();
            let last = state.h.narrow(0, state.h.dims()[0] - dirs, dirs); // (D, B, H)
            let b = last.dims()[1];
            last.permute(&[1, 0, 2]).reshape([b, dirs * self.hidden])
        })
    }

    /// `forward_with_state`; with `sequence` false the last layer's outputs
    /// are not computed (an empty `(B, 0, D·H)` comes back) — only its state.
    fn run(&self, x: SeqInput, state: Option<&RnnState>, sequence: bool) -> (Tensor, RnnState) {
        let name = self.kind.name();
        let expect_in = self.layers[0][0].w_ih.dims()[1];
        let (b, t, input) = x.dims().unwrap_or_else(|| match x {
            SeqInput::Dense(x) => crate::module::input_error(self, &format!("(B, T, {expect_in})"), x.dims()),
            SeqInput::OneHot(ids, _) => crate::module::input_error(self, "one-hot ids (B, T)", ids.dims()),
        });
        if input != expect_in || t == 0 {
            crate::module::input_error(self, &format!("(B, T, {expect_in}) with T > 0"), x.tensor().dims());
        }
        let (h_dim, dirs) = (self.hidden, self.num_directions());
        let n_states = self.layers.len() * dirs;
        if let Some(s) = state {
            assert_eq!(s.h.dims(), [n_states, b, h_dim], "{name}: h0 must be (L·D, B, H) = {:?}", [n_states, b, h_dim]);
            if self.kind == RnnKind::Lstm {
                let c = s.c.as_ref().unwrap_or_else(|| panic!("{name}: the state needs a cell state c0"));
                assert_eq!(c.dims(), [n_states, b, h_dim], "{name}: c0 must be (L·D, B, H)");
            }
        }
        let dev = x.tensor().device();
        let zeros = || Tensor::zeros([b, h_dim]).to_device(dev).expect("the input's device");
        let (mut h_n, mut c_n) = (Vec::new(), Vec::new());
        let mut layer_in = x.tensor().clone();
        for (l, cells) in self.layers.iter().enumerate() {
            if l > 0 && self.training && self.dropout > 0.0 {
                layer_in = crate::dropout::dropout(&layer_in, self.dropout);
            }
            let input = match x {
                SeqInput::OneHot(ids, classes) if l == 0 => SeqInput::OneHot(ids, classes),
                _ => SeqInput::Dense(&layer_in),
            };
            let mut outs = Vec::with_capacity(dirs);
            for (d, cell) in cells.iter().enumerate() {
                let k = l * dirs + d;
                let h0 = state.map_or_else(zeros, |s| s.h.select(0, k));
                let c0 = state.and_then(|s| s.c.as_ref()).map_or_else(zeros, |c| c.select(0, k));
                let need_sequence = sequence || l + 1 < self.layers.len();
                let (out, h, c) = self.run_direction(cell, input, h0, c0, d == 1, need_sequence);
                outs.push(out);
                h_n.push(h);
                c_n.push(c);
            }
            layer_in =
                if dirs == 1 { outs.pop().expect("one direction") } else { Tensor::cat(&[&outs[0], &outs[1]], 2) };
        }
        let stack = |v: &[Tensor]| Tensor::stack(&v.iter().collect::<Vec<_>>(), 0);
        let state = RnnState { h: stack(&h_n), c: (self.kind == RnnKind::Lstm).then(|| stack(&c_n)) };
        (layer_in, state)
    }

    /// One direction of one layer: outputs `(B, T, H)`, final `h` and `c`.
    fn run_direction(
        &self,
        cell: &Cell,
        x: SeqInput,
        h0: Tensor,
        c0: Tensor,
        reverse: bool,
        need_sequence: bool,
    ) -> (Tensor, Tensor, Tensor) {
        let (b, t, _) = x.dims().expect("checked by run");
        let hd = self.hidden;
        let b_hh_in_x = self.kind != RnnKind::Gru; // GRU keeps b_hn inside r ⊙ (·)
        // Both biases folded into one before touching the (·, ·, G·H) projection.
        let bias = match (&cell.b_ih, &cell.b_hh) {
            (Some(bi), Some(bh)) if b_hh_in_x => Some(bi.add(bh)),
            (Some(bi), _) => Some(bi.clone()),
            (None, Some(bh)) if b_hh_in_x => Some(bh.clone()),
            _ => None,
        };
        // One-hot ids are not f32: the initial state stands in for them.
        let int8 = cell.int8_for(match x {
            SeqInput::Dense(x) => x,
            SeqInput::OneHot(..) => &h0,
        });
        if self.kind == RnnKind::Lstm && int8.is_none() {
            // Time-major: every step's slice of the projection and of the output
            // gradient is one contiguous block. The whole recurrence is one op
            // (forward unrecorded, hand-written BPTT, fused cells).
            let xw = input_projection(cell, x, bias.as_ref(), true); // (T, B, 4H)
            if !need_sequence {
                // Only the final state is used: the op returns just that.
                let last = xw.try_lstm_scan_last(&cell.w_hh, &h0, &c0, reverse).unwrap_or_else(|e| panic!("{e}")); // (B, 2H)
                return (Tensor::zeros([b, 0, hd]), last.narrow(1, hd, hd), last.narrow(1, 0, hd));
            }
            let y = xw.try_lstm_scan(&cell.w_hh, &h0, &c0, reverse).unwrap_or_else(|e| panic!("{e}")); // (T, B, 2H): c, h
            let last = y.select(0, if reverse { 0 } else { t - 1 }); // (B, 2H)
            let out = y.narrow(2, hd, hd).permute(&[1, 0, 2]); // (B, T, H)
            return (out, last.narrow(1, hd, hd), last.narrow(1, 0, hd));
        }
        let xw = match (&int8, x) {
            // Dynamic int8: one integer product over every step's input.
            (Some(q), SeqInput::Dense(x)) => crate::quantize::linear_int8(x, &q.w_ih, bias.as_ref(), None),
            _ => input_projection(cell, x, bias.as_ref(), false),
        }; // (B, T, G·H)
        let w_hh_t = cell.w_hh.t(); // (H, G·H)
        let (mut h, mut c) = (h0, c0);
        let mut outs: Vec<Tensor> = vec![Tensor::zeros([0]); t];
        for step in 0..t {
            let ti = if reverse { t - 1 - step } else { step };
            let xt = xw.select(1, ti); // (B, G·H)
            let hw = match &int8 {
                Some(q) => crate::quantize::linear_int8(&h, &q.w_hh, None, None),
                None => h.matmul(&w_hh_t),
            }; // (B, G·H)
            match self.kind {
                RnnKind::Lstm => {
                    let gates = xt.add(&hw);
                    let i = gates.narrow(1, 0, hd).sigmoid();
                    let f = gates.narrow(1, hd, hd).sigmoid();
                    let g = gates.narrow(1, 2 * hd, hd).tanh();
                    let o = gates.narrow(1, 3 * hd, hd).sigmoid();
                    c = f.mul(&c).add(&i.mul(&g));
                    h = o.mul(&c.tanh());
                }
                RnnKind::Gru => {
                    let hw = match &cell.b_hh {
                        Some(bh) => hw.add(bh),
                        None => hw,
                    };
                    let r = xt.narrow(1, 0, hd).add(&hw.narrow(1, 0, hd)).sigmoid();
                    let z = xt.narrow(1, hd, hd).add(&hw.narrow(1, hd, hd)).sigmoid();
                    let n = xt.narrow(1, 2 * hd, hd).add(&r.mul(&hw.narrow(1, 2 * hd, hd))).tanh();
                    // h' = (1 - z) ⊙ n + z ⊙ h = n + z ⊙ (h - n)
                    h = n.add(&z.mul(&h.sub(&n)));
                }
                RnnKind::RnnTanh => h = xt.add(&hw).tanh(),
                RnnKind::RnnRelu => h = xt.add(&hw).relu(),
            }
            outs[ti] = h.clone();
        }
        let out = Tensor::stack(&outs.iter().collect::<Vec<_>>(), 1); // (B, T, H)
        debug_assert_eq!(out.dims(), [b, t, hd]);
        (out, h, c)
    }

    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        for (l, cells) in self.layers.iter().enumerate() {
            for (d, cell) in cells.iter().enumerate() {
                let sfx = if d == 1 { "_reverse" } else { "" };
                f(&format!("{prefix}weight_ih_l{l}{sfx}"), &cell.w_ih);
                f(&format!("{prefix}weight_hh_l{l}{sfx}"), &cell.w_hh);
                if let Some(bi) = &cell.b_ih {
                    f(&format!("{prefix}bias_ih_l{l}{sfx}"), bi);
                }
                if let Some(bh) = &cell.b_hh {
                    f(&format!("{prefix}bias_hh_l{l}{sfx}"), bh);
                }
            }
        }
    }
}

/// Every step's input contribution `x·W_ihᵀ + bias`, `(T, B, G·H)` when
/// `time_major`, else `(B, T, G·H)`: one gemm over all steps, or for one-hot
/// ids a row gather from `W_ihᵀ + bias` (see [`Recurrent::forward_one_hot`]).
fn input_projection(cell: &Cell, x: SeqInput, bias: Option<&Tensor>, time_major: bool) -> Tensor {
    if let SeqInput::OneHot(ids, classes) = x {
        let table = match bias {
            Some(b) => cell.w_ih.t().add(b),
            None => cell.w_ih.t().contiguous(),
        }; // (classes, G·H)
        if table.isfinite().all(&[0, 1], false).item() != 0.0 {
            let ids = if time_major { ids.t() } else { ids.clone() };
            let (d0, d1) = (ids.dims()[0], ids.dims()[1]);
            let flat = ids.contiguous().reshape([d0 * d1]);
            return table.index_select(0, &flat).reshape([d0, d1, table.dims()[1]]);
        }
        // A non-finite weight: the dense product, so that it spreads as there.
        return input_projection(cell, SeqInput::Dense(&ids.one_hot(classes)), bias, time_major);
    }
    let SeqInput::Dense(x) = x else { unreachable!() };
    let x = if time_major { x.permute(&[1, 0, 2]).contiguous() } else { x.clone() }; // (T, B, I) or (B, T, I)
    let xw = x.matmul(&cell.w_ih.t()); // one gemm
    match bias {
        Some(b) => xw.add(b),
        None => xw,
    }
}

impl Module for Recurrent {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_input(SeqInput::Dense(x))
    }

    /// Dynamic int8 of both projections of every cell (PyTorch's
    /// `quantize_dynamic` of `nn.LSTM`): the input projection as one integer
    /// product over all steps, the hidden one per step with `h` quantized
    /// per row; the gates stay `f32`. Inference only, as for `Linear`.
    fn set_dynamic_int8(&self, on: bool) -> bool {
        for cell in self.layers.iter().flatten() {
            let q = on.then(|| CellInt8 {
                w_ih: quantize_per_row(&cell.w_ih).into(),
                w_hh: quantize_per_row(&cell.w_hh).into(),
            });
            *cell.int8.write().expect("not poisoned") = q;
        }
        true
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        self.visit(prefix, f)
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn describe(&self) -> String {
        let input = self.layers[0][0].w_ih.dims()[1];
        let mut s = format!("{}({input} -> {}", self.kind.name(), self.hidden);
        if self.layers.len() > 1 {
            s.push_str(&format!(", {} layers", self.layers.len()));
        }
        if self.bidirectional {
            s.push_str(", bidirectional");
        }
        if !self.return_sequences {
            s.push_str(", last state");
        }
        s.push(')');
        s
    }
}

macro_rules! recurrent_layer {
    ($(#[$m:meta])* $name:ident, $kind:expr) => {
        $(#[$m])*
        pub struct $name(Recurrent);

        impl $name {
            /// One layer, unidirectional, with biases, returning every step's output.
            pub fn new(input_size: usize, hidden_size: usize) -> Self {
                $name(Recurrent::make($kind, input_size, hidden_size, 1, false, true))
            }

            /// Every option: stacked `layers`, `bidirectional`, `bias`.
            ///
            /// # Panics
            /// When a size is zero.
            pub fn with_layers(input_size: usize, hidden_size: usize, layers: usize, bidirectional: bool, bias: bool) -> Self {
                $name(Recurrent::make($kind, input_size, hidden_size, layers, bidirectional, bias))
            }

            /// Dropout on the outputs of every layer but the last, in training.
            ///
            /// # Panics
            /// When `p` is not in `[0, 1)`.
            pub fn dropout(mut self, p: f32) -> Self {
                assert!((0.0..1.0).contains(&p), "dropout must be in [0, 1), got {p}");
                self.0.dropout = p;
                self
            }

            /// `true` (default): `forward` returns `(B, T, D·H)`; `false`: the
            /// final hidden state `(B, D·H)` (Keras' `return_sequences=False`).
            pub fn return_sequences(mut self, on: bool) -> Self {
                self.0.return_sequences = on;
                self
            }
        }

        crate::module::delegate_module!($name, Recurrent);
    };
}

recurrent_layer!(
    /// Long short-term memory over `(B, T, I)` (PyTorch's `nn.LSTM` with
    /// `batch_first=True`; gates `i, f, g, o`).
    ///
    /// ```
    /// use firebrand_nn::{LSTM, Module};
    /// use firebrand_autograd::Tensor;
    /// let lstm = LSTM::new(8, 16);
    /// let x = Tensor::randn([4, 10, 8], 0.0, 1.0); // (B, T, I)
    /// let (out, state) = lstm.forward_with_state(&x, None);
    /// assert_eq!(out.dims(), &[4, 10, 16]);
    /// assert_eq!(state.h.dims(), &[1, 4, 16]);
    /// assert_eq!(state.c.unwrap().dims(), &[1, 4, 16]);
    /// ```
    LSTM,
    RnnKind::Lstm
);

recurrent_layer!(
    /// Gated recurrent unit over `(B, T, I)` (PyTorch's `nn.GRU`, batch first;
    /// gates `r, z, n`, `b_hn` inside the reset product as PyTorch).
    ///
    /// ```
    /// use firebrand_nn::{GRU, Module};
    /// use firebrand_autograd::Tensor;
    /// let gru = GRU::with_layers(8, 16, 2, true, true).return_sequences(false);
    /// assert_eq!(gru.forward(&Tensor::randn([4, 10, 8], 0.0, 1.0)).dims(), &[4, 32]);
    /// ```
    GRU,
    RnnKind::Gru
);

recurrent_layer!(
    /// Elman RNN with `tanh` over `(B, T, I)` (PyTorch's `nn.RNN`, batch
    /// first); [`RNN::relu`] builds the ReLU variant.
    RNN,
    RnnKind::RnnTanh
);

impl RNN {
    /// An Elman RNN with ReLU (`nonlinearity="relu"`).
    pub fn relu(input_size: usize, hidden_size: usize) -> Self {
        RNN(Recurrent::make(RnnKind::RnnRelu, input_size, hidden_size, 1, false, true))
    }
}
