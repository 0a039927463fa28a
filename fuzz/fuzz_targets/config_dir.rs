//! A config directory split at NUL bytes -> Config (see `prepuller::fuzzing::config_dir`).
//! The body is shared with `tests/fuzz_corpus.rs`, which replays the seeds on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| prepuller::fuzzing::config_dir(data));
