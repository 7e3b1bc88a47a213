//! Arbitrary bytes through every configuration reader of intercept and then validation, lint,
//! the check report and the plans: see `intercept::fuzz::one_input`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| intercept::fuzz::one_input(data));
