//! Static-int8 convolution: the input quantized to `u8` with a calibrated
//! scale and zero point ([`InputQuant`]), the weight per output channel to
//! `i8`, the products summed exactly in `i32` on the int8 gemm
//! ([`crate::gemm::int8`], AMX-INT8 where the CPU has it), and the sums
//! dequantized with the bias and the activation in the gemm's store: a
//! convolution, its bias and its ReLU as one pass.
//!
//! Layout. The batch is cut into chunks of a few images, one task each.
//! A chunk is quantized channels-last (`(n, H, W, C)` bytes), so that each
//! kernel tap of an output position is `C` contiguous bytes; its rows
//! (one per output position, `kh·kw·C` bytes in tap-major order, padding
//! as the zero point) go through one gemm against the weight in the same
//! tap-major order ([`quantize_conv_weight`]), and the `(positions,
//! Cout)` result is written back as `(N, Cout, Ho, Wo)`.
//!
//! Values past the calibrated range saturate (static quantization's
//! trade). A NaN or an infinity in the input makes every output whose
//! window covers it NaN, not a saturated number.
//!
//! ```
//! use firebrand_ops::conv_int8::{ConvGeometry, InputQuant, conv2d_u8i8, quantize_conv_weight};
//! let x = [0.0f32, 1.0, 2.0, 3.0]; // (N = 1, C = 1, 2, 2)
//! let w = [1.0f32, 1.0, 1.0, 1.0]; // (Cout = 1, Cin = 1, 2, 2)
//! let wq = quantize_conv_weight(&w, 1, 1, 2, 2);
//! let iq = InputQuant::from_range(0.0, 3.0);
//! let y = conv2d_u8i8(&x, [1, 1, 2, 2], &ConvGeometry::new((2, 2)), iq, &wq, None, None);
//! assert!((y[0] - 6.0).abs() < 0.05);
//! ```

pub use crate::gemm::int8::InputQuant;
use crate::gemm::int8::{QuantizedRows, QuantizedWeight, gemm_u8i8_act};
use crate::parallel::{SendPtr, par_for};
use firebrand_tensor::op::{UnaryOp, Window2d};
use std::cell::RefCell;

/// A convolution's window: kernel, stride, dilation and the padding of each
/// side (`[top, bottom, left, right]`; Keras' uneven "same" padding too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Stride along height and width.
    pub stride: (usize, usize),
    /// Spacing between kernel taps.
    pub dilation: (usize, usize),
    /// Zero padding: top, bottom, left, right.
    pub pad: [usize; 4],
}

impl ConvGeometry {
    /// A dense window of stride 1 and no padding.
    pub fn new(kernel: (usize, usize)) -> Self {
        ConvGeometry { kernel, stride: (1, 1), dilation: (1, 1), pad: [0; 4] }
    }

    /// The output height and width for an input of `(h, w)`, or `None`
    /// when the dilated kernel does not fit or a stride or a kernel size is 0.
    pub fn output_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let one = |len: usize, k: usize, s: usize, before: usize, after: usize, d: usize| -> Option<usize> {
            let span = d * k.checked_sub(1)? + 1;
            let padded = len + before + after;
            (s > 0 && padded >= span).then(|| (padded - span) / s + 1)
        };
        let [t, b, l, r] = self.pad;
        Some((
            one(h, self.kernel.0, self.stride.0, t, b, self.dilation.0)?,
            one(w, self.kernel.1, self.stride.1, l, r, self.dilation.1)?,
        ))
    }

    /// The input position under tap `k` of output `o` along one dim, if
    /// inside the image.
    #[inline]
    fn src(o: usize, k: usize, stride: usize, dil: usize, before: usize, len: usize) -> Option<usize> {
        let p = (o * stride + k * dil) as isize - before as isize;
        (0..len as isize).contains(&p).then_some(p as usize)
    }
}

/// The weight `(Cout, Cin, kh, kw)` (PyTorch's layout) quantized per output
/// channel, its depth reordered tap-major (`(Cout, kh, kw, Cin)`, the
/// order of [`conv2d_u8i8`]'s rows).
///
/// # Panics
/// When `w` holds fewer than `Cout·Cin·kh·kw` values.
pub fn quantize_conv_weight(w: &[f32], cout: usize, cin: usize, kh: usize, kw: usize) -> QuantizedWeight {
    let k = cin * kh * kw;
    assert!(w.len() >= cout * k, "quantize_conv_weight: {} values for ({cout}, {cin}, {kh}, {kw})", w.len());
    QuantizedWeight::from_f32(&to_tap_major(&w[..cout * k], cout, cin, kh * kw), cout, k)
}

/// A weight already in `i8`, PyTorch's layout `(Cout, Cin, kh, kw)`, with
/// its per-channel scales (a saved model's), in [`conv2d_u8i8`]'s order.
///
/// # Panics
/// When the lengths do not match the shape.
pub fn conv_weight_from_i8(
    data: &[i8],
    scale: Vec<f32>,
    cout: usize,
    cin: usize,
    kh: usize,
    kw: usize,
) -> QuantizedWeight {
    assert_eq!(
        data.len(),
        cout * cin * kh * kw,
        "conv_weight_from_i8: {} values for ({cout}, {cin}, {kh}, {kw})",
        data.len()
    );
    QuantizedWeight::from_i8(to_tap_major(data, cout, cin, kh * kw), scale, cout, cin * kh * kw)
}

/// The integers of a weight made by [`quantize_conv_weight`] back in
/// PyTorch's layout `(Cout, Cin, kh, kw)`.
pub fn conv_weight_to_i8(w: &QuantizedWeight, cin: usize, kh: usize, kw: usize) -> Vec<i8> {
    let taps = kh * kw;
    assert_eq!(w.k, cin * taps, "conv_weight_to_i8: depth {} for ({cin}, {kh}, {kw})", w.k);
    let mut out = vec![0i8; w.n * w.k];
    for o in 0..w.n {
        for t in 0..taps {
            for c in 0..cin {
                out[(o * cin + c) * taps + t] = w.data[(o * taps + t) * cin + c];
            }
        }
    }
    out
}

/// `(Cout, Cin, taps)` → `(Cout, taps, Cin)`.
fn to_tap_major<T: Copy + Default>(w: &[T], cout: usize, cin: usize, taps: usize) -> Vec<T> {
    let mut out = vec![T::default(); w.len()];
    for o in 0..cout {
        for c in 0..cin {
            for t in 0..taps {
                out[(o * taps + t) * cin + c] = w[(o * cin + c) * taps + t];
            }
        }
    }
    out
}

/// A task's buffers, reused across calls.
struct Scratch {
    /// The chunk quantized channels-last `(n, H, W, C)`.
    image: Vec<u8>,
    /// Whether each input pixel of the chunk was finite (only built when one was not).
    bad: Vec<bool>,
    /// The chunk bordered with the zero point (`(n, H + pads, W + pads, C)`).
    padded: Vec<u8>,
    /// The chunk's rows.
    rows: QuantizedRows,
    /// The gemm's output `(positions, Cout)`.
    out: Vec<f32>,
    /// One image's pooled output `(pooled positions, Cout)`.
    pooled: Vec<f32>,
    /// One image's last output flattened `(C·H·W)` for the head.
    flat: Vec<f32>,
    /// The head's rows (one per image).
    head_rows: QuantizedRows,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            image: Vec::new(),
            bad: Vec::new(),
            padded: Vec::new(),
            rows: QuantizedRows::new(),
            out: Vec::new(),
            pooled: Vec::new(),
            flat: Vec::new(),
            head_rows: QuantizedRows::new(),
        })
    };
}

/// Output positions per task (a chunk's rows, bytes and sums stay in L2).
const CHUNK_ROWS: usize = 1024;

/// `act(conv(x, W) + bias)` with `x` `(N, C, H, W)` quantized by `iq` and
/// the weight from [`quantize_conv_weight`] (`Cout` channels, depth
/// `kh·kw·C`): `(N, Cout, Ho, Wo)`. Groups are not supported (one group).
///
/// # Panics
/// When `x` holds fewer than `N·C·H·W` values, the window does not fit, the
/// weight's depth is not `kh·kw·C`, or the bias is shorter than `Cout`.
pub fn conv2d_u8i8(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    geo: &ConvGeometry,
    iq: InputQuant,
    wq: &QuantizedWeight,
    bias: Option<&[f32]>,
    act: Option<UnaryOp>,
) -> Vec<f32> {
    conv2d_u8i8_pooled(x, [n, c, h, w], geo, iq, wq, bias, act, None)
}

/// [`conv2d_u8i8`] followed by max pooling over `pool` (`(N, Cout, Hp, Wp)`),
/// pooled in the same pass as each chunk's sums come out of the gemm, so
/// the convolution's full output is never written: the fused form of a
/// convolution, its bias, its activation and a `MaxPool2d`. A NaN wins
/// its window, as in the `f32` max pool.
///
/// # Panics
/// As [`conv2d_u8i8`], and when the pooling window does not fit the
/// convolution's output.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_u8i8_pooled(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    geo: &ConvGeometry,
    iq: InputQuant,
    wq: &QuantizedWeight,
    bias: Option<&[f32]>,
    act: Option<UnaryOp>,
    pool: Option<&Window2d>,
) -> Vec<f32> {
    let stage = ConvStage { weight: wq, input: iq, geo: *geo, bias, act, pool: pool.copied() };
    conv_chain_u8i8(x, [n, c, h, w], &[stage], None).0
}

/// One convolution of a static-int8 chain ([`conv_chain_u8i8`]).
#[derive(Debug, Clone, Copy)]
pub struct ConvStage<'a> {
    /// The weight from [`quantize_conv_weight`] (tap-major depth).
    pub weight: &'a QuantizedWeight,
    /// How this stage's input maps to `u8`.
    pub input: InputQuant,
    /// The window, its padding resolved for this stage's input size.
    pub geo: ConvGeometry,
    /// `(Cout,)`.
    pub bias: Option<&'a [f32]>,
    /// Applied as the sums are dequantized.
    pub act: Option<UnaryOp>,
    /// A max pool after the activation.
    pub pool: Option<Window2d>,
}

/// The fully connected layer after a flatten that ends a chain.
#[derive(Debug, Clone, Copy)]
pub struct HeadStage<'a> {
    /// `(n, C·H·W)` per output channel, the last stage's output flattened channel-major.
    pub weight: &'a QuantizedWeight,
    /// How its input maps to `u8`.
    pub input: InputQuant,
    /// `(n,)`.
    pub bias: Option<&'a [f32]>,
    /// Applied as the sums are dequantized.
    pub act: Option<UnaryOp>,
}

/// A statically quantized CNN's convolutions (each with its activation and
/// max pool) and an optional flatten + fully connected head, run chunk by
/// chunk of whole images: between two layers the activations stay in the
/// chunk's cache as `u8` bytes, channels-last, quantized once with the next
/// layer's input parameters (PyTorch keeps quantized tensors between
/// quantized modules the same way). The values equal those of the layers
/// run one by one ([`conv2d_u8i8_pooled`], then the head's
/// [`gemm_u8i8_act`](crate::gemm::int8::gemm_u8i8_act) on its rows
/// quantized by `head.input`), bit for bit; NaN and infinities make the
/// outputs that depend on them NaN. Returns the output and its dims:
/// `(N, Cout, Hp, Wp)` of the last stage, or `(N, n)` with a head.
///
/// # Panics
/// When there is no stage, the input is shorter than its dims, a stage's
/// window or pool does not fit, a weight's depth does not match its input,
/// or a bias is short.
pub fn conv_chain_u8i8(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    stages: &[ConvStage],
    head: Option<&HeadStage>,
) -> (Vec<f32>, Vec<usize>) {
    assert!(!stages.is_empty(), "conv chain (int8): no stage");
    assert!(x.len() >= n * c * h * w, "conv chain (int8): {} values for input [{n}, {c}, {h}, {w}]", x.len());
    // Each stage's input (C, H, W), conv output (Ho, Wo) and pooled output (Hp, Wp).
    let mut shapes = Vec::with_capacity(stages.len());
    let (mut ci, mut hi, mut wi) = (c, h, w);
    for (i, st) in stages.iter().enumerate() {
        let (kh, kw) = st.geo.kernel;
        assert_eq!(
            st.weight.k,
            kh * kw * ci,
            "conv2d (int8), stage {i}: weight depth {} for input channels {ci} and kernel {kh}x{kw}",
            st.weight.k
        );
        assert!(
            st.bias.is_none_or(|b| b.len() >= st.weight.n),
            "conv2d (int8), stage {i}: bias shorter than {}",
            st.weight.n
        );
        let (ho, wo) = st.geo.output_size(hi, wi).unwrap_or_else(|| {
            panic!("conv2d (int8), stage {i}: window {:?} does not fit input [{n}, {ci}, {hi}, {wi}]", st.geo)
        });
        let (hp, wp) = match &st.pool {
            Some(win) => win
                .output_size(ho, wo)
                .unwrap_or_else(|| panic!("conv2d (int8), stage {i}: pooling {win:?} does not fit ({ho}, {wo})")),
            None => (ho, wo),
        };
        shapes.push(((ci, hi, wi), (ho, wo), (hp, wp)));
        (ci, hi, wi) = (st.weight.n, hp, wp);
    }
    let flat = ci * hi * wi;
    let dims = match head {
        Some(hd) => {
            assert_eq!(
                hd.weight.k, flat,
                "linear (int8): input [{n}, {flat}] (flattened [{ci}, {hi}, {wi}]) for a weight ({}, {})",
                hd.weight.n, hd.weight.k
            );
            assert!(hd.bias.is_none_or(|b| b.len() >= hd.weight.n), "linear (int8): bias shorter than {}", hd.weight.n);
            vec![n, hd.weight.n]
        }
        None => vec![n, ci, hi, wi],
    };
    let per_image = dims[1..].iter().product::<usize>();
    let mut out = firebrand_tensor::pool::take_f32(n * per_image);
    if out.is_empty() {
        return (out, dims);
    }
    let plane0 = shapes[0].1.0 * shapes[0].1.1;
    let per = (CHUNK_ROWS / plane0.max(1)).max(1);
    let pool_taps: Vec<Option<PoolTaps>> = stages
        .iter()
        .zip(&shapes)
        .map(|(st, &(_, out, pooled))| st.pool.as_ref().map(|w| PoolTaps::new(w, out, pooled)))
        .collect();
    let optr = SendPtr(out.as_mut_ptr());
    par_for(n.div_ceil(per), |t| {
        let (i0, i1) = (t * per, (t * per + per).min(n));
        let ni = i1 - i0;
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            let mut any_bad =
                quantize_channels_last(&x[i0 * c * h * w..i1 * c * h * w], ni, c, h * w, stages[0].input, s);
            for (i, st) in stages.iter().enumerate() {
                let ((ci, hi, wi), (ho, wo), (hp, wp)) = shapes[i];
                let cout = st.weight.n;
                build_rows(s, (ni, ci, hi, wi), (ho, wo), &st.geo, st.input, any_bad);
                s.out.resize(s.rows.m * cout, 0.0);
                gemm_u8i8_act(&s.rows, st.weight, st.bias, st.act, &mut s.out);
                let (plane, pplane) = (ho * wo, hp * wp);
                // What follows: the next stage's bytes, the head's rows, or the output.
                let next = stages.get(i + 1).map(|nx| nx.input);
                if next.is_some() {
                    s.image.resize(ni * pplane * cout, 0);
                    any_bad = false;
                } else if let Some(hd) = head {
                    s.head_rows.reset_static(ni, flat, hd.input);
                }
                for img in 0..ni {
                    let sums = &s.out[img * plane * cout..(img + 1) * plane * cout];
                    // This image's (positions, Cout), pooled when the stage pools.
                    let vals: &[f32] = match &pool_taps[i] {
                        Some(taps) => {
                            s.pooled.resize(pplane * cout, 0.0);
                            max_pool_channels_last(sums, &mut s.pooled, wo, (hp, wp), cout, taps);
                            &s.pooled
                        }
                        None => sums,
                    };
                    if let Some(iq) = next {
                        let dst = &mut s.image[img * pplane * cout..(img + 1) * pplane * cout];
                        if !crate::gemm::int8::quantize_fixed(vals, dst, iq) {
                            if !any_bad {
                                // The first non-finite value of this stage: the flags start clear.
                                s.bad.clear();
                                s.bad.resize(ni * pplane, false);
                                any_bad = true;
                            }
                            for (p, px) in vals.chunks_exact(cout).enumerate() {
                                s.bad[img * pplane + p] = px.iter().any(|v| !v.is_finite());
                            }
                        }
                    } else if let Some(hd) = head {
                        // Flattened channel-major, as `Flatten` of (C, H, W).
                        s.flat.resize(flat, 0.0);
                        to_channels_first(vals, &mut s.flat, pplane, cout);
                        let row = &mut s.head_rows.data[img * flat..(img + 1) * flat];
                        if !crate::gemm::int8::quantize_fixed(&s.flat, row, hd.input) {
                            s.head_rows.scale[img] = f32::NAN;
                        }
                    } else {
                        // SAFETY: image i0 + img of `out` belongs to this task alone.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut(optr.get().add((i0 + img) * per_image), per_image)
                        };
                        to_channels_first(vals, dst, pplane, cout);
                    }
                }
            }
            if let Some(hd) = head {
                // SAFETY: rows i0..i1 of `out` belong to this task alone.
                let dst = unsafe { std::slice::from_raw_parts_mut(optr.get().add(i0 * per_image), ni * per_image) };
                gemm_u8i8_act(&s.head_rows, hd.weight, hd.bias, hd.act, dst);
            }
        });
    });
    (out, dims)
}

/// A max pool's taps, found once per stage: for each pooled row (column),
/// the input row (column) under each of its `kh` (`kw`) taps, `None` in
/// the padding.
struct PoolTaps {
    kernel: (usize, usize),
    /// `(Hp, kh)`.
    rows: Vec<Option<usize>>,
    /// `(Wp, kw)`.
    cols: Vec<Option<usize>>,
}

impl PoolTaps {
    fn new(win: &Window2d, (ho, wo): (usize, usize), (hp, wp): (usize, usize)) -> Self {
        let (kh, kw) = win.kernel;
        let rows = (0..hp)
            .flat_map(|py| {
                (0..kh).map(move |ki| ConvGeometry::src(py, ki, win.stride.0, win.dilation.0, win.padding.0, ho))
            })
            .collect();
        let cols = (0..wp)
            .flat_map(|px| {
                (0..kw).map(move |kj| ConvGeometry::src(px, kj, win.stride.1, win.dilation.1, win.padding.1, wo))
            })
            .collect();
        PoolTaps { kernel: win.kernel, rows, cols }
    }

    /// The output positions (`iy·Wo + ix`) under pooled position `(py, px)`.
    #[inline(always)]
    fn under(&self, py: usize, px: usize, wo: usize) -> impl Iterator<Item = usize> + '_ {
        let (kh, kw) = self.kernel;
        let cols = &self.cols[px * kw..(px + 1) * kw];
        self.rows[py * kh..(py + 1) * kh]
            .iter()
            .flatten()
            .flat_map(move |&iy| cols.iter().flatten().map(move |&ix| iy * wo + ix))
    }
}

/// Max pooling of one image's `(Ho·Wo, Cout)` values into `(Hp·Wp, Cout)`:
/// padded cells never win, a larger value replaces the maximum (ties keep
/// the first), and a NaN always wins.
fn max_pool_channels_last(
    src: &[f32],
    dst: &mut [f32],
    wo: usize,
    (hp, wp): (usize, usize),
    cout: usize,
    taps: &PoolTaps,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd512::available() {
        // SAFETY: AVX-512F is available.
        return unsafe { max_pool_channels_last_avx512(src, dst, wo, (hp, wp), cout, taps) };
    }
    for py in 0..hp {
        for px in 0..wp {
            let acc = &mut dst[(py * wp + px) * cout..(py * wp + px + 1) * cout];
            acc.fill(f32::NEG_INFINITY);
            for at in taps.under(py, px, wo) {
                for (m, &v) in acc.iter_mut().zip(&src[at * cout..(at + 1) * cout]) {
                    // NaN wins (and, once taken, stays).
                    *m = if v > *m || v.is_nan() { v } else { *m };
                }
            }
        }
    }
}

/// [`max_pool_channels_last`] 16 channels at a time (the same values).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_pool_channels_last_avx512(
    src: &[f32],
    dst: &mut [f32],
    wo: usize,
    (hp, wp): (usize, usize),
    cout: usize,
    taps: &PoolTaps,
) {
    use std::arch::x86_64::*;
    for py in 0..hp {
        for px in 0..wp {
            for c0 in (0..cout).step_by(16) {
                let m: __mmask16 = if cout - c0 >= 16 { 0xffff } else { (1u16 << (cout - c0)) - 1 };
                let (mut acc, mut nan) = (_mm512_set1_ps(f32::NEG_INFINITY), 0 as __mmask16);
                for at in taps.under(py, px, wo) {
                    // SAFETY: the masked load reads channels c0.. of an output position inside `src`.
                    let v = unsafe { _mm512_maskz_loadu_ps(m, src.as_ptr().add(at * cout + c0)) };
                    acc = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, acc), acc, v);
                    nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                }
                acc = _mm512_mask_blend_ps(nan, acc, _mm512_set1_ps(f32::NAN));
                // SAFETY: the masked store writes channels c0.. of a pooled position inside `dst`.
                unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr().add((py * wp + px) * cout + c0), m, acc) };
            }
        }
    }
}

/// One image's `(HW, Cout)` values into `(Cout, HW)`.
fn to_channels_first(sums: &[f32], dst: &mut [f32], plane: usize, cout: usize) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd512::available() {
        // SAFETY: AVX-512F is available.
        return unsafe { to_channels_first_avx512(sums, dst, plane, cout) };
    }
    for (p, row) in sums.chunks_exact(cout).enumerate() {
        for (o, &v) in row.iter().enumerate() {
            dst[o * plane + p] = v;
        }
    }
}

/// [`to_channels_first`] gathering 16 positions of a channel at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn to_channels_first_avx512(sums: &[f32], dst: &mut [f32], plane: usize, cout: usize) {
    use std::arch::x86_64::*;
    let idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(cout as i32),
    );
    for p in (0..plane).step_by(16) {
        let m: __mmask16 = if plane - p >= 16 { 0xffff } else { (1u16 << (plane - p)) - 1 };
        for o in 0..cout {
            // SAFETY: the masked gather reads positions p.. of channel o of
            // `sums` (`plane·cout` values); the store writes within `dst`.
            unsafe {
                let v = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, idx, sums.as_ptr().add(p * cout + o));
                _mm512_mask_storeu_ps(dst.as_mut_ptr().add(o * plane + p), m, v);
            }
        }
    }
}

/// Quantizes `n` images `(C, HW)` into `s.image` `(n, HW, C)`; whether any
/// value was NaN or infinite (then `s.bad` marks those pixels).
fn quantize_channels_last(x: &[f32], n: usize, c: usize, hw: usize, iq: InputQuant, s: &mut Scratch) -> bool {
    s.image.resize(n * hw * c, 0);
    let mut finite = true;
    for img in 0..n {
        let (src, dst) = (&x[img * c * hw..(img + 1) * c * hw], &mut s.image[img * hw * c..(img + 1) * hw * c]);
        #[cfg(target_arch = "x86_64")]
        if crate::simd512::available() {
            // SAFETY: AVX-512F/BW are available; the slices are one image each.
            finite &= unsafe { channels_last_avx512(src, dst, c, hw, iq) };
            continue;
        }
        finite &= channels_last(src, dst, c, hw, iq);
    }
    if !finite {
        s.bad.clear();
        s.bad.resize(n * hw, false);
        for img in 0..n {
            for ch in 0..c {
                let src = &x[(img * c + ch) * hw..(img * c + ch + 1) * hw];
                for (p, v) in src.iter().enumerate() {
                    s.bad[img * hw + p] |= !v.is_finite();
                }
            }
        }
    }
    !finite
}

/// One image `(C, HW)` into `(HW, C)` bytes, value by value; whether all were finite.
fn channels_last(src: &[f32], dst: &mut [u8], c: usize, hw: usize, iq: InputQuant) -> bool {
    let inv = 1.0 / iq.scale;
    for ch in 0..c {
        for (p, &v) in src[ch * hw..(ch + 1) * hw].iter().enumerate() {
            dst[p * c + ch] = iq.quantize(v, inv);
        }
    }
    src.iter().all(|v| v.is_finite())
}

/// [`channels_last`] with AVX-512 (the same bytes): 16 pixels at a time
/// when `C` is 1, 16 channels of one pixel (a gather) when `C` is a
/// multiple of 16, else value by value with fused multiply-adds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,fma")]
unsafe fn channels_last_avx512(src: &[f32], dst: &mut [u8], c: usize, hw: usize, iq: InputQuant) -> bool {
    use std::arch::x86_64::*;
    if c == 1 {
        return crate::gemm::int8::quantize_fixed(src, dst, iq);
    }
    if c.is_multiple_of(16) {
        let idx = _mm512_mullo_epi32(
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            _mm512_set1_epi32(hw as i32),
        );
        let mut bad: __mmask16 = 0;
        for p in 0..hw {
            for c0 in (0..c).step_by(16) {
                // SAFETY: the gather reads channels c0..c0+16 of pixel p, and
                // the store writes that pixel's 16 bytes, within the image.
                unsafe {
                    let v = _mm512_i32gather_ps::<4>(idx, src.as_ptr().add(c0 * hw + p));
                    let (q, b) = crate::gemm::int8::quantize16(v, iq);
                    bad |= b;
                    _mm512_mask_cvtepi32_storeu_epi8(dst.as_mut_ptr().add(p * c + c0) as *mut i8, 0xffff, q);
                }
            }
        }
        return bad == 0;
    }
    channels_last(src, dst, c, hw, iq)
}

/// The chunk's rows from `s.image`: one per output position, `kh·kw·C`
/// bytes in tap-major order, the zero point where a tap is in the padding.
/// A row whose window covers a non-finite input gets a NaN scale.
fn build_rows(
    s: &mut Scratch,
    (n, c, h, w): (usize, usize, usize, usize),
    (ho, wo): (usize, usize),
    geo: &ConvGeometry,
    iq: InputQuant,
    any_bad: bool,
) {
    let (kh, kw) = geo.kernel;
    let k = kh * kw * c;
    let m = n * ho * wo;
    let rows = &mut s.rows;
    rows.reset_static(m, k, iq);
    if geo.dilation == (1, 1) && !any_bad {
        // Each kernel row of taps is `kw·C` contiguous bytes of one image
        // row: copied from the image bordered with the zero point.
        let [t, b, l, r] = geo.pad;
        let (hp, wp) = (h + t + b, w + l + r);
        s.padded.clear();
        // 16 bytes of slack after the image and the rows: short runs are
        // copied 16 bytes at a time (below).
        s.padded.resize(n * hp * wp * c + 16, iq.zero);
        rows.data.resize(m * k + 16, 0);
        for img in 0..n {
            for y in 0..h {
                let from = ((img * h + y) * w) * c;
                let to = ((img * hp + y + t) * wp + l) * c;
                s.padded[to..to + w * c].copy_from_slice(&s.image[from..from + w * c]);
            }
        }
        let run = kw * c;
        for img in 0..n {
            for oy in 0..ho {
                for ox in 0..wo {
                    let r0 = ((img * ho + oy) * wo + ox) * k;
                    for ki in 0..kh {
                        let at = ((img * hp + oy * geo.stride.0 + ki) * wp + ox * geo.stride.1) * c;
                        let to = r0 + ki * run;
                        if run < 16 {
                            // 16 bytes at once: the bytes past the run land where
                            // later runs (or the slack) are written, in order.
                            let v: [u8; 16] = s.padded[at..at + 16].try_into().expect("16 bytes");
                            rows.data[to..to + 16].copy_from_slice(&v);
                        } else {
                            copy_bytes(&mut rows.data[to..to + run], &s.padded[at..at + run]);
                        }
                    }
                }
            }
        }
        rows.data.truncate(m * k);
        return;
    }
    // The source column of each (output column, tap column), if inside.
    let cols: Vec<Option<usize>> = (0..wo)
        .flat_map(|ox| (0..kw).map(move |kj| ConvGeometry::src(ox, kj, geo.stride.1, geo.dilation.1, geo.pad[2], w)))
        .collect();
    for img in 0..n {
        let src = &s.image[img * h * w * c..(img + 1) * h * w * c];
        for oy in 0..ho {
            for ox in 0..wo {
                let r = (img * ho + oy) * wo + ox;
                let row = &mut rows.data[r * k..(r + 1) * k];
                let mut bad = false;
                for ki in 0..kh {
                    let iy = ConvGeometry::src(oy, ki, geo.stride.0, geo.dilation.0, geo.pad[0], h);
                    for kj in 0..kw {
                        let t = ki * kw + kj;
                        match (iy, cols[ox * kw + kj]) {
                            (Some(iy), Some(ix)) => {
                                let at = (iy * w + ix) * c;
                                copy_bytes(&mut row[t * c..(t + 1) * c], &src[at..at + c]);
                                bad |= any_bad && s.bad[img * h * w + iy * w + ix];
                            }
                            _ => row[t * c..(t + 1) * c].fill(iq.zero),
                        }
                    }
                }
                if bad {
                    rows.scale[r] = f32::NAN;
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for the few bytes of one tap or kernel row:
/// byte by byte when short, 16 at a time when a multiple of 16, without a
/// `memcpy` call.
#[inline(always)]
fn copy_bytes(dst: &mut [u8], src: &[u8]) {
    match src.len() {
        n if n < 16 => dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s),
        n if n.is_multiple_of(16) => {
            for (d, s) in dst.chunks_exact_mut(16).zip(src.chunks_exact(16)) {
                d.copy_from_slice(s);
            }
        }
        _ => dst.copy_from_slice(src),
    }
}

/// The definition, loop by loop, for the tests: each input value quantized
/// by `iq` (the zero point in the padding), exact `i32` sums against the
/// weight's integers, dequantized by the int8 gemm's formula.
pub fn conv2d_u8i8_reference(
    x: &[f32],
    [n, c, h, w]: [usize; 4],
    geo: &ConvGeometry,
    iq: InputQuant,
    wq: &QuantizedWeight,
    bias: Option<&[f32]>,
    act: Option<UnaryOp>,
) -> Vec<f32> {
    let (kh, kw) = geo.kernel;
    let (ho, wo) = geo.output_size(h, w).expect("the window fits");
    let inv = 1.0 / iq.scale;
    let mut out = vec![0.0f32; n * wq.n * ho * wo];
    for img in 0..n {
        for o in 0..wq.n {
            for oy in 0..ho {
                for ox in 0..wo {
                    let (mut acc, mut finite) = (0i32, true);
                    for ki in 0..kh {
                        for kj in 0..kw {
                            let iy = ConvGeometry::src(oy, ki, geo.stride.0, geo.dilation.0, geo.pad[0], h);
                            let ix = ConvGeometry::src(ox, kj, geo.stride.1, geo.dilation.1, geo.pad[2], w);
                            for ch in 0..c {
                                let q = match (iy, ix) {
                                    (Some(iy), Some(ix)) => {
                                        let v = x[((img * c + ch) * h + iy) * w + ix];
                                        finite &= v.is_finite();
                                        iq.quantize(v, inv)
                                    }
                                    _ => iq.zero,
                                };
                                acc += q as i32 * wq.data[o * wq.k + (ki * kw + kj) * c + ch] as i32;
                            }
                        }
                    }
                    let exact = acc - iq.zero as i32 * wq.row_sum[o];
                    let scale = if finite { iq.scale } else { f32::NAN };
                    let v = (scale * wq.scale[o]).mul_add(exact as f32, bias.map_or(0.0, |b| b[o]));
                    out[((img * wq.n + o) * ho + oy) * wo + ox] = v;
                }
            }
        }
    }
    if let Some(op) = act {
        crate::unary::map_in_place(op, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::int8::Kernel;
    use crate::test_data::uniform as data;

    /// Awkward shapes: one pixel, odd sizes, uneven padding, stride 2,
    /// dilation, one input channel, more images than a chunk. The kernel
    /// equals the loop-by-loop definition exactly on every int8 kernel, and
    /// stays within the quantization steps of the `f32` convolution.
    #[test]
    fn kernel_equals_the_definition_and_is_close_to_f32() {
        let cases: [([usize; 4], usize, ConvGeometry); 7] = [
            ([2, 32, 7, 9], 20, ConvGeometry { pad: [1, 0, 2, 1], ..ConvGeometry::new((3, 3)) }),
            ([1, 1, 1, 1], 1, ConvGeometry::new((1, 1))),
            ([2, 3, 5, 7], 4, ConvGeometry { pad: [1, 1, 1, 1], ..ConvGeometry::new((3, 3)) }),
            ([3, 1, 28, 28], 5, ConvGeometry { pad: [1, 1, 1, 1], ..ConvGeometry::new((3, 3)) }),
            ([2, 6, 9, 8], 3, ConvGeometry { stride: (2, 2), pad: [0, 1, 1, 0], ..ConvGeometry::new((3, 2)) }),
            ([1, 2, 11, 10], 7, ConvGeometry { dilation: (2, 3), pad: [2, 2, 3, 3], ..ConvGeometry::new((3, 3)) }),
            ([9, 33, 14, 14], 17, ConvGeometry { pad: [1, 1, 1, 1], ..ConvGeometry::new((3, 3)) }),
        ];
        for (t, ([n, c, h, w], cout, geo)) in cases.into_iter().enumerate() {
            let x: Vec<f32> = data(n * c * h * w, t as u32 + 1).iter().map(|v| 2.0 * v + 0.3).collect();
            let (kh, kw) = geo.kernel;
            let wf = data(cout * c * kh * kw, t as u32 + 50);
            let b = data(cout, t as u32 + 90);
            let iq = InputQuant::from_range(-1.7, 2.3);
            let mut wq = quantize_conv_weight(&wf, cout, c, kh, kw);
            for act in [None, Some(UnaryOp::Relu)] {
                let want = conv2d_u8i8_reference(&x, [n, c, h, w], &geo, iq, &wq, Some(&b), act);
                for kernel in Kernel::ALL {
                    if !kernel.available() {
                        eprintln!("SKIPPED: the {} kernel (not on this CPU)", kernel.name());
                        continue;
                    }
                    wq.set_kernel(kernel);
                    let got = conv2d_u8i8(&x, [n, c, h, w], &geo, iq, &wq, Some(&b), act);
                    assert_eq!(got, want, "case {t} on {} with {act:?}", kernel.name());
                }
            }
            // Close to the f32 convolution: within half a step of every
            // product's input and weight.
            let (ho, wo) = geo.output_size(h, w).unwrap();
            let got = conv2d_u8i8(&x, [n, c, h, w], &geo, iq, &wq, Some(&b), None);
            for img in 0..n {
                for o in 0..cout {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let mut f = b[o] as f64;
                            for ch in 0..c {
                                for ki in 0..kh {
                                    for kj in 0..kw {
                                        let iy = ConvGeometry::src(oy, ki, geo.stride.0, geo.dilation.0, geo.pad[0], h);
                                        let ix = ConvGeometry::src(ox, kj, geo.stride.1, geo.dilation.1, geo.pad[2], w);
                                        if let (Some(iy), Some(ix)) = (iy, ix) {
                                            f += x[((img * c + ch) * h + iy) * w + ix] as f64
                                                * wf[((o * c + ch) * kh + ki) * kw + kj] as f64;
                                        }
                                    }
                                }
                            }
                            let taps = (c * kh * kw) as f32;
                            let step = (iq.scale * 1.0 + wq.scale[o] * 2.3) * 0.5 * taps + 1e-4;
                            let g = got[((img * cout + o) * ho + oy) * wo + ox];
                            assert!((g as f64 - f).abs() <= step as f64, "case {t} ({img},{o},{oy},{ox}): {g} vs {f}");
                        }
                    }
                }
            }
        }
    }

    /// Values past the range saturate; NaN and ∞ make exactly the outputs
    /// whose windows cover them NaN (with one input channel and with 16,
    /// the vector paths' two layouts).
    #[test]
    fn out_of_range_saturates_and_non_finite_inputs_give_nan() {
        let geo = ConvGeometry { pad: [1, 1, 1, 1], ..ConvGeometry::new((3, 3)) };
        let iq = InputQuant::from_range(0.0, 1.0);
        for c in [1, 16] {
            let wq = quantize_conv_weight(&vec![1.0; 9 * c], 1, c, 3, 3);
            let mut x = vec![5.0f32; 25 * c]; // (1, c, 5, 5), all past the range
            let y = conv2d_u8i8(&x, [1, c, 5, 5], &geo, iq, &wq, None, None);
            assert!((y[12] - 9.0 * c as f32).abs() < 0.05 * c as f32, "saturates at the range's top: {}", y[12]);
            // Pixel 0 of the last channel and pixel 24 of the first.
            x[25 * (c - 1)] = f32::NAN;
            x[24] = f32::INFINITY;
            let y = conv2d_u8i8(&x, [1, c, 5, 5], &geo, iq, &wq, None, None);
            let nan: Vec<usize> = (0..25).filter(|&i| y[i].is_nan()).collect();
            assert_eq!(nan, vec![0, 1, 5, 6, 18, 19, 23, 24], "C = {c}");
            let want = conv2d_u8i8_reference(&x, [1, c, 5, 5], &geo, iq, &wq, None, None);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y), bits(&want));
        }
    }

    /// The pooled form equals the convolution followed by the `f32` max
    /// pool, bit for bit, NaN included: 2x2 windows on odd sizes, 3x3 with
    /// stride 2 and padding, channel counts on and off the vector width.
    #[test]
    fn pooled_equals_conv_then_max_pool() {
        let pools = [
            Window2d::new((2, 2), (2, 2), (0, 0)),
            Window2d::new((3, 3), (2, 2), (1, 1)),
            Window2d::new((2, 3), (1, 2), (0, 1)),
        ];
        for (t, ([n, c, h, w], cout)) in
            [([3, 1, 7, 9], 32), ([2, 16, 8, 5], 5), ([1, 3, 11, 11], 17)].into_iter().enumerate()
        {
            let geo = ConvGeometry { pad: [1, 1, 1, 1], ..ConvGeometry::new((3, 3)) };
            let mut x: Vec<f32> = data(n * c * h * w, t as u32 + 3).iter().map(|v| 1.5 * v).collect();
            x[5] = f32::NAN;
            let wq = quantize_conv_weight(&data(cout * c * 9, t as u32 + 8), cout, c, 3, 3);
            let b = data(cout, 4);
            let iq = InputQuant::from_range(-1.5, 1.5);
            let full = conv2d_u8i8(&x, [n, c, h, w], &geo, iq, &wq, Some(&b), Some(UnaryOp::Relu));
            let (ho, wo) = geo.output_size(h, w).unwrap();
            for win in &pools {
                let (want, _) = crate::conv::max_pool2d(&full, n, cout, ho, wo, win);
                let got = conv2d_u8i8_pooled(&x, [n, c, h, w], &geo, iq, &wq, Some(&b), Some(UnaryOp::Relu), Some(win));
                // Bit for bit, any NaN as any NaN (the f32 pool returns its own).
                let first =
                    got.iter().zip(&want).position(|(a, b)| !(a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan()));
                assert_eq!((got.len(), first), (want.len(), None), "case {t}, pool {win:?}");
                assert!(got.iter().any(|v| v.is_nan()), "case {t}: the NaN reached the pooled output");
            }
        }
    }

    /// A chain (two convolutions, the first pooled, then a head) equals its
    /// layers run one by one through `f32` between them, NaN included, on
    /// batches that fill several chunks and on one image.
    #[test]
    fn a_chain_equals_its_layers_one_by_one() {
        use crate::gemm::int8::{gemm_u8i8_act, quantize_rows_u8, quantize_rows_u8_static_into};
        let (c, h, w) = (3, 12, 10);
        let g1 = ConvGeometry { pad: [1, 1, 1, 1], ..ConvGeometry::new((3, 3)) };
        let g2 = ConvGeometry { stride: (2, 2), pad: [0, 1, 1, 0], ..ConvGeometry::new((3, 2)) };
        let pool = Window2d::new((2, 2), (2, 2), (0, 0));
        let (w1, w2) = (
            quantize_conv_weight(&data(16 * c * 9, 1), 16, c, 3, 3),
            quantize_conv_weight(&data(5 * 16 * 6, 2), 5, 16, 3, 2),
        );
        let (b1, b2, b3) = (data(16, 3), data(5, 4), data(4, 5));
        let (q1, q2, q3) =
            (InputQuant::from_range(-1.0, 1.0), InputQuant::from_range(0.0, 2.0), InputQuant::from_range(-3.0, 3.0));
        // After pool: (16, 6, 5); stage 2: ((6 + 1 - 3) / 2 + 1, (5 + 1 - 2) / 2 + 1) = (3, 3).
        let flat = 5 * 3 * 3;
        let w3 = QuantizedWeight::from_f32(&data(4 * flat, 6), 4, flat);
        for n in [1usize, 23] {
            let mut x = data(n * c * h * w, 7);
            if n > 1 {
                // One pixel of one image: that image's outputs are NaN, the others' are not.
                x[n / 2 * c * h * w + 37] = f32::NAN;
            }
            let s1 = ConvStage {
                weight: &w1,
                input: q1,
                geo: g1,
                bias: Some(&b1),
                act: Some(UnaryOp::Relu),
                pool: Some(pool),
            };
            let s2 = ConvStage { weight: &w2, input: q2, geo: g2, bias: Some(&b2), act: None, pool: None };
            let hd = HeadStage { weight: &w3, input: q3, bias: Some(&b3), act: Some(UnaryOp::Tanh) };
            let (got, dims) = conv_chain_u8i8(&x, [n, c, h, w], &[s1, s2], Some(&hd));
            assert_eq!(dims, vec![n, 4]);
            let y1 = conv2d_u8i8_pooled(&x, [n, c, h, w], &g1, q1, &w1, Some(&b1), Some(UnaryOp::Relu), Some(&pool));
            let y2 = conv2d_u8i8(&y1, [n, 16, 6, 5], &g2, q2, &w2, Some(&b2), None);
            let mut rows = quantize_rows_u8(&[], 0, 0);
            quantize_rows_u8_static_into(&y2, n, flat, q3, &mut rows);
            let mut want = vec![0.0; n * 4];
            gemm_u8i8_act(&rows, &w3, Some(&b3), Some(UnaryOp::Tanh), &mut want);
            let same = |a: &f32, b: &f32| a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan();
            assert!(got.iter().zip(&want).all(|(a, b)| same(a, b)), "n = {n}: {got:?} vs {want:?}");
            let nan_rows: Vec<usize> = (0..n).filter(|&i| got[4 * i..4 * i + 4].iter().all(|v| v.is_nan())).collect();
            assert_eq!(nan_rows, if n > 1 { vec![n / 2] } else { vec![] }, "n = {n}: {got:?}");
            // Without the head: the last stage's (N, C, H, W).
            let (no_head, dims) = conv_chain_u8i8(&x, [n, c, h, w], &[s1, s2], None);
            assert_eq!(dims, vec![n, 5, 3, 3]);
            assert!(no_head.iter().zip(&y2).all(|(a, b)| same(a, b)), "n = {n}: without the head");
        }
    }

    #[test]
    fn weights_round_trip_through_pytorchs_layout() {
        let wf = data(4 * 3 * 2 * 5, 7);
        let q = quantize_conv_weight(&wf, 4, 3, 2, 5);
        let natural = conv_weight_to_i8(&q, 3, 2, 5);
        // Channel-major integers are the per-channel quantization of the weight as given.
        let direct = QuantizedWeight::from_f32(&wf, 4, 30);
        assert_eq!(natural, direct.data);
        let back = conv_weight_from_i8(&natural, q.scale.clone(), 4, 3, 2, 5);
        assert_eq!((back.data, back.scale), (q.data.clone(), q.scale.clone()));
    }

    #[test]
    fn input_ranges_keep_zero_exact() {
        for (lo, hi) in [(0.0, 6.0), (-2.0, 2.0), (0.5, 3.0), (-3.0, -1.0), (0.0, 0.0)] {
            let q = InputQuant::from_range(lo, hi);
            assert_eq!(q.quantize(0.0, 1.0 / q.scale), q.zero, "({lo}, {hi})");
        }
        let q = InputQuant::from_range(0.0, 255.0);
        assert_eq!((q.quantize(2.5, 1.0), q.quantize(3.5, 1.0), q.quantize(-1.0, 1.0)), (2, 4, 0));
    }
}
