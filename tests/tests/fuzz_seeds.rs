//! The fuzz targets' inputs, run under `cargo test`: every seed in `fuzz/seeds/<target>/` and
//! every input a fuzzer ever found to crash (`fuzz/regressions/<target>/`) goes through the same
//! decoder or parser its target calls, so a crash once fixed stays fixed. And the targets
//! themselves are built, so that they cannot rot between fuzzing campaigns.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed setup should panic

use std::path::{Path, PathBuf};
use std::process::Command;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every seed and regression input of `target`; the seeds must not be empty.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    for kind in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else { continue };
        for entry in entries.flatten() {
            found.push((entry.path(), std::fs::read(entry.path()).unwrap()));
        }
    }
    assert!(!found.is_empty(), "no seeds for the fuzz target {target}");
    found
}

fn text_inputs(target: &str) -> Vec<(PathBuf, String)> {
    inputs(target).into_iter().filter_map(|(path, bytes)| Some((path, String::from_utf8(bytes).ok()?))).collect()
}

#[test]
fn datagram_inputs() {
    for (_, bytes) in inputs("datagram") {
        let _ = gshare_proto::datagram::decode(&bytes);
    }
}

#[test]
fn frame_inputs() {
    for (path, bytes) in inputs("frame") {
        if let Ok(Some((_, used))) = gshare_proto::frame::decode(&bytes) {
            assert!(used <= bytes.len(), "{}", path.display());
        }
    }
}

#[test]
fn csr_inputs() {
    let ca = gshare_certs::CertificateAuthority::generate("fuzz", time::OffsetDateTime::now_utc()).unwrap();
    let validity = std::time::Duration::from_secs(365 * 24 * 3600);
    let mut issued = 0;
    for (_, bytes) in inputs("csr") {
        issued +=
            usize::from(ca.issue_member_certificate("fuzz", &bytes, validity, time::OffsetDateTime::now_utc()).is_ok());
    }
    assert!(issued > 0, "no seed is a request the server accepts: the seeds no longer reach the signing code");
}

#[test]
fn server_toml_inputs() {
    let mut parsed = 0;
    for (_, text) in text_inputs("server_toml") {
        parsed += usize::from(gshare_server::Config::parse(Path::new("/fuzz/server.toml"), &text).is_ok());
    }
    assert!(parsed > 0, "no seed is a valid server.toml");
}

#[test]
fn users_toml_inputs() {
    let groups = ["Developers", "Designers"].map(|g| gshare_proto::GroupName::new(g).unwrap());
    let mut parsed = 0;
    for (_, text) in text_inputs("users_toml") {
        let store = gshare_server::users::UserStore::parse(Path::new("/fuzz/users.toml"), &text, &groups);
        parsed += usize::from(store.is_ok());
    }
    assert!(parsed > 0, "no seed is a valid users.toml");
}

#[test]
fn client_toml_inputs() {
    let mut parsed = 0;
    for (_, text) in text_inputs("client_toml") {
        parsed += usize::from(gshare_client::ClientSettings::parse(Path::new("/fuzz/home"), &text).is_ok());
    }
    assert!(parsed > 0, "no seed is a valid client.toml");
}

/// `cargo check` of every fuzz target (they live in a workspace of their own, built by
/// `cargo +nightly fuzz` with sanitizers, so nothing else compiles them). A change to a decoder's
/// signature fails here, not at the next fuzzing campaign.
#[test]
fn the_fuzz_targets_build() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-check");
    let output = Command::new(cargo)
        .args(["check", "--quiet", "--bins", "--manifest-path"])
        .arg(fuzz_dir().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}
