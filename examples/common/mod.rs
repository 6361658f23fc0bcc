//! Command-line helpers the examples share (each example uses some of them).
#![allow(dead_code)]

use std::path::PathBuf;

/// The value after `name` on the command line, if any.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// The number after `name`, or `default`.
///
/// # Panics
/// When the value is not a number of that type.
pub fn num<T: std::str::FromStr>(name: &str, default: T) -> T {
    arg(name).map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: not a number: {v}"))).unwrap_or(default)
}

/// Prints `error: msg` and exits with status 2.
pub fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}

/// The Shakespeare corpus (`--text FILE`, else `shakespeare/shakespeare.txt`
/// under `$FIREBRAND_DATA` or the standard places): its path and text, or
/// exit with the reason.
pub fn shakespeare() -> (PathBuf, String) {
    firebrand::data::read_text("shakespeare", "shakespeare.txt", arg("--text").map(PathBuf::from).as_deref())
        .unwrap_or_else(|e| fail(e))
}
