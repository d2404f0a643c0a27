#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sticky_cluster_fuzz::h1_response_head(data));
