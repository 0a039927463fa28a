//! The image reference parser (see `prepuller::fuzzing::reference`).
//! The body is shared with `tests/fuzz_corpus.rs`, which replays the seeds on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| prepuller::fuzzing::reference(data));
