//! The image reference parser: any text is parsed or refused, never a panic; what it accepts
//! prints as a reference that parses back to the same image.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prepuller::reference::ImageRef;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(image) = ImageRef::parse(text) {
        let again = ImageRef::parse(&image.to_string())
            .unwrap_or_else(|e| panic!("{text:?} parsed, but its display does not: {e}"));
        assert_eq!(image, again, "{text:?} does not round-trip");
        let pulled = ImageRef::parse(&image.pull_ref())
            .unwrap_or_else(|e| panic!("{text:?} parsed, but its pull ref does not: {e}"));
        assert_eq!(image.pull_ref(), pulled.pull_ref());
        let _ = (image.name(), image.is_latest());
    }
});
