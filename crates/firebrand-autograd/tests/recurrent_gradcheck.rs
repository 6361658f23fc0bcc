//! Finite-difference gradient checks of the LSTM recurrence op in both
//! directions, through all four inputs, and its shape errors.

use firebrand_autograd::{GradcheckOptions, Tensor, gradcheck, manual_seed};

#[test]
fn lstm_scan_gradients() {
    manual_seed(11);
    let (t, b, h) = (4, 2, 3);
    let inputs = [
        Tensor::randn([t, b, 4 * h], 0.0, 1.0).requires_grad_(true),
        Tensor::randn([4 * h, h], 0.0, 0.5).requires_grad_(true),
        Tensor::randn([b, h], 0.0, 0.5).requires_grad_(true),
        Tensor::randn([b, h], 0.0, 0.5).requires_grad_(true),
    ];
    for reverse in [false, true] {
        let r = gradcheck(
            |x| x[0].try_lstm_scan(&x[1], &x[2], &x[3], reverse).unwrap(),
            &inputs,
            GradcheckOptions::default(),
        );
        if let Err(e) = r {
            panic!("lstm_scan (reverse {reverse}): {e}");
        }
        // The final-step form: same values as the full scan's final step, and gradchecked.
        let full = inputs[0].try_lstm_scan(&inputs[1], &inputs[2], &inputs[3], reverse).unwrap();
        let last = inputs[0].try_lstm_scan_last(&inputs[1], &inputs[2], &inputs[3], reverse).unwrap();
        let want = full.select(0, if reverse { 0 } else { t - 1 });
        assert_eq!(last.to_vec::<f32>(), want.to_vec::<f32>());
        let r = gradcheck(
            |x| x[0].try_lstm_scan_last(&x[1], &x[2], &x[3], reverse).unwrap(),
            &inputs,
            GradcheckOptions::default(),
        );
        if let Err(e) = r {
            panic!("lstm_scan_last (reverse {reverse}): {e}");
        }
    }
}

#[test]
fn lstm_scan_shape_errors_name_the_shapes() {
    let e = Tensor::zeros([2, 3, 8]).try_lstm_scan(
        &Tensor::zeros([8, 3]),
        &Tensor::zeros([2, 2]),
        &Tensor::zeros([2, 2]),
        false,
    );
    let msg = e.unwrap_err().to_string();
    assert!(msg.contains("lstm_scan") && msg.contains("[8, 3]"), "{msg}");
    assert!(
        Tensor::zeros([2, 3, 7])
            .try_lstm_scan(&Tensor::zeros([7, 1]), &Tensor::zeros([2, 1]), &Tensor::zeros([2, 1]), false)
            .is_err()
    );
}
