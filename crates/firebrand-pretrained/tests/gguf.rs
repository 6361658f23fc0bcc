//! The GGUF reader: a small file written here with every type the reader
//! reads (values set so the dequantized ones are known exactly), its typed
//! errors (bad magic, truncated, an unknown type, rows that do not fill
//! blocks, a missing tensor), and the real SmolLM2-135M-Instruct Q4_1 file
//! against the `gguf` Python package's reading (`reference/make_gguf.py`).
//! Without the real file that test says so and passes, except under `CI=true`.

use firebrand_pretrained::PretrainedError;
use firebrand_pretrained::gguf::{GgmlType, GgufFile, MetaValue};
use half::f16;
use std::path::PathBuf;

mod common;

fn s(out: &mut Vec<u8>, v: &str) {
    out.extend((v.len() as u64).to_le_bytes());
    out.extend(v.as_bytes());
}

/// A GGUF v3 file: metadata, then tensors `(name, file dims, type code, data)`.
fn write(path: &PathBuf, tensors: &[(&str, Vec<u64>, u32, Vec<u8>)]) {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend(4u64.to_le_bytes());
    s(&mut out, "general.architecture");
    out.extend(8u32.to_le_bytes());
    s(&mut out, "llama");
    s(&mut out, "llama.block_count");
    out.extend(4u32.to_le_bytes());
    out.extend(2u32.to_le_bytes());
    s(&mut out, "llama.rope.freq_base");
    out.extend(6u32.to_le_bytes());
    out.extend(10000.0f32.to_le_bytes());
    s(&mut out, "tokenizer.ggml.tokens");
    out.extend(9u32.to_le_bytes());
    out.extend(8u32.to_le_bytes());
    out.extend(2u64.to_le_bytes());
    s(&mut out, "<s>");
    s(&mut out, "é");
    let mut offset = 0u64;
    for (name, dims, kind, data) in tensors {
        s(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
        out.extend(kind.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += (data.len() as u64).next_multiple_of(32);
    }
    out.resize(out.len().next_multiple_of(32), 0);
    for (_, _, _, data) in tensors {
        out.extend(data);
        out.resize(out.len().next_multiple_of(32), 0);
    }
    std::fs::write(path, out).unwrap();
}

fn h(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

#[test]
fn every_read_type_dequantizes_to_the_known_values() {
    let path = std::env::temp_dir().join(format!("fb-gguf-{}.gguf", std::process::id()));
    let f32s: Vec<u8> = (0..6).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
    let f16s: Vec<u8> = [1.0f32, -2.5, 65504.0, 0.0].iter().flat_map(|&v| h(v)).collect();
    // Q8_0, 2 rows of 32: d = 0.25 then 2.0, q = i − 16.
    let mut q8 = Vec::new();
    for d in [0.25f32, 2.0] {
        q8.extend(h(d));
        q8.extend((0..32).map(|i| (i as i8 - 16) as u8));
    }
    // Q4_0: d = 0.5, element i (low nibbles first) has q = i % 16.
    let mut q40 = h(0.5).to_vec();
    q40.extend((0..16).map(|i| (i as u8) | ((15 - i as u8) << 4)));
    // Q4_1: d = 0.1, m = −1.
    let mut q41 = h(0.1).to_vec();
    q41.extend(h(-1.0));
    q41.extend((0..16).map(|i| (i as u8) | ((15 - i as u8) << 4)));
    write(
        &path,
        &[
            ("a.f32", vec![3, 2], 0, f32s),
            ("b.f16", vec![4], 1, f16s),
            ("c.q8", vec![32, 2], 8, q8),
            ("d.q40", vec![32], 2, q40),
            ("e.q41", vec![32], 3, q41),
            ("f.q5", vec![32], 6, vec![0; 22]),
        ],
    );
    let g = GgufFile::open(&path).unwrap();
    assert_eq!((g.version, g.architecture()), (3, Some("llama")));
    assert_eq!(g.usize("llama.block_count").unwrap(), 2);
    assert_eq!(g.get("llama.rope.freq_base").and_then(MetaValue::as_f64), Some(10000.0));
    let toks = g.get("tokenizer.ggml.tokens").and_then(MetaValue::as_array).unwrap();
    assert_eq!(toks.iter().map(|t| t.as_str().unwrap()).collect::<Vec<_>>(), ["<s>", "é"]);
    assert!(g.usize("llama.context_length").unwrap_err().to_string().contains("llama.context_length"));
    let a = g.tensor("a.f32").unwrap();
    assert_eq!(a.dims(), &[2, 3], "PyTorch order: the file's dims reversed");
    assert_eq!(a.to_vec::<f32>(), [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
    assert_eq!(g.tensor("b.f16").unwrap().to_vec::<f32>(), [1.0, -2.5, 65504.0, 0.0]);
    let q8: Vec<f32> = [0.25f32, 2.0].iter().flat_map(|&d| (0..32).map(move |i| d * (i - 16) as f32)).collect();
    assert_eq!(g.tensor("c.q8").unwrap().to_vec::<f32>(), q8);
    let d40 = f16::from_f32(0.5).to_f32();
    let q40: Vec<f32> = (0..32).map(|i| d40 * (if i < 16 { i } else { 15 - (i - 16) } as f32 - 8.0)).collect();
    assert_eq!(g.tensor("d.q40").unwrap().to_vec::<f32>(), q40);
    let (d41, m41) = (f16::from_f32(0.1).to_f32(), -1.0);
    let q41: Vec<f32> = (0..32).map(|i| d41 * (if i < 16 { i } else { 15 - (i - 16) }) as f32 + m41).collect();
    assert_eq!(g.tensor("e.q41").unwrap().to_vec::<f32>(), q41);
    assert_eq!(g.info("f.q5").unwrap().kind, GgmlType::Other(6));
    let e = g.tensor("f.q5").unwrap_err().to_string();
    assert!(e.contains("f.q5") && e.contains("not read"), "{e}");
    let e = g.tensor("nope").unwrap_err().to_string();
    assert!(e.contains("nope") && e.contains("not in the file"), "{e}");
    assert!(g.load_all().is_err(), "the unknown type stops load_all, naming it");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn bad_files_are_typed_errors_naming_the_file() {
    let path = std::env::temp_dir().join(format!("fb-gguf-bad-{}.gguf", std::process::id()));
    let gguf_err = |p: &PathBuf| match GgufFile::open(p) {
        Err(PretrainedError::Gguf { path, tensor, msg }) => (path, tensor, msg),
        other => panic!("{other:?}"),
    };
    std::fs::write(&path, b"GGML\x03\x00\x00\x00").unwrap();
    let (p, _, msg) = gguf_err(&path);
    assert!(p == path && msg.contains("magic"), "{msg}");
    let data: Vec<u8> = (0..64).flat_map(|i| (i as f32).to_le_bytes()).collect();
    write(&path, &[("w", vec![64], 0, data)]);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let (_, tensor, msg) = gguf_err(&path);
    assert!(tensor.as_deref() == Some("w") && msg.contains("past"), "{tensor:?}: {msg}");
    std::fs::write(&path, &bytes[..40]).unwrap();
    let (_, _, msg) = gguf_err(&path);
    assert!(msg.contains("truncated") || msg.contains("past the end"), "{msg}");
    // Rows of 20 cannot hold blocks of 32.
    write(&path, &[("q", vec![20], 8, vec![0; 34])]);
    let (_, tensor, msg) = gguf_err(&path);
    assert!(tensor.as_deref() == Some("q") && msg.contains("blocks of 32"), "{msg}");
    assert!(matches!(GgufFile::open("/nonexistent/x.gguf"), Err(PretrainedError::Io { .. })));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn the_real_smollm2_file_reads_as_llama_cpp_reads_it() {
    let Some(path) = common::smollm2() else { return };
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/reference/smollm2_gguf_reference.json"))
            .unwrap(),
    )
    .unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.tensors.len() as u64, r["tensor_count"].as_u64().unwrap());
    assert_eq!(g.architecture(), r["metadata"]["general.architecture"].as_str());
    for key in [
        "llama.block_count",
        "llama.embedding_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.feed_forward_length",
        "llama.vocab_size",
    ] {
        assert_eq!(g.usize(key).unwrap() as u64, r["metadata"][key].as_u64().unwrap(), "{key}");
    }
    assert_eq!(
        g.get("llama.rope.freq_base").and_then(MetaValue::as_f64),
        r["metadata"]["llama.rope.freq_base"].as_f64()
    );
    let toks = g.get("tokenizer.ggml.tokens").and_then(MetaValue::as_array).unwrap();
    assert_eq!(toks.len() as u64, r["metadata"]["tokens"].as_u64().unwrap());
    assert!(g.chat_template().unwrap().contains("im_start"));
    for (name, want) in r["tensors"].as_object().unwrap() {
        let t = g.tensor(name).unwrap();
        let shape: Vec<usize> =
            want["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(t.dims(), &shape[..], "{name}");
        let v = t.to_vec::<f32>();
        for (i, (a, b)) in v.iter().zip(want["first"].as_array().unwrap()).enumerate() {
            assert_eq!(*a, b.as_f64().unwrap() as f32, "{name}[{i}]");
        }
        let (sum, sumsq): (f64, f64) =
            v.iter().fold((0.0, 0.0), |(s, q), &x| (s + x as f64, q + (x as f64) * (x as f64)));
        let (ws, wq) = (want["sum"].as_f64().unwrap(), want["sumsq"].as_f64().unwrap());
        assert!((sum - ws).abs() <= 1e-6 * wq.sqrt().max(1.0) * (v.len() as f64).sqrt(), "{name}: sum {sum} vs {ws}");
        assert!((sumsq - wq).abs() <= 1e-9 * wq.max(1.0) * 10.0, "{name}: sum of squares {sumsq} vs {wq}");
    }
}
