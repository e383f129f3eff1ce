//! Enrollment: get a certificate for a key made here, proving who we are with a password.
//!
//! 1. Find the server: `--server`, else its multicast announcement.
//! 2. Open TLS and look at the CA the server presents. With `--ca-fingerprint` (or a CA pinned
//!    by an earlier enrollment) it must match, or we stop here; otherwise a person at a
//!    terminal is shown the fingerprint and asked to confirm it. Nothing has been sent yet.
//! 3. Read the password (terminal without echo, or `--password-stdin`).
//! 4. Generate the key pair and a certificate signing request, open TLS again (now requiring
//!    the confirmed CA), send user name, password and request, and read the answer.
//! 5. Check the certificate is for our key and from that CA, and store key (0600), certificate,
//!    CA and server address in the home.

use std::io::{BufRead, Write};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use gshare_common::Connection;
use gshare_common::password::PasswordPrompt;
use gshare_proto::frame::{Frame, Password};
use gshare_proto::{Fingerprint, ServerAddress, UserName};

use crate::discover::{Until, discover};
use crate::home::{ClientSettings, record_enrollment};
use crate::identity::Enrollment;
use crate::tls::{PinnedCaVerifier, enrollment_config, server_name};

/// How long to listen for announcements when no `--server` is given.
const DISCOVERY_WAIT: Duration = Duration::from_secs(2);

/// What `enroll` was asked to do.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    pub user: UserName,
    pub server: Option<ServerAddress>,
    pub ca_fingerprint: Option<Fingerprint>,
    pub password_stdin: bool,
    /// The password itself, for programs that enroll members in-process (benchmarks); the
    /// command line never sets it.
    pub password: Option<String>,
}

/// Why enrollment failed. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("no gshare server answered on {0}; give its address with --server HOST:PORT")]
    NoServer(String),
    #[error("{0} gshare servers answered ({1}); choose one with --server HOST:PORT")]
    SeveralServers(usize, String),
    #[error(
        "cannot confirm the server's CA without a terminal; pass --ca-fingerprint SHA256:... (the operator gets it from `gshare-server fingerprint`)"
    )]
    NoTerminal,
    #[error(
        "the server's CA is {presented}, not the expected {expected}; nothing was sent. Check the fingerprint with your operator"
    )]
    WrongCa { presented: Fingerprint, expected: Fingerprint },
    #[error(
        "the server that answered ({address}) announces the CA {presented}, not the expected {expected}; nothing was sent. Check the fingerprint with your operator, or give the right server with --server HOST:PORT"
    )]
    OnlyOtherCa { address: ServerAddress, presented: Fingerprint, expected: Fingerprint },
    #[error("the CA fingerprint was not confirmed; nothing was sent")]
    NotConfirmed,
    #[error("cannot connect to {server}: {reason}")]
    Connect { server: ServerAddress, reason: String },
    #[error("server refused enrollment: {0}")]
    Refused(String),
    #[error(
        "{server} did not answer the enrollment in {secs} seconds; nothing was recorded here. Try again later, or ask the operator whether the server is overloaded"
    )]
    NoAnswer { server: ServerAddress, secs: u64 },
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    #[error(transparent)]
    Password(#[from] gshare_common::password::PasswordError),
    #[error(transparent)]
    Discover(#[from] crate::discover::DiscoverError),
    #[error(transparent)]
    Certificate(#[from] gshare_certs::CertError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Settings(#[from] gshare_common::ConfigFileError),
    #[error("cannot ask for confirmation: {0}")]
    Terminal(std::io::Error),
}

/// What enrollment produced.
#[derive(Debug)]
pub struct Enrolled {
    pub server: ServerAddress,
    pub ca_fingerprint: Fingerprint,
    pub certificate_fingerprint: Fingerprint,
}

pub async fn enroll(settings: &ClientSettings, options: EnrollOptions) -> Result<Enrolled, EnrollError> {
    let expected = options.ca_fingerprint.or(settings.ca_fingerprint);
    // Refuse before touching the network when nobody could confirm the CA.
    if expected.is_none() && open_terminal().is_err() {
        return Err(EnrollError::NoTerminal);
    }
    let server = match options.server.clone() {
        Some(server) => server,
        None => find_server(settings, expected).await?,
    };

    // Look at the CA without sending anything.
    let verifier = PinnedCaVerifier::new(expected);
    let limit = settings.answer_timeout;
    let probe = connect(&server, &verifier, limit).await;
    let presented = verifier.presented_ca().map(|der| gshare_certs::fingerprint(&der));
    let fingerprint = match (probe, expected, presented) {
        (Ok(_), _, Some(presented)) => presented,
        (Err(_), Some(expected), Some(presented)) if presented != expected => {
            return Err(EnrollError::WrongCa { presented, expected });
        }
        (Err(error), _, _) => return Err(error),
        (Ok(_), _, None) => return Err(EnrollError::Protocol("the server presented no CA".into())),
    };
    if expected.is_none() {
        let label = server.to_string();
        let confirmed = tokio::task::spawn_blocking(move || confirm(&label, fingerprint))
            .await
            .map_err(|e| EnrollError::Terminal(std::io::Error::other(e)))??;
        if !confirmed {
            return Err(EnrollError::NotConfirmed);
        }
    }

    let prompt = format!("Password for {}: ", options.user);
    let from_stdin = options.password_stdin;
    let password = match options.password.clone() {
        Some(password) => password,
        None => tokio::task::spawn_blocking(move || {
            PasswordPrompt { prompt: &prompt, from_stdin, confirm: false, min_chars: 0 }.read()
        })
        .await
        .map_err(|e| EnrollError::Terminal(std::io::Error::other(e)))??,
    };
    let password = Password::new(password).map_err(|e| EnrollError::Protocol(e.to_string()))?;

    let (key_pem, csr) = gshare_certs::authority::member_key_and_request(options.user.as_str())?;
    let verifier = PinnedCaVerifier::new(Some(fingerprint));
    let mut connection = connect(&server, &verifier, limit).await?;
    let request = Frame::EnrollRequest { user: options.user.clone(), password, csr };
    let answer = async {
        connection.write_frame(&request).await?;
        connection.read_frame().await
    };
    let answer = tokio::time::timeout(limit, answer)
        .await
        .map_err(|_| EnrollError::NoAnswer { server: server.clone(), secs: limit.as_secs() })?
        .map_err(|e| EnrollError::Protocol(e.to_string()))?;
    let (certificate_der, ca_der) = match answer {
        Some(Frame::EnrollAccepted { certificate, ca_certificate }) => (certificate, ca_certificate),
        Some(Frame::Refused { reason }) => return Err(EnrollError::Refused(reason.to_string())),
        Some(_) => return Err(EnrollError::Protocol("an unexpected frame".into())),
        None => return Err(EnrollError::Protocol("the server closed the connection without answering".into())),
    };
    if gshare_certs::fingerprint(&ca_der) != fingerprint {
        return Err(EnrollError::Protocol("the server returned a different CA than it presented".into()));
    }
    gshare_certs::authority::check_member_certificate(&ca_der, &certificate_der, &key_pem)?;
    let enrollment = Enrollment { key_pem, certificate_der, ca_der };
    enrollment.save(&settings.home)?;
    record_enrollment(&settings.home, &server, fingerprint)?;
    Ok(Enrolled { server, ca_fingerprint: fingerprint, certificate_fingerprint: enrollment.certificate_fingerprint() })
}

/// The one server whose announcement verifies (against `pinned` if given).
async fn find_server(settings: &ClientSettings, pinned: Option<Fingerprint>) -> Result<ServerAddress, EnrollError> {
    let found = discover(&settings.multicast, pinned, DISCOVERY_WAIT, Until::Window).await?;
    let mut servers: Vec<_> = found.servers.iter().map(|s| (s.address.clone(), s.fingerprint)).collect();
    servers.dedup();
    match servers.as_slice() {
        [] => match (pinned, found.other_cas.as_slice()) {
            (Some(expected), [(address, presented), ..]) => {
                Err(EnrollError::OnlyOtherCa { address: address.clone(), presented: *presented, expected })
            }
            _ => Err(EnrollError::NoServer(settings.multicast.describe())),
        },
        [(address, _)] => Ok(address.clone()),
        many => Err(EnrollError::SeveralServers(
            many.len(),
            many.iter()
                .map(|(address, fingerprint)| format!("{address} with CA {fingerprint}"))
                .collect::<Vec<_>>()
                .join("; "),
        )),
    }
}

async fn connect(
    server: &ServerAddress,
    verifier: &std::sync::Arc<PinnedCaVerifier>,
    limit: Duration,
) -> Result<Connection<tokio_rustls::client::TlsStream<TcpStream>>, EnrollError> {
    let fail = |reason: String| EnrollError::Connect { server: server.clone(), reason };
    let config = enrollment_config(std::sync::Arc::clone(verifier)).map_err(|e| fail(e.to_string()))?;
    let attempt = async {
        let tcp = TcpStream::connect(server.as_str()).await.map_err(|e| fail(e.to_string()))?;
        TlsConnector::from(config).connect(server_name(), tcp).await.map_err(|e| fail(crate::tls::handshake_error(&e)))
    };
    let tls = tokio::time::timeout(limit, attempt).await.map_err(|_| {
        fail(format!("no answer in {} seconds (answer_timeout_secs in client.toml)", limit.as_secs()))
    })??;
    Ok(Connection::new(tls))
}

fn open_terminal() -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty")
}

/// Shows the fingerprint at the terminal and asks for a yes.
fn confirm(server: &str, fingerprint: Fingerprint) -> Result<bool, EnrollError> {
    let terminal = open_terminal().map_err(|_| EnrollError::NoTerminal)?;
    let mut writer = &terminal;
    write!(
        writer,
        "The server at {server} presents the CA\n  {fingerprint}\nIs this the fingerprint your operator published? [y/N] "
    )
    .map_err(EnrollError::Terminal)?;
    let mut answer = String::new();
    std::io::BufReader::new(&terminal).read_line(&mut answer).map_err(EnrollError::Terminal)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}
