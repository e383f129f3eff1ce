//! Every multicast datagram, and every announcement body inside one, goes through
//! `gshare_proto::datagram::decode`: it must never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gshare_proto::datagram::decode(data);
});
