//! `users.toml` is edited by hand and by `user add`; the server re-reads it while running, so a
//! bad edit must be a located error, never a panic that takes the server down.
#![no_main]

use gshare_proto::GroupName;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let groups = [GroupName::new("Developers").expect("a group name"), GroupName::new("Designers").expect("a group name")];
        let _ = gshare_server::users::UserStore::parse(std::path::Path::new("/fuzz/users.toml"), text, &groups);
    }
});
