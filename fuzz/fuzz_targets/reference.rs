//! The image reference parser: any text is parsed or refused, never a panic; what it accepts
//! normalizes to a reference that parses back to the same image (`Display` is the pull
//! reference: with both a tag and a digest it names the digest only, as the pull does).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prepuller::reference::ImageRef;

fuzz_target!(|data: &[u8]| {
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
});
