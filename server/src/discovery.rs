//! Group discovery: the server's side of the multicast channel.
//!
//! The server announces itself every `announce.interval_secs`, and again in answer to a list
//! request, but never more often than `announce.list_reply_interval_ms`: a request that arrives
//! sooner is answered by one announcement when the interval has passed, however many requests
//! came in the meantime. Since list requests are unsigned, that bound is all an attacker gets.
//! Everything else that arrives is decoded with bounds and, if malformed, dropped and counted.

use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use gshare_certs::CertificateAuthority;
use gshare_proto::datagram::{self, NONCE_LEN};
use gshare_proto::{Announcement, Datagram, DecodeError, Message, Nonce};
use gshare_transport::multicast::ReceiveBuffer;
use gshare_transport::{DropCounter, DropReason, MulticastChannel, unix_now};

use crate::ServerError;

/// The discovery task's state.
#[derive(Debug)]
pub(crate) struct Discovery<'a> {
    channel: MulticastChannel,
    ca: &'a CertificateAuthority,
    announcements: Vec<Announcement>,
    announce_interval: Duration,
    list_reply_interval: Duration,
    last_announced: Option<Instant>,
    /// When an announcement answering list requests is due, if one is.
    reply_due: Option<Instant>,
    drops: DropCounter,
}

impl<'a> Discovery<'a> {
    pub(crate) fn new(
        channel: MulticastChannel,
        ca: &'a CertificateAuthority,
        announcements: Vec<Announcement>,
        announce_interval: Duration,
        list_reply_interval: Duration,
    ) -> Self {
        Self {
            channel,
            ca,
            announcements,
            announce_interval,
            list_reply_interval,
            last_announced: None,
            reply_due: None,
            drops: DropCounter::default(),
        }
    }

    /// Runs until the channel fails; the caller stops it by dropping the future.
    pub(crate) async fn run(mut self) -> Result<(), ServerError> {
        let mut periodic = tokio::time::interval(self.announce_interval);
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

    async fn handle_datagram(&mut self, bytes: &[u8], from: std::net::SocketAddr) -> Result<(), ServerError> {
        match datagram::decode(bytes) {
            Ok(decoded) => match decoded.datagram.message {
                Message::ListRequest => {
                    tracing::debug!(%from, "list request");
                    self.handle_list_request().await?;
                }
                // Our own announcements come back to us over the loop; other servers' are theirs.
                Message::Announcement(_) => {}
            },
            Err(error) => {
                let reason = if error == DecodeError::Unsigned { DropReason::Unsigned } else { DropReason::Malformed };
                self.drops.record(reason, from, &error, std::time::Instant::now());
            }
        }
        Ok(())
    }

    async fn handle_list_request(&mut self) -> Result<(), ServerError> {
        let now = Instant::now();
        match self.last_announced {
            Some(last) if now < last + self.list_reply_interval => {
                self.reply_due.get_or_insert(last + self.list_reply_interval);
                Ok(())
            }
            _ => self.announce().await,
        }
    }

    /// Signs and multicasts every part of the announcement, each with its own nonce.
    async fn announce(&mut self) -> Result<(), ServerError> {
        for announcement in &self.announcements {
            let nonce = Nonce(gshare_certs::random_bytes::<NONCE_LEN>()?);
            let datagram =
                Datagram { timestamp: unix_now(), nonce, message: Message::Announcement(announcement.clone()) };
            let bytes = datagram.encode(Some(self.ca.signer())).map_err(ServerError::Encode)?;
            if let Err(error) = self.channel.send_to_group(&bytes).await {
                // A send can fail for a moment (an interface going down); the next one may work.
                tracing::warn!(%error, group = %self.channel.group(), "cannot send announcement");
            }
        }
        self.last_announced = Some(Instant::now());
        Ok(())
    }
}
