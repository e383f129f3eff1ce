//! `gshare-client status`: the member's own view, from what is in its home: who it is enrolled
//! as, with which server and pinned CA, when its certificate expires and is renewed, the groups
//! it joined, the files it received (from its journal) and those in progress.

use std::path::Path;

use time::OffsetDateTime;

use crate::ClientSettings;
use crate::identity::{Enrollment, format_time};

/// A file this member received, from its journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub delivery: u64,
    pub name: String,
    pub sha256: String,
    /// When its journal entry was written (the file was stored).
    pub at: Option<OffsetDateTime>,
}

/// What `status` shows.
#[derive(Debug)]
pub struct MemberStatus {
    pub user: String,
    pub server: Option<String>,
    pub ca_fingerprint: String,
    pub certificate_fingerprint: String,
    pub expires: Option<OffsetDateTime>,
    pub renews: Option<OffsetDateTime>,
    pub joined: Vec<String>,
    /// Oldest first.
    pub received: Vec<Received>,
    /// Deliveries with a temporary file: arriving now, or interrupted.
    pub in_progress: Vec<u64>,
}

/// The journal directory of `enrollment`'s CA in `home`, where `listen` records deliveries.
pub fn journal_dir(home: &Path, enrollment: &Enrollment) -> std::path::PathBuf {
    let prefix: String = enrollment.ca_fingerprint().0.iter().take(8).map(|b| format!("{b:02x}")).collect();
    home.join("received").join(prefix)
}

/// Reads the member's status from its home.
pub fn collect(settings: &ClientSettings, enrollment: &Enrollment) -> MemberStatus {
    let validity = enrollment.validity().ok();
    let mut received = Vec::new();
    let mut in_progress = Vec::new();
    if let Ok(entries) = std::fs::read_dir(journal_dir(&settings.home, enrollment)) {
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name.ends_with(".pieces") {
                continue;
            }
            let (label, receiving) = match file_name.strip_suffix(".receiving") {
                Some(label) => (label.to_owned(), true),
                None => (file_name.clone(), false),
            };
            let Some((id, sha256)) = label.split_once('-') else { continue };
            let Ok(delivery) = id.parse::<u64>() else { continue };
            if receiving {
                in_progress.push(delivery);
                continue;
            }
            let name = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let at = entry.metadata().and_then(|m| m.modified()).ok().map(OffsetDateTime::from);
            received.push(Received { delivery, name, sha256: sha256.to_owned(), at });
        }
    }
    received.sort_by_key(|r| (r.at, r.delivery));
    in_progress.sort_unstable();
    in_progress.retain(|id| !received.iter().any(|r| r.delivery == *id));
    MemberStatus {
        user: enrollment.user().unwrap_or_default(),
        server: settings.server.as_ref().map(ToString::to_string),
        ca_fingerprint: enrollment.ca_fingerprint().to_string(),
        certificate_fingerprint: enrollment.certificate_fingerprint().to_string(),
        expires: validity.map(|(_, until)| until),
        renews: enrollment.renewal_due(settings.renew_at),
        joined: crate::membership::joined(&settings.home),
        received,
        in_progress,
    }
}

/// Most received files listed in the text form (all are in the JSON).
const SHOWN_RECEIVED: usize = 10;

impl MemberStatus {
    pub fn text(&self) -> String {
        let when = |t: Option<OffsetDateTime>| t.map_or_else(|| "unknown".to_owned(), format_time);
        let now = OffsetDateTime::now_utc();
        let expired = self.expires.is_some_and(|until| until <= now);
        let mut out = format!(
            "enrolled as {} with {} (CA {})\ncertificate {}\n  {} {}{}\n",
            self.user,
            self.server.as_deref().unwrap_or("no server recorded"),
            self.ca_fingerprint,
            self.certificate_fingerprint,
            if expired { "expired" } else { "expires" },
            when(self.expires),
            if expired {
                format!("; enroll again: gshare-client enroll --user {}", self.user)
            } else {
                format!("; renewed by `listen` from {}", when(self.renews))
            },
        );
        let joined = if self.joined.is_empty() { "none noted".to_owned() } else { self.joined.join(", ") };
        out.push_str(&format!("groups joined: {joined}\n"));
        out.push_str(&format!("files received: {}\n", self.received.len()));
        let skipped = self.received.len().saturating_sub(SHOWN_RECEIVED);
        for received in &self.received[skipped..] {
            out.push_str(&format!("  {}  {}  (delivery {})\n", when(received.at), received.name, received.delivery));
        }
        if !self.in_progress.is_empty() {
            let ids: Vec<String> = self.in_progress.iter().map(u64::to_string).collect();
            out.push_str(&format!("in progress: deliveries {}\n", ids.join(", ")));
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let stamp = |t: Option<OffsetDateTime>| t.map(OffsetDateTime::unix_timestamp);
        serde_json::json!({
            "user": self.user,
            "server": self.server,
            "ca_fingerprint": self.ca_fingerprint,
            "certificate_fingerprint": self.certificate_fingerprint,
            "expires_at": stamp(self.expires),
            "renews_at": stamp(self.renews),
            "joined": self.joined,
            "received": self.received.iter().map(|r| serde_json::json!({
                "delivery": r.delivery, "name": r.name, "sha256": r.sha256, "at": stamp(r.at),
            })).collect::<Vec<_>>(),
            "in_progress": self.in_progress,
        })
    }
}
