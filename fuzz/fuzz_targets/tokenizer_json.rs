#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| firebrand_fuzz::tokenizer_json(data));
