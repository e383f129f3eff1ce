//! Speaking the TLS protocol directly, for tests that need what the real client or server will
//! not do: a client without a certificate or with a foreign one, and a fake server that sends
//! hostile offers.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

use gshare_common::Connection;
use gshare_proto::frame::{DeliveryId, Frame, Offer};

/// A runtime for one test's async parts.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client that trusts `ca_der` and presents `identity` (certificate DER, key PEM) if given.
pub fn client_config(ca_der: &[u8], identity: Option<(&[u8], &str)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((certificate, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(certificate.to_vec())],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![gshare_common::ALPN.to_vec()];
    Arc::new(config)
}

/// Connects, sends `frame`, and returns the first answer; `Err` describes a failed handshake
/// or connection.
pub async fn first_answer(
    address: &str,
    config: Arc<rustls::ClientConfig>,
    frame: Frame,
) -> Result<Option<Frame>, String> {
    let tcp = TcpStream::connect(address).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(gshare_certs::SERVER_NAME).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let mut connection = Connection::new(tls);
    connection.write_frame(&frame).await.map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(10), connection.read_frame())
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())
}

/// A real server's identity, from its state directory's `identity/`: the CA certificate, the
/// server certificate and its key.
fn server_identity(identity_dir: &Path) -> (CertificateDer<'static>, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let read = |name: &str| std::fs::read_to_string(identity_dir.join(name)).unwrap();
    let ca = CertificateDer::from_pem_slice(read("ca.crt").as_bytes()).unwrap();
    let certificate = CertificateDer::from_pem_slice(read("server.crt").as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(read("server.key").as_bytes()).unwrap();
    (ca, certificate, key)
}

/// A listener on a free loopback port, ready to hand to a tokio runtime.
fn loopback_listener() -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}

/// One offer the fake server makes: what it declares, and the bytes it then sends.
#[derive(Debug, Clone)]
pub struct HostileOffer {
    pub name: Vec<u8>,
    pub declared_size: u64,
    pub sha256: [u8; 32],
    pub data: Vec<u8>,
}

impl HostileOffer {
    /// An honest offer of `data` under `name`.
    pub fn honest(name: &[u8], data: &[u8]) -> Self {
        Self { name: name.to_vec(), declared_size: data.len() as u64, sha256: sha256(data), data: data.to_vec() }
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
    out
}

/// How the member answered one offer, as frame names: `decline`, `resume 0`, `ack`, `failed`,
/// `closed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub name: Vec<u8>,
    pub answers: Vec<String>,
}

/// A TLS server with a real server's identity that plays hostile offers to the first session.
#[derive(Debug)]
pub struct FakeServer {
    pub address: SocketAddr,
    pub reports: Receiver<Report>,
}

impl FakeServer {
    /// Serves with the identity in `identity_dir` (ca.crt, server.crt, server.key); session
    /// `n` plays `sessions[n]`, and sessions after the last just idle.
    pub fn start(identity_dir: &Path, sessions: Vec<Vec<HostileOffer>>) -> Self {
        let (ca, certificate, key) = server_identity(identity_dir);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build().unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![certificate, ca], key)
            .unwrap();
        config.alpn_protocols = vec![gshare_common::ALPN.to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (listener, address) = loopback_listener();
        let (sender, reports) = channel();
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                let mut scripts = std::collections::VecDeque::from(sessions);
                loop {
                    let Ok((tcp, _)) = listener.accept().await else { return };
                    let Ok(tls) = acceptor.accept(tcp).await else { continue };
                    let mut connection = Connection::new(tls);
                    let Ok(Some(Frame::Subscribe { .. } | Frame::SubscribeSwarm { .. })) =
                        connection.read_frame().await
                    else {
                        continue;
                    };
                    if connection.write_frame(&Frame::Subscribed).await.is_err() {
                        continue;
                    }
                    match scripts.pop_front() {
                        Some(script) => play(&mut connection, script, &sender).await,
                        // Later sessions (the member reconnecting) just idle.
                        None => while let Ok(Some(_)) = connection.read_frame().await {},
                    }
                }
            });
        });
        Self { address, reports }
    }

    /// The report of the next offer, waiting up to `timeout`.
    pub fn next_report(&self, timeout: Duration) -> Report {
        self.reports.recv_timeout(timeout).expect("the fake server reports every offer")
    }
}

async fn play<S>(connection: &mut Connection<S>, offers: Vec<HostileOffer>, reports: &Sender<Report>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for (index, offer) in offers.into_iter().enumerate() {
        let delivery = DeliveryId(1000 + index as u64);
        let mut answers = Vec::new();
        let frame = Frame::Offer(Offer {
            delivery,
            group: "Developers".parse().unwrap(),
            name: offer.name.clone(),
            size: offer.declared_size,
            sha256: offer.sha256,
        });
        let mut open = connection.write_frame(&frame).await.is_ok();
        while open {
            let answer = tokio::time::timeout(Duration::from_secs(10), connection.read_frame()).await;
            match answer {
                Ok(Ok(Some(Frame::Resume { offset, .. }))) => {
                    answers.push(format!("resume {offset}"));
                    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(offer.data.len());
                    if start < offer.data.len() {
                        let data = Frame::Data { delivery, bytes: offer.data[start..].to_vec() };
                        open = connection.write_frame(&data).await.is_ok();
                    }
                    if offer.data.len() < usize::try_from(offer.declared_size).unwrap_or(usize::MAX) {
                        // Less data than declared: stop sending, as a broken server would, and
                        // see what the member makes of it.
                        let _ = connection.shutdown().await;
                    }
                }
                Ok(Ok(Some(Frame::Decline { .. }))) => {
                    answers.push("decline".into());
                    break;
                }
                Ok(Ok(Some(Frame::Ack { .. }))) => {
                    answers.push("ack".into());
                    break;
                }
                Ok(Ok(Some(Frame::Failed { .. }))) => {
                    answers.push("failed".into());
                    break;
                }
                Ok(Ok(Some(Frame::Ping | Frame::Pong))) => {}
                Ok(Ok(Some(_))) => answers.push("unexpected".into()),
                Ok(Ok(None)) | Ok(Err(_)) => {
                    answers.push("closed".into());
                    open = false;
                }
                Err(_) => {
                    answers.push("silent".into());
                    open = false;
                }
            }
        }
        let _ = reports.send(Report { name: offer.name, answers });
        if !open {
            return;
        }
    }
    // Keep the session open until the member leaves.
    while let Ok(Some(_)) = connection.read_frame().await {}
}

/// A TLS server with a real server's identity that completes every handshake (no client
/// certificate asked) and then never answers: what a hung or overloaded server looks like.
#[derive(Debug)]
pub struct SilentServer {
    pub address: SocketAddr,
}

impl SilentServer {
    pub fn start(identity_dir: &Path) -> Self {
        let (ca, certificate, key) = server_identity(identity_dir);
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certificate, ca], key)
            .unwrap();
        config.alpn_protocols = vec![gshare_common::ALPN.to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (listener, address) = loopback_listener();
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                let mut held = Vec::new();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else { return };
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        held.push(tls); // read nothing, answer nothing, close nothing
                    }
                }
            });
        });
        Self { address }
    }
}

/// A member session as a hostile member runs it: subscribed, answering its first offer with
/// `Resume { offset: 0 }`, then reading nothing more.
pub type MemberStream = Connection<tokio_rustls::client::TlsStream<TcpStream>>;

/// Connects with `config` and subscribes to `groups`; the connection once subscribed, or the
/// answer that was not `Subscribed`.
pub async fn subscribed(
    address: &str,
    config: Arc<rustls::ClientConfig>,
    groups: &[&str],
) -> Result<MemberStream, String> {
    let tcp = TcpStream::connect(address).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(gshare_certs::SERVER_NAME).unwrap();
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let mut connection = Connection::new(tls);
    let groups = groups.iter().map(|g| g.parse().unwrap()).collect();
    connection.write_frame(&Frame::Subscribe { groups }).await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(10), connection.read_frame()).await {
        Ok(Ok(Some(Frame::Subscribed))) => Ok(connection),
        other => Err(format!("{other:?}")),
    }
}

/// Reads up to the next offer and asks for all of it; the offer.
pub async fn take_offer(connection: &mut MemberStream) -> Offer {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), connection.read_frame()).await {
            Ok(Ok(Some(Frame::Offer(offer)))) => {
                connection.write_frame(&Frame::Resume { delivery: offer.delivery, offset: 0 }).await.unwrap();
                return offer;
            }
            Ok(Ok(Some(Frame::Ping))) => connection.write_frame(&Frame::Pong).await.unwrap(),
            // The list of deliveries owed, sent once after `Subscribed`.
            Ok(Ok(Some(Frame::Owed { .. }))) => {}
            other => panic!("expected an offer, got {other:?}"),
        }
    }
}

/// Connects without a client certificate, sends `bytes` as they are, and returns the first
/// answer (waiting up to `limit`).
pub async fn answer_to_raw_bytes(
    address: &str,
    config: Arc<rustls::ClientConfig>,
    bytes: &[u8],
    limit: Duration,
) -> Result<Option<Frame>, String> {
    use tokio::io::AsyncWriteExt;
    let tcp = TcpStream::connect(address).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(gshare_certs::SERVER_NAME).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| e.to_string())?;
    tls.write_all(bytes).await.map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    let mut connection = Connection::new(tls);
    tokio::time::timeout(limit, connection.read_frame())
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())
}
