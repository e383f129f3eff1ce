//! The server's side of the multicast channel: announcements, list requests, and signed join
//! and leave requests.
//!
//! The server announces itself every `announce.interval_secs`, and again in answer to a list
//! request, but never more often than `announce.list_reply_interval_ms`: requests that arrive
//! sooner are answered together once the interval has passed. List requests are unsigned, so
//! that bound is all an attacker gets from them.
//!
//! Every request passes a per-sender rate limit first ([`SenderLimiter`]), before any
//! database look-up or signature check, so that a host flooding the group spends only its own
//! share and everyone else's joins go through at once.
//!
//! A join or leave request is taken only if it is fresh, names a certificate this server
//! issued, is signed by that certificate's key, and is not a replay; then [`decide`] applies
//! every rule, the change is recorded in the state store, and a signed reply goes back to the
//! sender. Requests naming an unknown certificate get a signed refusal too (at a bounded rate,
//! since anyone can send them); forged, stale and replayed ones are dropped, counted and logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use gshare_certs::VerifyingKey;
use gshare_common::multicast::ReceiveBuffer;
use gshare_common::{DropCounter, DropReason, MulticastChannel, unix_now};
use gshare_proto::datagram::{self, Decoded, NONCE_LEN};
use gshare_proto::membership::{MembershipReply, MembershipRequest, Outcome, RefusalCode, RefusalMessage};
use gshare_proto::{Announcement, Datagram, DecodeError, Message, Nonce, ReplayGuard};

use crate::ServerError;
use crate::membership::{Direction, decide};
use crate::ratelimit::{SENDER_CAPACITY, SenderLimiter};
use crate::state::{Server, blocking};

/// Most nonces of join and leave requests remembered within the freshness window.
const REPLAY_CACHE_CAPACITY: usize = 100_000;
/// Most refusals per second sent for requests that name a certificate we never issued.
const UNKNOWN_CERTIFICATE_REPLIES_PER_SECOND: u32 = 20;

/// The multicast task's state.
#[derive(Debug)]
pub(crate) struct Discovery {
    server: Arc<Server>,
    channel: MulticastChannel,
    announcements: Vec<Announcement>,
    last_announced: Option<Instant>,
    /// When an announcement answering list requests is due, if one is.
    reply_due: Option<Instant>,
    guard: ReplayGuard,
    drops: DropCounter,
    unknown_replies: (Instant, u32),
    senders: SenderLimiter,
}

impl Discovery {
    pub(crate) fn new(server: Arc<Server>, channel: MulticastChannel, announcements: Vec<Announcement>) -> Self {
        let guard = ReplayGuard::new(server.config.multicast.max_age(), REPLAY_CACHE_CAPACITY);
        let rate = f64::from(server.config.requests_per_sender_per_second);
        Self {
            senders: SenderLimiter::new(rate, 2.0 * rate, SENDER_CAPACITY),
            server,
            channel,
            announcements,
            last_announced: None,
            reply_due: None,
            guard,
            drops: DropCounter::default(),
            unknown_replies: (Instant::now(), 0),
        }
    }

    /// Runs until the channel fails; the caller stops it by dropping the future.
    pub(crate) async fn run(mut self) -> Result<(), ServerError> {
        let mut periodic = tokio::time::interval(self.server.config.announce_interval);
        periodic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buffer: ReceiveBuffer = [0; datagram::MAX_DATAGRAM_LEN + 1];
        loop {
            // A far-future deadline stands in for "no reply due" so the select stays simple.
            let reply_deadline = self.reply_due.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                _ = periodic.tick() => self.announce().await?,
                _ = sleep_until(reply_deadline), if self.reply_due.is_some() => {
                    self.reply_due = None;
                    self.announce().await?;
                }
                received = self.channel.receive(&mut buffer) => {
                    let (len, from) = received.map_err(ServerError::Multicast)?;
                    self.handle_datagram(&buffer[..len], from).await?;
                }
            }
        }
    }

    async fn handle_datagram(&mut self, bytes: &[u8], from: SocketAddr) -> Result<(), ServerError> {
        let decoded = match datagram::decode(bytes) {
            Ok(decoded) => decoded,
            Err(error) => {
                let reason = if error == DecodeError::Unsigned { DropReason::Unsigned } else { DropReason::Malformed };
                self.drop(reason, from, &error);
                return Ok(());
            }
        };
        let is_request = matches!(
            decoded.datagram.message,
            Message::ListRequest | Message::JoinRequest(_) | Message::LeaveRequest(_)
        );
        if is_request && !self.senders.allow(from.ip(), std::time::Instant::now()) {
            self.drop(DropReason::OverRate, from, &"request over the sender's rate");
            return Ok(());
        }
        match &decoded.datagram.message {
            Message::ListRequest => {
                tracing::debug!(%from, "list request");
                self.handle_list_request().await
            }
            Message::JoinRequest(request) => {
                self.handle_membership(Direction::Join, request.clone(), &decoded, from).await
            }
            Message::LeaveRequest(request) => {
                self.handle_membership(Direction::Leave, request.clone(), &decoded, from).await
            }
            // Our own announcements come back over the loop; other servers' and replies are
            // not for us.
            Message::Announcement(_) | Message::MembershipReply(_) => Ok(()),
        }
    }

    fn drop(&mut self, reason: DropReason, from: SocketAddr, detail: &dyn std::fmt::Display) {
        self.drops.record(reason, from, detail, std::time::Instant::now());
        crate::metrics::count(&self.server.metrics.dropped_datagrams, reason.as_str());
    }

    async fn handle_list_request(&mut self) -> Result<(), ServerError> {
        let now = Instant::now();
        let interval = self.server.config.list_reply_interval;
        match self.last_announced {
            Some(last) if now < last + interval => {
                self.reply_due.get_or_insert(last + interval);
                Ok(())
            }
            _ => self.announce().await,
        }
    }

    /// Signs and multicasts every part of the announcement, each with its own nonce.
    async fn announce(&mut self) -> Result<(), ServerError> {
        for announcement in self.announcements.clone() {
            let bytes = self.sign(Message::Announcement(announcement))?;
            if let Err(error) = self.channel.send_to_group(&bytes).await {
                // A send can fail for a moment (an interface going down); the next one may work.
                tracing::warn!(%error, group = %self.channel.group(), "cannot send announcement");
            }
        }
        self.last_announced = Some(Instant::now());
        Ok(())
    }

    fn sign(&self, message: Message) -> Result<Vec<u8>, ServerError> {
        let nonce = Nonce(gshare_certs::random_bytes::<NONCE_LEN>()?);
        let datagram = Datagram { timestamp: unix_now(), nonce, message };
        datagram.encode(Some(self.server.identity.ca.signer())).map_err(ServerError::Encode)
    }

    async fn handle_membership(
        &mut self,
        direction: Direction,
        request: MembershipRequest,
        decoded: &Decoded<'_>,
        from: SocketAddr,
    ) -> Result<(), ServerError> {
        let (timestamp, nonce) = (decoded.datagram.timestamp, decoded.datagram.nonce);
        if let Err(rejection) = self.guard.check_time(timestamp, unix_now()) {
            self.drop(rejection.into(), from, &format!("{direction:?} request: {rejection}"));
            return Ok(());
        }
        let fingerprint = request.certificate;
        let certificate = match blocking(&self.server, move |store| store.certificate(&fingerprint)).await {
            Ok(Some(certificate)) => certificate,
            Ok(None) => {
                tracing::warn!(%from, certificate = %fingerprint, group = %request.group, "{direction:?} refused: unknown certificate");
                if self.may_answer_unknown() {
                    let message = "this server did not issue your certificate; enroll with it first";
                    self.reply(nonce, &request, refused(RefusalCode::UnknownCertificate, message), from).await?;
                }
                return Ok(());
            }
            Err(error) => {
                tracing::error!(%error, "cannot look up a certificate");
                let outcome = refused(RefusalCode::Internal, "the server cannot decide now; try again later");
                return self.reply(nonce, &request, outcome, from).await;
            }
        };
        let verified = VerifyingKey::from_certificate(&certificate.der)
            .ok()
            .zip(decoded.signature)
            .is_some_and(|(key, signature)| key.verify(decoded.signed_bytes, &signature));
        if !verified {
            self.drop(DropReason::BadSignature, from, &format!("{direction:?} request for certificate {fingerprint}"));
            return Ok(());
        }
        if let Err(rejection) = self.guard.record(timestamp, nonce, unix_now()) {
            self.drop(rejection.into(), from, &format!("{direction:?} request from {}: {rejection}", certificate.user));
            return Ok(());
        }

        let users = self.server.users();
        let now_secs = crate::store::unix_now();
        let decision = decide(direction, &request.group, &certificate, &users, &self.server.config.groups, now_secs);
        let outcome = match decision {
            Ok(user) => {
                let group = request.group.clone();
                let change = blocking(&self.server, move |store| match direction {
                    Direction::Join => store.add_membership(&user, &group, now_secs).map(|new| (user, new)),
                    Direction::Leave => {
                        store.remove_membership(&user, &group, "left the group", now_secs).map(|new| (user, new))
                    }
                })
                .await;
                match change {
                    Ok((user, changed)) => {
                        if direction == Direction::Leave {
                            self.server.narrow_sessions(&user, &request.group);
                        }
                        tracing::info!(%user, group = %request.group, %from, changed, "{direction:?} accepted");
                        Outcome::Accepted
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot record a membership");
                        refused(RefusalCode::Internal, "the server could not record it; try again later")
                    }
                }
            }
            Err((code, reason)) => {
                tracing::warn!(user = %certificate.user, group = %request.group, %from, "{direction:?} refused: {reason}");
                refused(code, &reason)
            }
        };
        self.reply(nonce, &request, outcome, from).await
    }

    /// Whether another refusal for an unknown certificate fits in this second's budget.
    fn may_answer_unknown(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.unknown_replies.0) >= Duration::from_secs(1) {
            self.unknown_replies = (now, 0);
        }
        self.unknown_replies.1 += 1;
        self.unknown_replies.1 <= UNKNOWN_CERTIFICATE_REPLIES_PER_SECOND
    }

    async fn reply(
        &mut self,
        request_nonce: Nonce,
        request: &MembershipRequest,
        outcome: Outcome,
        to: SocketAddr,
    ) -> Result<(), ServerError> {
        if let Outcome::Refused { code, .. } = &outcome {
            crate::metrics::count(&self.server.metrics.join_refusals, &format!("{code:?}").to_lowercase());
        }
        let reply = MembershipReply { request_nonce, group: request.group.clone(), outcome };
        let bytes = self.sign(Message::MembershipReply(reply))?;
        if let Err(error) = self.channel.send_to(&bytes, to).await {
            tracing::warn!(%error, %to, "cannot send membership reply");
        }
        Ok(())
    }
}

/// A refusal with the server's own text (made printable and cut to the limit).
fn refused(code: RefusalCode, message: &str) -> Outcome {
    Outcome::Refused { code, message: RefusalMessage::new(message) }
}
