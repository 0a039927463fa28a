//! One config file's text -> Config (or an error that renders).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use prepuller::config::Config;

fuzz_target!(|data: &[u8]| {
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
});
