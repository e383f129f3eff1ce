//! A member's `client.toml` is written by enrollment and edited by hand: `ClientSettings::parse`
//! must turn any text into settings or a located error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = gshare_client::ClientSettings::parse(std::path::Path::new("/fuzz/home"), text);
    }
});
