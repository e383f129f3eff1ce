//! `server.toml` is written by a person: `Config::parse` must turn any text into a config or a
//! located error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = gshare_server::Config::parse(std::path::Path::new("/fuzz/server.toml"), text);
    }
});
