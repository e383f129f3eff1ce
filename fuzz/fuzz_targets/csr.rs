//! Every certificate signing request arrives from a stranger who knows a password (or is
//! guessing one) and goes through `CertificateAuthority::issue_member_certificate`, exactly as
//! the server calls it at enrollment: it must refuse or issue, never panic.
#![no_main]

use std::sync::OnceLock;

use gshare_certs::CertificateAuthority;
use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;

fn authority() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate("fuzz", OffsetDateTime::now_utc()).expect("a CA"))
}

fuzz_target!(|data: &[u8]| {
    let validity = std::time::Duration::from_secs(365 * 24 * 3600);
    let _ = authority().issue_member_certificate("fuzz", data, validity, OffsetDateTime::now_utc());
});
