//! A tiny BERT against Hugging Face `transformers` (`reference/make_bert.py`):
//! the same weights, set by a formula of each tensor's name rank (so none are
//! stored), written here as a Hugging Face folder (`config.json` +
//! `model.safetensors` under `transformers`' names) and loaded with
//! `BertModel::from_pretrained`. Hidden states and pooler output within 1e-4
//! of `transformers`', with and without the padding mask. And the loader's
//! typed errors: a truncated file, a config missing a field, another
//! architecture, a missing tensor, a wrong shape.

use firebrand_autograd::Tensor;
use firebrand_nn::serialize::save_tensors;
use firebrand_pretrained::PretrainedError;
use firebrand_pretrained::bert::BertModel;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn reference() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/bert_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn formula(k: usize, shape: &[usize], name: &str) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|i| (0.37 * i as f64 + 0.11 + 1.3 * k as f64).sin()).collect();
    let v: Vec<f32> = if name.ends_with("LayerNorm.weight") {
        v.iter().map(|x| (1.0 + 0.2 * x) as f32).collect()
    } else if shape.len() == 2 && !name.contains("embeddings") {
        v.iter().map(|x| (x / (shape[1] as f64).sqrt()) as f32).collect()
    } else {
        v.iter().map(|x| (0.5 * x) as f32).collect()
    };
    Tensor::from_vec(v, shape.to_vec())
}

/// Every tensor `spec` names (`spec["names"]`, shapes in `spec["saved"]`),
/// set by the formula of its rank among the names.
fn tensors_of(spec: &Value) -> Vec<(String, Tensor)> {
    let names: Vec<&str> = spec["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    names
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let shape: Vec<usize> =
                spec["saved"][name].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            (name.to_string(), formula(k, &shape, name))
        })
        .collect()
}

/// The checkpoint folder `transformers` would write for `spec`'s tensors
/// (with `r`'s config), under a fresh temp dir.
fn write_checkpoint_of(r: &Value, spec: &Value, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fb-tiny-bert-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r["config"].to_string()).unwrap();
    save_tensors(dir.join("model.safetensors"), &tensors_of(spec)).unwrap();
    dir
}

/// The BertModel checkpoint folder.
fn write_checkpoint(r: &Value, tag: &str) -> PathBuf {
    write_checkpoint_of(r, r, tag)
}

fn ids(r: &Value, key: &str) -> Tensor {
    let rows = r[key].as_array().unwrap();
    let v: Vec<i64> = rows.iter().flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_i64().unwrap())).collect();
    Tensor::from_vec(v, [rows.len(), rows[0].as_array().unwrap().len()])
}

fn close(what: &str, got: &Tensor, want: &Value) {
    let want: Vec<f64> = want.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let got = got.to_vec::<f32>();
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let diff = got.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
    assert!(diff <= 1e-4, "{what}: max |diff| {diff} against transformers");
}

#[test]
fn hidden_states_and_pooler_match_transformers() {
    let r = reference();
    let dir = write_checkpoint(&r, "ok");
    let (model, report) = BertModel::from_pretrained(&dir).unwrap();
    assert!(report.missing.is_empty() && report.unexpected.is_empty(), "{report:?}");
    let (x, mask, types) = (ids(&r, "ids"), ids(&r, "mask"), ids(&r, "types"));
    let out = model.run(&x, Some(&mask), Some(&types));
    close("hidden states, masked", &out.last_hidden_state, &r["masked"]["hidden"]);
    close("pooler, masked", out.pooler_output.as_ref().unwrap(), &r["masked"]["pooler"]);
    let out = model.run(&x, None, Some(&types));
    close("hidden states, unmasked", &out.last_hidden_state, &r["unmasked"]["hidden"]);
    close("pooler, unmasked", out.pooler_output.as_ref().unwrap(), &r["unmasked"]["pooler"]);
    std::fs::remove_dir_all(dir).unwrap();
}

fn load_err(dir: &Path) -> String {
    match BertModel::from_pretrained(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_checkpoints_are_typed_errors_naming_the_file_and_field() {
    let r = reference();
    let dir = write_checkpoint(&r, "bad");
    let cfg = dir.join("config.json");
    // A config without a required field.
    let mut c = r["config"].clone();
    c.as_object_mut().unwrap().remove("num_hidden_layers");
    std::fs::write(&cfg, c.to_string()).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("config.json") && e.contains("num_hidden_layers") && e.contains("missing"), "{e}");
    // Another architecture.
    let mut c = r["config"].clone();
    c["model_type"] = "llama".into();
    std::fs::write(&cfg, c.to_string()).unwrap();
    assert!(matches!(BertModel::from_pretrained(&dir), Err(PretrainedError::Architecture { .. })));
    // A config whose width does not fit the weights: a shape mismatch naming the tensor.
    let mut c = r["config"].clone();
    c["intermediate_size"] = 40.into();
    std::fs::write(&cfg, c.to_string()).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("intermediate.dense.weight") && e.contains("shape"), "{e}");
    std::fs::write(&cfg, r["config"].to_string()).unwrap();
    // A truncated weights file.
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors"), "{e}");
    // A missing tensor.
    let some: Vec<(String, Tensor)> =
        tensors_of(&r).into_iter().filter(|(n, _)| !n.ends_with("attention.self.key.weight")).collect();
    save_tensors(&weights, &some).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("attention.self.key.weight"), "{e}");
    // No weights at all.
    std::fs::remove_file(&weights).unwrap();
    assert!(matches!(BertModel::from_pretrained(&dir), Err(PretrainedError::NotFound { .. })));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn sequence_classification_gets_a_new_head_and_learns() {
    use firebrand_nn::loss::{Reduction, Target, cross_entropy};
    use firebrand_nn::{Module, ModuleExt};
    use firebrand_optim::{AdamW, Optimizer};
    use firebrand_pretrained::bert::BertForSequenceClassification;
    let r = reference();
    let dir = write_checkpoint(&r, "cls");
    let (mut model, report) = BertForSequenceClassification::from_pretrained(&dir, 3).unwrap();
    assert_eq!(report.missing, ["classifier.weight", "classifier.bias"]);
    assert!(model.named_parameters().iter().any(|(n, _)| n == "bert.encoder.layer.1.attention.self.query.weight"));
    model.set_training(false);
    let (x, mask, types) = (ids(&r, "ids"), ids(&r, "mask"), ids(&r, "types"));
    let y = Tensor::from_vec(vec![2i64, 0], [2]);
    let mut opt = AdamW::new(model.named_parameters(), 1e-3);
    let losses: Vec<f32> = (0..8)
        .map(|_| {
            opt.zero_grad();
            let l =
                cross_entropy(&model.logits(&x, Some(&mask), Some(&types)), Target::Indices(&y), 0.0, Reduction::Mean)
                    .unwrap();
            l.backward();
            opt.step();
            l.item()
        })
        .collect();
    assert!(losses.windows(2).all(|w| w[1] < w[0]) && losses[7] < losses[0] - 0.05, "{losses:?}");
    // Saved with its head under Hugging Face's names, it loads back with it.
    firebrand_nn::save_weights(&model, dir.join("model.safetensors")).unwrap();
    let (again, report) = BertForSequenceClassification::from_pretrained(&dir, 3).unwrap();
    assert!(report.missing.is_empty(), "{report:?}");
    assert_eq!(again.classifier.weight.to_vec::<f32>(), model.classifier.weight.to_vec::<f32>());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn masked_lm_logits_match_transformers() {
    use firebrand_pretrained::bert::BertForMaskedLM;
    let r = reference();
    let m = &r["mlm"];
    let dir = write_checkpoint_of(&r, m, "mlm");
    let (model, report) = BertForMaskedLM::from_pretrained(&dir).unwrap();
    assert!(report.missing.is_empty() && report.unexpected.is_empty(), "{report:?}");
    let out = model.logits(&ids(&r, "ids"), Some(&ids(&r, "mask")), Some(&ids(&r, "types")));
    close("masked-LM logits", &out, &m["logits"]);
    std::fs::remove_dir_all(dir).unwrap();
}
