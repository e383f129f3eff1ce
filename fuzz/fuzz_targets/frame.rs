//! Every byte a TLS peer sends goes through `gshare_proto::frame::decode`: it must never panic,
//! and never claim to have consumed more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, used))) = gshare_proto::frame::decode(data) {
        assert!(used <= data.len());
    }
});
