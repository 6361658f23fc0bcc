//! A tiny GPT-2 against Hugging Face `transformers` (`reference/make_gpt2.py`):
//! the same weights, set by a formula of each tensor's name rank (none
//! stored), written here as a Hugging Face folder under `transformers`'
//! names with `Conv1D`'s `(in, out)` weights, loaded with
//! `Gpt2::from_pretrained`: logits within 1e-4, the same greedy tokens, and
//! cached decoding equal to the full pass.

use firebrand_autograd::Tensor;
use firebrand_nn::serialize::save_tensors;
use firebrand_pretrained::gpt2::{Gpt2, Gpt2Cache};
use serde_json::Value;

fn formula(k: usize, shape: &[usize], name: &str) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|i| (0.37 * i as f64 + 0.11 + 1.3 * k as f64).sin()).collect();
    let norm = ["ln_1.weight", "ln_2.weight", "ln_f.weight"].iter().any(|s| name.ends_with(s));
    let v: Vec<f32> = if norm {
        v.iter().map(|x| (1.0 + 0.2 * x) as f32).collect()
    } else if shape.len() == 2 && !name.contains("wte") && !name.contains("wpe") {
        v.iter().map(|x| (x / (shape[0] as f64).sqrt()) as f32).collect()
    } else {
        v.iter().map(|x| (0.5 * x) as f32).collect()
    };
    Tensor::from_vec(v, shape.to_vec())
}

#[test]
fn logits_greedy_tokens_and_the_cache_match_transformers() {
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/gpt2_reference.json")).unwrap(),
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("fb-tiny-gpt2-{}", std::process::id()));
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
    let model = Gpt2::from_pretrained(&dir).unwrap();
    let rows = r["ids"].as_array().unwrap();
    let flat: Vec<i64> =
        rows.iter().flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_i64().unwrap())).collect();
    let t = rows[0].as_array().unwrap().len();
    let ids = Tensor::from_vec(flat.clone(), [rows.len(), t]);
    let logits = firebrand_autograd::with_no_grad(|| model.logits(&ids)).to_vec::<f32>();
    let want: Vec<f64> = r["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let diff = logits.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
    assert!(diff <= 1e-4, "logits: max |diff| {diff} against transformers");
    let prompt: Vec<u32> = flat[..t].iter().map(|&i| i as u32).collect();
    let greedy: Vec<u32> = r["greedy"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(model.generate_greedy(&prompt, greedy.len()), greedy);
    // Cached, position by position, equals the full pass.
    let v = logits.len() / (rows.len() * t);
    firebrand_autograd::with_no_grad(|| {
        let mut cache = Gpt2Cache::default();
        for (p, &id) in flat[..t].iter().enumerate() {
            let step = model.run(&Tensor::from_vec(vec![id], [1, 1]), Some(&mut cache)).to_vec::<f32>();
            let full = &logits[p * v..(p + 1) * v];
            let d = step.iter().zip(full).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(d <= 1e-5, "position {p}: cached vs full {d}");
        }
    });
    // A config for another architecture is refused, naming it.
    let mut c = r["config"].clone();
    c["model_type"] = "bert".into();
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    let e = Gpt2::from_pretrained(&dir).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("bert") && e.contains("GPT-2"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}
