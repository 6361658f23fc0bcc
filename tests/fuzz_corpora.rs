//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) and every past crash
//! (`fuzz/regressions/<target>/`) through the same reader entry points the
//! fuzzers drive (`fuzz/src/lib.rs`), on the stable toolchain: none may
//! panic. `cargo test --test fuzz_corpora -- --ignored write_seed_corpora`
//! writes the hand-made seeds the corpora started from.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::{Path, PathBuf};

type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 9] = [
    ("idx", targets::idx),
    ("csv", targets::csv),
    ("safetensors", targets::safetensors),
    ("checkpoint", targets::checkpoint),
    ("vocab", targets::vocab),
    ("bpe", targets::bpe),
    ("tokenizer_json", targets::tokenizer_json),
    ("config_json", targets::config_json),
    ("gguf", targets::gguf),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).map_or(Vec::new(), |d| d.map(|e| e.unwrap().path()).collect());
    v.sort();
    v
}

#[test]
fn corpora_and_past_crashes_replay_without_a_panic() {
    let mut failures = Vec::new();
    for (name, run) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(corpus.len() >= 3, "fuzz/corpus/{name} holds {} inputs; the committed corpus is missing", corpus.len());
        for f in corpus.iter().chain(&files(&fuzz_dir().join("regressions").join(name))) {
            let bytes = std::fs::read(f).unwrap();
            if std::panic::catch_unwind(|| run(&bytes)).is_err() {
                failures.push(f.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "inputs that panic: {failures:#?}");
}

/// Writes the seed inputs: a small valid file of each format.
#[test]
#[ignore = "writes fuzz/corpus/*/seed-*; run by hand when the formats change"]
fn write_seed_corpora() {
    use firebrand::data::{BpeTokenizer, CharVocab};
    use firebrand::nn::{Linear, ModuleExt, Sequential};
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let d = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("seed-{name}")), bytes).unwrap();
    };
    let tmp = std::env::temp_dir().join(format!("fb-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let via_file = |f: &dyn Fn(&Path)| {
        let p = tmp.join("seed");
        f(&p);
        std::fs::read(&p).unwrap()
    };

    // IDX: u8 images (2, 2, 3) and i32 labels.
    let mut idx = vec![0, 0, 0x08, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3];
    idx.extend(0..12u8);
    put("idx", "u8-images", &idx);
    put("idx", "labels", &[0, 0, 0x08, 1, 0, 0, 0, 3, 7, 2, 1]);
    put("idx", "i32", &[0, 0, 0x0C, 1, 0, 0, 0, 1, 0, 0, 0, 5]);

    put("csv", "numeric", b"a,b,label\n1,2.5,0\n3,-1,1\n");
    put("csv", "quoted", b"\"x, y\",colour,kind\n\"1,5\",red,cat\n2,blue,dog\n,red,cat\n");
    put("csv", "missing", b"a,b,y\nNA,inf,0\n1,,1\n?,2,-1\n");

    let net = Sequential::new().add(Linear::new(3, 2));
    put("safetensors", "linear", &via_file(&|p| firebrand::nn::save_weights(&net, p).unwrap()));
    let empty: Vec<(String, firebrand::Tensor)> = Vec::new();
    put("safetensors", "empty", &via_file(&|p| firebrand::nn::serialize::save_tensors(p, &empty).unwrap()));
    let ints = vec![("ids".to_string(), firebrand::Tensor::from_vec(vec![1i64, 2, 3], [3]))];
    put("safetensors", "i64", &via_file(&|p| firebrand::nn::serialize::save_tensors(p, &ints).unwrap()));

    let opt = firebrand::optim::Adam::new(net.named_parameters(), 1e-3);
    put("checkpoint", "adam", &via_file(&|p| firebrand::train::save_training_state(p, &net, &opt, 3).unwrap()));
    let sgd = firebrand::optim::Sgd::new(net.named_parameters(), 0.1);
    put("checkpoint", "sgd", &via_file(&|p| firebrand::train::save_training_state(p, &net, &sgd, 0).unwrap()));
    put("checkpoint", "plain-weights", &via_file(&|p| firebrand::nn::save_weights(&net, p).unwrap()));

    for (name, text) in [("hello", "hello, world\n"), ("escapes", "a\\b\r\nc"), ("one", "x")] {
        put("vocab", name, &via_file(&|p| CharVocab::build(text).save(p).unwrap()));
    }
    for (name, text, size) in
        [("small", "the cat sat on the mat", 270), ("bytes", "aaaa bbbb aaaa", 258), ("unicode", "héllo wörld ✓", 265)]
    {
        put("bpe", name, &via_file(&|p| BpeTokenizer::train(text, size).save(p).unwrap()));
    }

    put("tokenizer_json", "wordlevel", br#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{"id":0,"content":"[PAD]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],"normalizer":{"type":"Lowercase"},"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"[PAD]":0,"[UNK]":1,"a":2,"short":3,"text":4},"unk_token":"[UNK]"}}"#);
    put("tokenizer_json", "wordpiece", br###"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,"strip_accents":null,"lowercase":true},"pre_tokenizer":{"type":"BertPreTokenizer"},"post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"[CLS]","type_id":0}},{"Sequence":{"id":"A","type_id":0}},{"SpecialToken":{"id":"[SEP]","type_id":0}}],"pair":[{"Sequence":{"id":"A","type_id":0}}],"special_tokens":{"[CLS]":{"id":"[CLS]","ids":[2],"tokens":["[CLS]"]},"[SEP]":{"id":"[SEP]","ids":[3],"tokens":["[SEP]"]}}},"decoder":{"type":"WordPiece","prefix":"##","cleanup":true},"model":{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##","max_input_chars_per_word":100,"vocab":{"[PAD]":0,"[UNK]":1,"[CLS]":2,"[SEP]":3,"a":4,"short":5,"te":6,"##xt":7}}}"###);
    put("tokenizer_json", "bpe", br#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},"post_processor":null,"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"vocab":{"a":0,"b":1,"ab":2,"t":3,"e":4},"merges":["a b"]}}"#);

    put("config_json", "bert", br#"{"model_type":"bert","hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":16,"vocab_size":10,"max_position_embeddings":16,"type_vocab_size":2,"layer_norm_eps":1e-12,"hidden_act":"gelu"}"#);
    put("config_json", "llama", br#"{"model_type":"llama","hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,"intermediate_size":16,"vocab_size":10,"rms_norm_eps":1e-5,"rope_theta":10000.0,"max_position_embeddings":32,"tie_word_embeddings":true}"#);
    put("config_json", "gpt2", br#"{"model_type":"gpt2","n_embd":8,"n_layer":1,"n_head":2,"vocab_size":10,"n_positions":16,"layer_norm_epsilon":1e-5}"#);

    put("gguf", "llama", &tiny_gguf());
    let mut f32_only = tiny_gguf();
    f32_only.truncate(f32_only.len() - 34); // the Q8_0 block cut off: a tensor past the end
    put("gguf", "truncated", &f32_only);
    put("gguf", "header-only", &[b'G', b'G', b'U', b'F', 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// A GGUF v3 file: Llama metadata, a GPT-2 tokenizer of 5 tokens and one
/// merge, an F32 tensor (2, 3) and a Q8_0 tensor (1, 32).
fn tiny_gguf() -> Vec<u8> {
    fn string(b: &mut Vec<u8>, s: &str) {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(2u64.to_le_bytes()); // tensors
    let kv: Vec<(&str, u32, Vec<u8>)> = vec![
        ("general.architecture", 8, {
            let mut v = Vec::new();
            string(&mut v, "llama");
            v
        }),
        ("llama.attention.head_count", 4, 2u32.to_le_bytes().to_vec()),
        ("llama.embedding_length", 4, 8u32.to_le_bytes().to_vec()),
        ("llama.block_count", 4, 1u32.to_le_bytes().to_vec()),
        ("llama.feed_forward_length", 4, 16u32.to_le_bytes().to_vec()),
        ("llama.attention.layer_norm_rms_epsilon", 6, 1e-5f32.to_le_bytes().to_vec()),
        ("tokenizer.ggml.model", 8, {
            let mut v = Vec::new();
            string(&mut v, "gpt2");
            v
        }),
        ("tokenizer.ggml.tokens", 9, {
            let mut v = 8u32.to_le_bytes().to_vec();
            v.extend(5u64.to_le_bytes());
            for t in ["a", "b", "ab", "<|im_start|>", "c"] {
                string(&mut v, t);
            }
            v
        }),
        ("tokenizer.ggml.merges", 9, {
            let mut v = 8u32.to_le_bytes().to_vec();
            v.extend(1u64.to_le_bytes());
            string(&mut v, "a b");
            v
        }),
        ("tokenizer.ggml.token_type", 9, {
            let mut v = 5u32.to_le_bytes().to_vec();
            v.extend(5u64.to_le_bytes());
            for t in [1i32, 1, 1, 3, 1] {
                v.extend(t.to_le_bytes());
            }
            v
        }),
    ];
    b.extend((kv.len() as u64).to_le_bytes());
    for (k, kind, v) in &kv {
        string(&mut b, k);
        b.extend(kind.to_le_bytes());
        b.extend(v);
    }
    // Tensor infos: dims innermost first.
    string(&mut b, "token_embd.weight");
    b.extend(2u32.to_le_bytes());
    b.extend(3u64.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    b.extend(0u32.to_le_bytes()); // F32
    b.extend(0u64.to_le_bytes());
    string(&mut b, "blk.0.ffn_down.weight");
    b.extend(2u32.to_le_bytes());
    b.extend(32u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(8u32.to_le_bytes()); // Q8_0
    b.extend(32u64.to_le_bytes()); // after the 24 bytes of F32, aligned to 32
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    for i in 0..6 {
        b.extend((i as f32 * 0.5).to_le_bytes());
    }
    b.extend([0u8; 8]); // to offset 32
    b.extend(half_one());
    b.extend((0..32).map(|i| (i as i8 - 16) as u8));
    b
}

/// 1.0 as an IEEE half, little-endian (a Q8_0 block's scale).
fn half_one() -> [u8; 2] {
    [0x00, 0x3c]
}

/// The seeds are valid files, so the fuzzers start deep inside each reader.
#[test]
fn the_seeds_are_valid_files() {
    use firebrand::pretrained::{gguf::GgufFile, hub::Config, tokenizer::Tokenizer};
    let seed = |t: &str, n: &str| fuzz_dir().join("corpus").join(t).join(format!("seed-{n}"));
    let g = GgufFile::open(seed("gguf", "llama")).unwrap();
    firebrand::pretrained::llama::LlamaConfig::from_gguf(&g).unwrap();
    Tokenizer::from_gguf(&g).unwrap();
    assert_eq!(g.tensor("token_embd.weight").unwrap().dims(), &[2, 3]);
    assert!(g.block_weight("blk.0.ffn_down.weight").unwrap().is_some());
    assert!(GgufFile::open(seed("gguf", "truncated")).is_err());
    for n in ["wordlevel", "wordpiece", "bpe"] {
        let t = Tokenizer::from_file(seed("tokenizer_json", n)).unwrap_or_else(|e| panic!("{n}: {e}"));
        t.encode_batch(&["a short text"], 8).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("fb-seed-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(seed("config_json", "bert"), dir.join("config.json")).unwrap();
    firebrand::pretrained::bert::BertConfig::from_config(&Config::read(&dir).unwrap()).unwrap();
    std::fs::copy(seed("config_json", "llama"), dir.join("config.json")).unwrap();
    firebrand::pretrained::llama::LlamaConfig::from_config(&Config::read(&dir).unwrap()).unwrap();
    std::fs::copy(seed("config_json", "gpt2"), dir.join("config.json")).unwrap();
    firebrand::pretrained::gpt2::Gpt2Config::from_config(&Config::read(&dir).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    firebrand::data::parse_idx(&std::fs::read(seed("idx", "u8-images")).unwrap(), Path::new("x")).unwrap();
    let opts = firebrand::data::CsvOptions {
        label: "kind".into(),
        missing: firebrand::data::Missing::DropRow,
        ..Default::default()
    };
    firebrand::data::parse_csv(&std::fs::read(seed("csv", "quoted")).unwrap(), &opts, Path::new("x")).unwrap();
    firebrand::nn::serialize::load_checkpoint(seed("checkpoint", "adam")).unwrap();
    firebrand::data::CharVocab::load(seed("vocab", "escapes")).unwrap();
    firebrand::data::BpeTokenizer::load(seed("bpe", "unicode")).unwrap();
}
