//! A docker config.json / `.dockercfg` -> credentials, then the keyring built from them and
//! matched against an image, as every pull does. Errors never quote the input (secrets).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prepuller::credentials::{Keyring, normalize_key, parse_docker_config, urls_match};

fuzz_target!(|data: &[u8]| {
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
});
