//! The real all-MiniLM-L6-v2 at `MatmulPrecision::Medium` (bf16 operands on
//! AMX tiles, f32 sums): every sentence embedding keeps a cosine similarity
//! of at least 0.9999 to sentence-transformers' f32 one. A binary of its own,
//! since the precision is set for the whole process.

use firebrand_ops::gemm::{MatmulPrecision, amx_bf16_available, set_float32_matmul_precision};
use firebrand_pretrained::bert::BertModel;
use firebrand_pretrained::tokenizer::Tokenizer;
use serde_json::Value;

mod common;

#[test]
fn medium_precision_embeddings_stay_within_cosine_0_9999() {
    let Some(dir) = common::minilm() else { return };
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/minilm_reference.json");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let texts: Vec<&str> = r["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let (model, _) = BertModel::from_pretrained(&dir).unwrap();
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let batch = tok.encode_batch(&texts, 256).unwrap();
    let f32_emb = model.embed(&batch).to_vec::<f32>();
    set_float32_matmul_precision(MatmulPrecision::Medium);
    let emb = model.embed(&batch).to_vec::<f32>();
    set_float32_matmul_precision(MatmulPrecision::Highest);
    let want: Vec<Vec<f32>> = r["embeddings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect())
        .collect();
    let mut worst = 1.0f32;
    for (i, w) in want.iter().enumerate() {
        let e = &emb[i * 384..(i + 1) * 384];
        // Both are unit vectors: the cosine is the dot product.
        let cos: f32 = e.iter().zip(w).map(|(a, b)| a * b).sum();
        worst = worst.min(cos);
        assert!(cos >= 0.9999, "{:?}: cosine {cos} to sentence-transformers at medium precision", texts[i]);
    }
    let moved = emb.iter().zip(&f32_emb).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!("MiniLM at medium precision: worst cosine {worst:.6}, max |diff| to f32 {moved:.2e}");
    if amx_bf16_available() {
        // The products did run in bf16 (else this test would compare f32 with itself).
        assert!(moved > 1e-5, "medium precision changed nothing ({moved}): the AMX path did not run");
    }
}
