//! Deciding join and leave requests: every check the server makes before a membership changes.
//!
//! [`decide`] is pure: given the request, the certificate it names, the user store and the time,
//! it says who is asking or why not. The multicast task does the IO around it (verifying the
//! signature with the stored certificate, recording the change, replying).

use gshare_proto::membership::RefusalCode;
use gshare_proto::{GroupName, UserName};

use crate::store::CertificateRecord;
use crate::users::{User, UserStore};

/// Whether a member asks to join or to leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Join,
    Leave,
}

/// A refusal: a code for programs and a sentence for people.
pub(crate) type Refusal = (RefusalCode, String);

/// The account a certificate speaks for, if the certificate and the user are in good standing:
/// not revoked, not expired, the user present in the user store and not disabled. Both joins
/// and member sessions go through this.
pub(crate) fn standing<'a>(
    certificate: &CertificateRecord,
    users: &'a UserStore,
    now_secs: i64,
) -> Result<&'a User, Refusal> {
    let user = &certificate.user;
    if certificate.revoked_at.is_some() {
        return Err((RefusalCode::Revoked, format!("the certificate of user \"{user}\" was revoked; enroll again")));
    }
    if certificate.expires_at < now_secs {
        return Err((RefusalCode::Expired, format!("the certificate of user \"{user}\" has expired; enroll again")));
    }
    let Some(account) = users.users.get(user) else {
        return Err((RefusalCode::Revoked, format!("user \"{user}\" is not in the user store")));
    };
    if account.disabled {
        return Err((RefusalCode::Revoked, format!("user \"{user}\" is disabled")));
    }
    Ok(account)
}

/// The user a verified request speaks for, if they may do what they ask.
pub(crate) fn decide(
    direction: Direction,
    group: &GroupName,
    certificate: &CertificateRecord,
    users: &UserStore,
    server_groups: &[GroupName],
    now_secs: i64,
) -> Result<UserName, Refusal> {
    let user = &certificate.user;
    let account = standing(certificate, users, now_secs)?;
    if !server_groups.contains(group) {
        return Err((RefusalCode::UnknownGroup, format!("there is no group \"{group}\" on this server")));
    }
    if direction == Direction::Join && !account.groups.contains(group) {
        return Err((RefusalCode::NotAllowed, format!("user \"{user}\" may not join \"{group}\"")));
    }
    Ok(user.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::User;
    use gshare_proto::Fingerprint;

    fn certificate(user: &str) -> CertificateRecord {
        CertificateRecord {
            serial: "01".into(),
            fingerprint: Fingerprint([1; 32]),
            user: user.parse().unwrap(),
            der: vec![],
            issued_at: 0,
            expires_at: 1000,
            revoked_at: None,
        }
    }

    fn users(disabled: bool) -> UserStore {
        let mut store = UserStore::default();
        store.users.insert(
            "alice".parse().unwrap(),
            User { password_hash: String::new(), groups: ["Developers".parse().unwrap()].into(), disabled },
        );
        store
    }

    fn groups() -> Vec<GroupName> {
        vec!["Developers".parse().unwrap(), "Designers".parse().unwrap()]
    }

    fn join(
        group: &str,
        certificate: &CertificateRecord,
        users: &UserStore,
        now: i64,
    ) -> Result<UserName, RefusalCode> {
        decide(Direction::Join, &group.parse().unwrap(), certificate, users, &groups(), now).map_err(|(code, _)| code)
    }

    #[test]
    fn every_check() {
        let alice = certificate("alice");
        assert_eq!(join("Developers", &alice, &users(false), 10), Ok("alice".parse().unwrap()));
        assert_eq!(join("Designers", &alice, &users(false), 10), Err(RefusalCode::NotAllowed));
        assert_eq!(join("Marketing", &alice, &users(false), 10), Err(RefusalCode::UnknownGroup));
        assert_eq!(join("Developers", &alice, &users(true), 10), Err(RefusalCode::Revoked));
        assert_eq!(join("Developers", &certificate("mallory"), &users(false), 10), Err(RefusalCode::Revoked));
        assert_eq!(join("Developers", &alice, &users(false), 1001), Err(RefusalCode::Expired));
        let revoked = CertificateRecord { revoked_at: Some(5), ..certificate("alice") };
        assert_eq!(join("Developers", &revoked, &users(false), 10), Err(RefusalCode::Revoked));
        // Leaving a group one may no longer join is always allowed.
        let leave = decide(Direction::Leave, &"Designers".parse().unwrap(), &alice, &users(false), &groups(), 10);
        assert!(leave.is_ok());
    }

    #[test]
    fn the_reason_names_user_and_group() {
        let (_, reason) =
            decide(Direction::Join, &"Designers".parse().unwrap(), &certificate("alice"), &users(false), &groups(), 10)
                .unwrap_err();
        assert_eq!(reason, "user \"alice\" may not join \"Designers\"");
    }
}
