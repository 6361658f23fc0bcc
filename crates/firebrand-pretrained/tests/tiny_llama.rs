//! A tiny Llama against Hugging Face `transformers` (`reference/make_llama.py`):
//! the same weights, set by a formula of each tensor's name rank (none
//! stored), written here as a Hugging Face folder under `transformers`'
//! names and rotate-half layout, loaded with `Llama::from_pretrained`:
//! logits within 1e-4 without a mask and with a left-padded sequence, the
//! same greedy tokens, cached decoding equal to the full pass, and the
//! config's unsupported features refused by name.

use firebrand_autograd::{Tensor, with_no_grad};
use firebrand_nn::serialize::save_tensors;
use firebrand_pretrained::llama::{KvCache, Llama};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn formula(k: usize, shape: &[usize], name: &str) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|i| (0.37 * i as f64 + 0.11 + 1.3 * k as f64).sin()).collect();
    let v: Vec<f32> = if name.ends_with("norm.weight") {
        v.iter().map(|x| (1.0 + 0.2 * x) as f32).collect()
    } else if shape.len() == 2 && !name.contains("embed_tokens") {
        v.iter().map(|x| (x / (shape[1] as f64).sqrt()) as f32).collect()
    } else {
        v.iter().map(|x| (0.5 * x) as f32).collect()
    };
    Tensor::from_vec(v, shape.to_vec())
}

fn reference() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/llama_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The reference's weights and config as a Hugging Face folder.
fn write_folder(r: &Value, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fb-tiny-llama-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r["config"].to_string()).unwrap();
    let names: Vec<&str> = r["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    let tensors: Vec<(String, Tensor)> = names
        .iter()
        .enumerate()
        .map(|(k, n)| {
            let shape: Vec<usize> =
                r["saved"][n].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            (n.to_string(), formula(k, &shape, n))
        })
        .collect();
    save_tensors(dir.join("model.safetensors"), &tensors).unwrap();
    dir
}

fn int_rows(r: &Value, key: &str) -> (Vec<i64>, usize, usize) {
    let rows = r[key].as_array().unwrap();
    let flat: Vec<i64> =
        rows.iter().flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_i64().unwrap())).collect();
    let t = rows[0].as_array().unwrap().len();
    (flat, rows.len(), t)
}

fn floats(r: &Value, key: &str) -> Vec<f64> {
    r[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

#[test]
fn logits_masks_greedy_tokens_and_the_cache_match_transformers() {
    let r = reference();
    let dir = write_folder(&r, "run");
    let model = Llama::from_pretrained(&dir).unwrap();
    assert!(model.lm_head.is_some(), "the reference's head is untied");
    assert_eq!(model.config().rope_theta, 5000.0);
    let (flat, b, t) = int_rows(&r, "ids");
    let ids = Tensor::from_vec(flat.clone(), [b, t]);
    let logits = with_no_grad(|| model.logits(&ids)).to_vec::<f32>();
    let want = floats(&r, "logits");
    let diff = logits.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
    assert!(diff <= 1e-4, "logits: max |diff| {diff} against transformers");

    // Left padding: the padded row's real positions match; its first two
    // (which see only padding) are skipped, as their values mean nothing.
    let (mflat, _, _) = int_rows(&r, "mask");
    let mask = Tensor::from_vec(mflat.clone(), [b, t]);
    let masked = with_no_grad(|| model.run_masked(&ids, Some(&mask), None)).to_vec::<f32>();
    let want = floats(&r, "masked_logits");
    let v = logits.len() / (b * t);
    let mut worst = 0.0f64;
    for (pos, &m) in mflat.iter().enumerate() {
        if m == 1 {
            for j in pos * v..(pos + 1) * v {
                worst = worst.max((masked[j] as f64 - want[j]).abs());
            }
        }
    }
    assert!(worst <= 1e-4, "masked logits: max |diff| {worst} against transformers");
    // The mask changes the padded row (so it is applied) and not the full one.
    let moved = (v * t..2 * v * t).map(|j| (masked[j] - logits[j]).abs()).fold(0.0f32, f32::max);
    assert!(moved > 1e-3, "padding left the second row unchanged ({moved})");
    assert!((0..v * t).all(|j| (masked[j] - logits[j]).abs() <= 1e-6));

    let prompt: Vec<u32> = flat[..t].iter().map(|&i| i as u32).collect();
    let greedy: Vec<u32> = r["greedy"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(model.generate_greedy(&prompt, greedy.len(), None), greedy);

    // Cached, position by position, equals the full pass; with the mask too.
    with_no_grad(|| {
        for row in 0..b {
            let mut cache = KvCache::default();
            for p in 0..t {
                let id = Tensor::from_vec(vec![flat[row * t + p]], [1, 1]);
                let m = Tensor::from_vec(mflat[row * t..row * t + p + 1].to_vec(), [1, p + 1]);
                let step = model.run_masked(&id, Some(&m), Some(&mut cache)).to_vec::<f32>();
                if mflat[row * t + p] == 0 {
                    continue;
                }
                let full = &masked[(row * t + p) * v..(row * t + p + 1) * v];
                let d = step.iter().zip(full).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(d <= 1e-5, "row {row} position {p}: cached vs full {d}");
            }
        }
    });
    std::fs::remove_dir_all(dir).unwrap();
}

fn load_error(dir: &Path, edit: impl Fn(&mut Value)) -> String {
    let mut c = reference()["config"].clone();
    edit(&mut c);
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    Llama::from_pretrained(dir).err().map(|e| e.to_string()).unwrap_or_default()
}

#[test]
fn configs_it_cannot_run_are_refused_by_name() {
    let r = reference();
    let dir = write_folder(&r, "bad");
    let e = load_error(&dir, |c| c["model_type"] = "gpt2".into());
    assert!(e.contains("gpt2") && e.contains("Llama"), "{e}");
    let e = load_error(&dir, |c| c["rope_parameters"]["rope_type"] = "llama3".into());
    assert!(e.contains("rope_parameters") && e.contains("llama3"), "{e}");
    let e = load_error(&dir, |c| c["rope_scaling"] = serde_json::json!({"type": "linear", "factor": 2.0}));
    assert!(e.contains("rope_scaling") && e.contains("linear"), "{e}");
    let e = load_error(&dir, |c| c["head_dim"] = 16.into());
    assert!(e.contains("head_dim") && e.contains("16"), "{e}");
    let e = load_error(&dir, |c| c["attention_bias"] = true.into());
    assert!(e.contains("attention_bias"), "{e}");
    let e = load_error(&dir, |c| c.as_object_mut().unwrap().remove("hidden_size").map(|_| ()).unwrap());
    assert!(e.contains("hidden_size") && e.contains("config.json"), "{e}");
    let e = load_error(&dir, |c| c["num_key_value_heads"] = 3.into());
    assert!(e.contains("num_key_value_heads"), "{e}");
    // Older configs: a top-level rope_theta is read.
    let mut c = r["config"].clone();
    c.as_object_mut().unwrap().remove("rope_parameters");
    c["rope_theta"] = 123.0.into();
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    assert_eq!(Llama::from_pretrained(&dir).unwrap().config().rope_theta, 123.0);
    std::fs::remove_dir_all(dir).unwrap();
}
