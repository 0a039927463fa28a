//! A config directory (a mounted ConfigMap) -> Config: the input is split at NUL bytes into up
//! to eight files, merged as the agent merges them, with and without the Node's labels.
#![no_main]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use prepuller::config::Config;

fuzz_target!(|data: &[u8]| {
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
});
