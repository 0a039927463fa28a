//! The fuzz targets on stable: every seed (`fuzz/seeds/<target>/`), the corpus earlier
//! `make fuzz` runs kept (`fuzz/corpus/<target>/`, not committed) and every crash input
//! (`fuzz/artifacts/<target>/`) through the same function libFuzzer calls
//! (`prepuller::fuzzing`), so that `cargo test` exercises the targets where no nightly
//! toolchain is installed, and a crash once found stays fixed.

use std::path::{Path, PathBuf};

use prepuller::fuzzing::TARGETS;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_seed_corpus_and_crash_input_runs_through_its_target_without_a_panic() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    for (target, run) in TARGETS {
        let seeds = inputs(&fuzz.join("seeds").join(target));
        assert!(
            !seeds.is_empty(),
            "fuzz/seeds/{target}/ has no seed: the target would replay nothing"
        );
        let kept = ["corpus", "artifacts"]
            .iter()
            .flat_map(|d| inputs(&fuzz.join(d).join(target)));
        for file in seeds.iter().cloned().chain(kept) {
            let data = std::fs::read(&file).expect("a readable input");
            if let Err(panic) = std::panic::catch_unwind(|| run(&data)) {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                failures.push(format!("{target}: {}: {message}", file.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "inputs that panic:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_fuzz_target_has_its_shared_body() {
    // A target added to fuzz/Cargo.toml without a body here would be fuzzed but never replayed.
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml"))
            .unwrap();
    let bins: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "prepuller-fuzz")
        .collect();
    let shared: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(bins, shared);
}
