//! The local admin socket, `<state_dir>/admin.sock` (mode 0600, in a 0700 directory): how
//! `gshare-server send` hands files to the running server.
//!
//! One JSON object per line each way. The request:
//!
//! ```json
//! {"send": {"group": "Developers", "files": [{"path": "/abs/report.pdf", "name": "report.pdf"}], "wait": true}}
//! ```
//!
//! Each file's `name` is what members receive it under: its file name, or its path inside a
//! sent directory tree (`project/src/main.rs`; see [`crate::sendlist`]).
//!
//! Answers, in order: one `recorded` per file (its deliveries, one per member), then with
//! `wait` any number of `progress`, `delivered` and `failed`, and finally `done` listing the
//! deliveries still pending (members offline); or a single `error`. Only the server's own user
//! can reach the socket, so it is trusted, but its input is still parsed with care.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use gshare_proto::{GroupName, RelativePath, UserName};

use crate::ServerError;
use crate::sendlist::SendFile;
use crate::session::SPOOL_NOT_WRITTEN;
use crate::spool::SpoolPin;
use crate::state::{Event, Server, blocking};
use crate::store::unix_now;

/// File name of the socket inside the state directory.
pub const SOCKET_FILE: &str = "admin.sock";
/// Longest request line accepted, in bytes.
/// (A send of [`MAX_FILES_PER_SEND`](crate::sendlist::MAX_FILES_PER_SEND) files with long paths fits.)
const MAX_REQUEST: u64 = 64 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Send {
        group: String,
        files: Vec<SendFile>,
        wait: bool,
    },
    Online,
    /// One certificate was revoked in the database: close its open sessions now.
    CertificateRevoked {
        fingerprint: String,
    },
    /// These deliveries were cancelled in the database: stop their transfers, let the spool go.
    DeliveriesCancelled {
        deliveries: Vec<u64>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// `file` is the number `status` shows the file under (`#7`); 0 from a server that
    /// predates it.
    Recorded {
        name: String,
        size: u64,
        sha256: String,
        #[serde(default)]
        file: u64,
        deliveries: Vec<DeliveryRef>,
    },
    Progress {
        delivery: u64,
        user: String,
        bytes: u64,
        size: u64,
    },
    Delivered {
        delivery: u64,
        user: String,
    },
    Failed {
        delivery: u64,
        user: String,
        reason: String,
        retrying: bool,
    },
    Done {
        pending: Vec<DeliveryRef>,
    },
    Online {
        users: Vec<String>,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryRef {
    pub id: u64,
    pub user: String,
}

/// Binds the socket, refusing to steal it from another running server.
pub(crate) async fn bind(state_dir: &Path) -> Result<UnixListener, ServerError> {
    let path = state_dir.join(SOCKET_FILE);
    let error = |source| ServerError::Admin { path: path.clone(), source };
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(error(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another gshare-server is running with this state directory",
            )));
        }
        std::fs::remove_file(&path).map_err(error)?;
    }
    let listener = UnixListener::bind(&path).map_err(error)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(error)?;
    Ok(listener)
}

/// Serves admin connections until the task is dropped.
pub(crate) async fn serve(server: Arc<Server>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let server = Arc::clone(&server);
                tokio::spawn(async move {
                    if let Err(error) = handle(&server, stream).await {
                        tracing::warn!(%error, "admin connection failed");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "cannot accept an admin connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(server: &Arc<Server>, stream: UnixStream) -> std::io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(reader, MAX_REQUEST));
    // A request longer than the limit is cut and then fails to parse.
    reader.read_line(&mut line).await?;
    let request: Request = match serde_json::from_str(&line) {
        Ok(request) => request,
        Err(error) => return write(&mut writer, &Answer::Error { message: format!("bad request: {error}") }).await,
    };
    match request {
        Request::Send { group, files, wait } => send(server, &mut writer, &group, &files, wait).await,
        Request::CertificateRevoked { fingerprint } => {
            let answer = match fingerprint.parse::<gshare_proto::Fingerprint>() {
                Ok(fingerprint) => {
                    let closed = server.close_certificate_sessions(&fingerprint);
                    tracing::warn!(certificate = %fingerprint, sessions = closed, "certificate revoked; its sessions closed");
                    Answer::Done { pending: Vec::new() }
                }
                Err(error) => Answer::Error { message: format!("{fingerprint}: {error}") },
            };
            write(&mut writer, &answer).await
        }
        Request::DeliveriesCancelled { deliveries } => {
            server.cancel_deliveries(&deliveries);
            crate::session::release_spool(server).await;
            tracing::warn!(deliveries = deliveries.len(), "deliveries cancelled by the operator");
            write(&mut writer, &Answer::Done { pending: Vec::new() }).await
        }
        Request::Online => {
            let users = server.online_users().into_iter().map(|u| u.to_string()).collect();
            write(&mut writer, &Answer::Online { users }).await
        }
    }
}

async fn write(writer: &mut (impl AsyncWrite + Unpin), answer: &Answer) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(answer).map_err(std::io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await
}

/// Room kept free beside what a send spools: piece hashes, the database's growth, and a margin
/// for everything else on the disk.
const SPOOL_HEADROOM: u64 = 16 * 1024 * 1024;

/// Why the spool cannot take `files` now, if it cannot: their sizes (plus headroom) against
/// the space free on its filesystem. A file that cannot be read is left to the copy to report.
fn spool_cannot_hold(server: &Server, files: &[(PathBuf, RelativePath)]) -> Option<String> {
    let needed: u64 = files.iter().filter_map(|(path, _)| std::fs::metadata(path).ok()).map(|m| m.len()).sum();
    let free = server.spool.free_bytes().ok()?;
    (needed.saturating_add(SPOOL_HEADROOM) > free).then(|| {
        format!(
            "the spool ({}) has {free} bytes free, too few for the {needed} bytes of this send; nothing was recorded; free space there (or send less) and try again",
            server.spool.dir().display()
        )
    })
}

async fn send(
    server: &Arc<Server>,
    writer: &mut (impl AsyncWrite + Unpin),
    group: &str,
    files: &[SendFile],
    wait: bool,
) -> std::io::Result<()> {
    let fail = |message: String| Answer::Error { message };
    let Some(group) = GroupName::new(group).ok().filter(|g| server.config.groups.contains(g)) else {
        return write(writer, &fail(format!("there is no group {group:?} on this server"))).await;
    };
    // Check every name before spooling anything, so a bad one sends nothing.
    let mut named = Vec::new();
    for SendFile { path, name } in files {
        match RelativePath::new(name) {
            Ok(name) => named.push((path.clone(), name)),
            Err(error) => return write(writer, &fail(format!("{}: cannot be sent: {error}", path.display()))).await,
        }
    }
    // A batch the spool cannot hold is refused whole, before anything is copied.
    if let Some(refusal) = spool_cannot_hold(server, &named) {
        return write(writer, &fail(refusal)).await;
    }
    // Subscribe before recording, so no event about these deliveries is missed.
    let mut events = server.events.subscribe();
    let mut outstanding: HashMap<u64, UserName> = HashMap::new();
    // Once the request is accepted, a closed admin connection (the operator pressed Ctrl-C)
    // changes nothing the server does: every file is still recorded and delivered.
    let mut gone: Option<std::io::Error> = None;
    // Every file is recorded and offered without waiting for the spool copies before it: each
    // copy goes to the disk in the background, and the sender hears "recorded" for each, in
    // order, once its copy is there.
    let mut recorded_files: VecDeque<Recorded> = VecDeque::new();
    let mut unwritten: Vec<(String, std::io::Error)> = Vec::new();
    let mut refusal = None;
    for (path, name) in named {
        let spool = server.spool.clone();
        let max = server.config.max_file_bytes;
        let source = path.clone();
        // The pin keeps the entry from release until the record below is committed.
        let pin = match tokio::task::spawn_blocking(move || spool.ingest(&source, max)).await {
            Ok(Ok(pin)) => pin,
            Ok(Err(error)) => {
                refusal = Some(error.to_string());
                break;
            }
            Err(error) => {
                refusal = Some(format!("spooling failed: {error}"));
                break;
            }
        };
        let spooled = pin.spooled.clone();
        let (hex, size, file_group, file_name) = (spooled.hex(), spooled.size, group.clone(), name.to_string());
        let recorded =
            match blocking(server, move |store| store.record_file(&hex, &file_name, size, &file_group, unix_now()))
                .await
            {
                Ok(recorded) => recorded,
                Err(error) => {
                    refusal = Some(format!("cannot record {name}: {error}"));
                    break;
                }
            };
        tracing::info!(file = %name, size, sha256 = %spooled.hex(), group = %group, members = recorded.deliveries.len(), "file recorded");
        let deliveries: Vec<DeliveryRef> =
            recorded.deliveries.iter().map(|(id, user)| DeliveryRef { id: *id, user: user.to_string() }).collect();
        outstanding.extend(recorded.deliveries);
        // Members may take the file from here on, while its spool copy goes to the disk behind
        // this and the batch's later files; the sender hears that it is recorded only once it
        // is there.
        server.signal_work();
        let answer = Answer::Recorded {
            name: name.to_string(),
            size,
            sha256: spooled.hex(),
            file: recorded.file_id,
            deliveries,
        };
        let syncing = pin.unsynced.then(|| {
            let (spool, hex) = (server.spool.clone(), pin.spooled.hex());
            tokio::task::spawn_blocking(move || spool.make_durable(&hex))
        });
        recorded_files.push_back(Recorded { name, pin, answer, syncing });
        // Answered in order as their copies land, with at most a few copies on their way at
        // once (a batch of thousands of small files holds no thousands of threads).
        while recorded_files
            .front()
            .is_some_and(|front| recorded_files.len() > COPIES_ON_THEIR_WAY || front.is_durable())
        {
            if let Some(front) = recorded_files.pop_front() {
                confirm(server, writer, front, &mut gone, &mut unwritten).await;
            }
        }
    }
    for recorded in recorded_files {
        confirm(server, writer, recorded, &mut gone, &mut unwritten).await;
    }
    // A file that could not be spooled or recorded ended the batch; the sender hears of it
    // after the files recorded before it.
    let mut failures: Vec<String> = Vec::new();
    if let Some((_, error)) = unwritten.first() {
        let names: Vec<&str> = unwritten.iter().map(|(name, _)| name.as_str()).collect();
        let (dir, them) = (server.spool.dir().display(), if names.len() == 1 { "it" } else { "them" });
        failures
            .push(format!("cannot write {} to the spool's disk ({dir}): {error}; send {them} again", names.join(", ")));
    }
    failures.extend(refusal);
    if !failures.is_empty() {
        return write(writer, &fail(failures.join("; "))).await;
    }
    if let Some(error) = gone {
        tracing::info!(%error, "the admin connection closed during a send; every file was recorded all the same");
        return Ok(());
    }
    if wait {
        follow(server, writer, &group, &mut events, &mut outstanding).await?;
    }
    let mut pending: Vec<DeliveryRef> =
        outstanding.into_iter().map(|(id, user)| DeliveryRef { id, user: user.to_string() }).collect();
    pending.sort_by_key(|d| d.id);
    write(writer, &Answer::Done { pending }).await
}

/// Most spool copies of one `send` going to the disk at once.
const COPIES_ON_THEIR_WAY: usize = 8;

/// A file of a `send` recorded and offered, whose spool copy may still be on its way to the
/// disk.
struct Recorded {
    name: RelativePath,
    /// Keeps the entry from release until the sender has heard.
    pin: SpoolPin,
    answer: Answer,
    /// The copy going to the disk, if it was not there already.
    syncing: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Recorded {
    fn is_durable(&self) -> bool {
        self.syncing.as_ref().is_none_or(tokio::task::JoinHandle::is_finished)
    }
}

/// Waits for `recorded`'s spool copy to reach the disk, then tells the sender (unless the
/// sender is `gone`). A copy the disk refuses fails the file's deliveries and joins
/// `unwritten`; the batch's other files go on.
async fn confirm(
    server: &Arc<Server>,
    writer: &mut (impl AsyncWrite + Unpin),
    recorded: Recorded,
    gone: &mut Option<std::io::Error>,
    unwritten: &mut Vec<(String, std::io::Error)>,
) {
    let Recorded { name, pin, answer, syncing } = recorded;
    if let Some(syncing) = syncing
        && let Err(error) = syncing.await.map_err(std::io::Error::other).and_then(|result| result)
    {
        tracing::error!(file = %name, %error, "cannot write a spool copy to the disk");
        crate::session::fail_lost_entry(server, &pin.spooled.hex(), SPOOL_NOT_WRITTEN).await;
        unwritten.push((name.to_string(), error));
        return;
    }
    drop(pin);
    if gone.is_none() {
        *gone = write(writer, &answer).await.err();
    }
}

/// Reports events about `outstanding` deliveries until each is finished or belongs to a member
/// who is not connected (and so will get it later).
async fn follow(
    server: &Arc<Server>,
    writer: &mut (impl AsyncWrite + Unpin),
    group: &GroupName,
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    outstanding: &mut HashMap<u64, UserName>,
) -> std::io::Result<()> {
    loop {
        if outstanding.values().all(|user| !server.is_receiving(user, group)) {
            return Ok(());
        }
        let event = match tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
            Err(_) => continue, // look again: a member may have gone offline without an event
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return Ok(()),
            Ok(Ok(event)) => event,
        };
        let answer = match event {
            Event::Progress { delivery, user, bytes, size } if outstanding.contains_key(&delivery) => {
                Answer::Progress { delivery, user: user.to_string(), bytes, size }
            }
            Event::Delivered { delivery, user } if outstanding.remove(&delivery).is_some() => {
                Answer::Delivered { delivery, user: user.to_string() }
            }
            Event::Failed { delivery, user, reason, retrying } if outstanding.contains_key(&delivery) => {
                if !retrying {
                    outstanding.remove(&delivery);
                }
                Answer::Failed { delivery, user: user.to_string(), reason, retrying }
            }
            _ => continue,
        };
        write(writer, &answer).await?;
    }
}
