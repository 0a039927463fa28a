//! The fuzz targets' bodies, one function per target: `fuzz/fuzz_targets/*.rs` hand them
//! libFuzzer's inputs (nightly, `make fuzz`), and `tests/fuzz_corpus.rs` replays the seeds, the
//! kept corpus and every crash input through the same functions on stable, so `cargo test`
//! exercises them on any machine. Test code: compiled only with the `test-util` feature.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::credentials::{Keyring, normalize_key, parse_docker_config, urls_match};
use crate::reference::ImageRef;

/// A target's body: one input, any bytes; a panic is a finding.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/Cargo.toml` names its binaries and `fuzz/seeds/` its folders.
pub const TARGETS: &[(&str, Target)] = &[
    ("reference", reference),
    ("config_yaml", config_yaml),
    ("config_dir", config_dir),
    ("docker_config", docker_config),
];

/// The image reference parser: any text is parsed or refused, never a panic; what it accepts
/// normalizes to a reference that parses back to the same image (`Display` is the pull
/// reference: with both a tag and a digest it names the digest only, as the pull does).
pub fn reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(image) = ImageRef::parse(text) {
        let again = ImageRef::parse(&image.to_string())
            .unwrap_or_else(|e| panic!("{text:?} parsed, but its pull ref does not: {e}"));
        assert_eq!(image.pull_ref(), again.pull_ref(), "{text:?}");
        assert_eq!(image.name(), again.name(), "{text:?}");
        assert_eq!(image.digest(), again.digest(), "{text:?}");
        let _ = image.is_latest();
    }
}

/// One config file's text -> Config (or an error that renders).
pub fn config_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("images.yaml")) {
        Ok(config) => {
            let _ = config.required_count();
        }
        Err(e) => {
            let _ = (e.headline(), e.render());
        }
    }
}

/// A config directory (a mounted ConfigMap) -> Config: the input is split at NUL bytes into up
/// to eight files, merged as the agent merges them, with and without the Node's labels.
pub fn config_dir(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = Path::new("/etc/prepuller/config");
    let sources: Vec<(PathBuf, String)> = text
        .split('\0')
        .take(8)
        .enumerate()
        .map(|(n, t)| (dir.join(format!("set-{n}.yaml")), t.to_owned()))
        .collect();
    let labels: BTreeMap<String, String> = [
        ("kubernetes.io/os", "linux"),
        ("node.kubernetes.io/instance-type", "p4d.24xlarge"),
        ("team", "ml"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for labels in [None, Some(&labels)] {
        match Config::from_sources_for_node(dir, &sources, labels) {
            Ok(config) => {
                let _ = config.required_count();
            }
            Err(e) => {
                let _ = (e.headline(), e.render());
            }
        }
    }
}

/// A docker config.json / `.dockercfg` -> credentials, then the keyring built from them and
/// matched against an image, as every pull does. Errors never quote the input (secrets).
pub fn docker_config(data: &[u8]) {
    let Ok(entries) = parse_docker_config(data) else {
        return;
    };
    for (key, _) in &entries {
        let key = normalize_key(key);
        let _ = urls_match(&key, "registry.example.com:5000/team/app");
    }
    let mut keyring = Keyring::default();
    keyring.add("fuzz", entries);
    for image in [
        "docker.io/library/nginx",
        "registry.example.com:5000/team/app",
    ] {
        let _ = keyring.lookup(image);
    }
}
