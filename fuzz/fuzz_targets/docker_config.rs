//! A docker config.json / `.dockercfg` -> the keyring (see `prepuller::fuzzing::docker_config`).
//! The body is shared with `tests/fuzz_corpus.rs`, which replays the seeds on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| prepuller::fuzzing::docker_config(data));
