//! Running one health probe against one backend: a TCP connect, or an HTTP/1.1 GET made
//! with hyper over a [`TcpStream`] this module connects itself (from a chosen source
//! address when asked), in TLS when the check asks for it (HTTPS: keepalived's `SSL_GET`,
//! HAProxy's `check-ssl`; rustls with the ring provider).
//!
//! Every probe is bounded in time and in memory:
//! - the whole probe (connect, request, response) runs under one `tokio::time::timeout`,
//!   and the HTTP connection is driven inside that future: nothing outlives the probe;
//! - the response head (status line and headers) may take at most [`MAX_HEAD`] bytes and
//!   [`HEADER_LINES`] header lines, and the body is read (only when
//!   [`ProbeKind::Http::body_contains`] is set) frame by frame up to [`MAX_BODY`] bytes: a
//!   server streaming an endless response cannot make a probe hang or grow.
//!
//! hyper frames the response: `Content-Length`, chunked bodies (decoded before they are
//! searched) and bodies that end when the server closes. Deliberate simplifications for a
//! health check:
//! - no redirects are followed: a 3xx is judged by the expected status range like any other;
//! - a body cut short (the server closed early, or a malformed chunk) is searched as far
//!   as it was received;
//! - 1xx interim responses are skipped by hyper; the final status is judged;
//! - over TLS, the server's certificate is checked only when [`Tls::verify`] says so (the
//!   CA file is read at each probe, so a replaced file takes effect at the next one).

use std::{
    io,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::{BodyExt as _, Empty};
use hyper::{
    Request, Response, Uri,
    body::{Bytes, Incoming},
    client::conn::http1,
    header::{CONNECTION, HOST, HeaderValue, USER_AGENT},
};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpSocket, TcpStream},
};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::{CryptoProvider, ring},
        pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _},
    },
};

/// Most bytes of response head (status line and headers) an HTTP probe reads.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most bytes of response body an HTTP probe reads (only when `body_contains` is set).
pub const MAX_BODY: usize = 64 * 1024;
/// Most header lines in a response head (hyper's default).
const HEADER_LINES: usize = 100;

/// What a probe checks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeKind {
    /// A TCP connect succeeds.
    Tcp,
    /// An HTTP/1.1 GET of `path` answers with a status in `expect` (inclusive range),
    /// and, when `body_contains` is set, a body containing that text.
    Http {
        /// Request target, e.g. `/healthz` (empty means `/`).
        path: String,
        /// Accepted status codes, both ends included.
        expect: (u16, u16),
        /// `Host` header; `None` sends the target's `ip:port` (`[ip]:port` for IPv6).
        host: Option<String>,
        /// Text the body must contain (searched in its first [`MAX_BODY`] bytes).
        body_contains: Option<String>,
        /// `Some`: the request goes in TLS (HTTPS).
        tls: Option<Tls>,
    },
}

/// TLS for an HTTP check. The server name sent (SNI) and checked is the `Host` header's
/// name without its port, or the target's IP address when there is no `Host` or it is
/// not a valid DNS name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tls {
    /// How the server's certificate is checked.
    pub verify: Verify,
}

/// How an HTTPS check treats the server's certificate.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verify {
    /// Not checked, as keepalived's `SSL_GET` and HAProxy's `verify none` do: the check
    /// is encrypted, but does not authenticate the server. The handshake's signatures are
    /// still verified.
    None,
    /// Checked against the CA certificates (PEM) in this file, for the server name.
    CaFile(PathBuf),
}

/// The outcome of one probe. `Fail` carries a short human reason that operators read in
/// logs, exactly in these forms where they apply: "connection refused", "timeout after 500 ms",
/// "HTTP 503", "HTTP 200 but body lacks \"ok\"", "connection reset", "bad HTTP response", ...
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// The check passed.
    Up,
    /// The check failed, for this reason.
    Fail(String),
}

impl ProbeResult {
    /// Whether the check passed.
    pub fn is_up(&self) -> bool {
        matches!(self, ProbeResult::Up)
    }
}

impl std::fmt::Display for ProbeResult {
    /// `ok`, or the failure reason.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProbeResult::Up => f.write_str("ok"),
            ProbeResult::Fail(reason) => f.write_str(reason),
        }
    }
}

/// Why a probe failed. The `Display` text is the reason operators read (the `Fail` of
/// [`ProbeResult`]); the cause, when there is one, stays in the source chain.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    /// Opening, binding or connecting the socket failed.
    #[error("{}", io_reason(.source))]
    Connect {
        #[source]
        source: io::Error,
    },
    /// The source address is IPv4 and the target IPv6, or the other way round.
    #[error("source address {from} is not of the target's address family")]
    SourceFamily { from: SocketAddr },
    /// The configured path cannot be a request target.
    #[error("invalid HTTP path")]
    InvalidPath,
    /// The configured (or derived) Host header cannot be sent.
    #[error("invalid Host header")]
    InvalidHost,
    /// The CA file of a verified HTTPS check cannot be used.
    #[error("cannot read CA file {}: {source}", path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The CA file of a verified HTTPS check holds no usable certificate.
    #[error("no CA certificate in {}", path.display())]
    NoCaCertificate { path: PathBuf },
    /// The TLS handshake failed (its rustls error, or the socket's, is the source).
    #[error("{}", tls_reason(.source))]
    TlsHandshake {
        #[source]
        source: io::Error,
    },
    /// The socket failed during the exchange (reset, ...); the system error is in the
    /// source chain.
    #[error("{}", socket_error(.source).map_or_else(|| BAD_RESPONSE.to_owned(), io_reason))]
    Transport {
        #[source]
        source: hyper::Error,
    },
    /// The server closed the connection without sending a byte.
    #[error("connection closed before response")]
    ClosedBeforeResponse {
        #[source]
        source: hyper::Error,
    },
    /// The reply is not HTTP, not well-formed, or its head is too large.
    #[error("{BAD_RESPONSE}")]
    BadResponse {
        #[source]
        source: hyper::Error,
    },
    /// The status is outside the expected range.
    #[error("HTTP {status}")]
    Status { status: u16 },
    /// The status is as expected, but the body's first [`MAX_BODY`] bytes lack the text.
    #[error("HTTP {status} but body lacks {needle:?}")]
    BodyLacks { status: u16, needle: String },
    /// The probe did not finish in time.
    #[error("timeout after {} ms", .after.as_millis())]
    Timeout { after: Duration },
}

/// The reason given for a response that is not HTTP, or not well-formed HTTP.
const BAD_RESPONSE: &str = "bad HTTP response";

/// Runs one probe against `target` with an overall `timeout` (connect + request + response),
/// from the kernel's choice of local address. See [`probe_from`].
pub async fn probe(kind: &ProbeKind, target: SocketAddr, timeout: Duration) -> ProbeResult {
    probe_from(kind, target, None, timeout).await
}

/// Runs one probe against `target` with an overall `timeout` (connect + request + response).
///
/// `source`: local address to bind before connecting (`None` = kernel's choice), of the
/// target's address family; give it port 0 unless a fixed port is really wanted (two
/// probes cannot share one).
pub async fn probe_from(
    kind: &ProbeKind,
    target: SocketAddr,
    source: Option<SocketAddr>,
    timeout: Duration,
) -> ProbeResult {
    let outcome = match tokio::time::timeout(timeout, run(kind, target, source)).await {
        Ok(outcome) => outcome,
        Err(_elapsed) => Err(ProbeError::Timeout { after: timeout }),
    };
    match outcome {
        Ok(()) => ProbeResult::Up,
        Err(e) => ProbeResult::Fail(e.to_string()),
    }
}

/// The probe without its timeout.
async fn run(
    kind: &ProbeKind,
    target: SocketAddr,
    source: Option<SocketAddr>,
) -> Result<(), ProbeError> {
    let ProbeKind::Http {
        path,
        expect,
        host,
        body_contains,
        tls,
    } = kind
    else {
        connect(target, source).await?;
        return Ok(());
    };
    // Checked before connecting: a probe that cannot be sent does not touch the backend.
    let host = host.clone().unwrap_or_else(|| target.to_string());
    let request = request(path, &host)?;
    let tls = match tls {
        Some(tls) => Some((client_config(&tls.verify)?, server_name(&host, target))),
        None => None,
    };
    let stream = connect(target, source).await?;
    let (expect, body_contains) = (*expect, body_contains.as_deref());
    match tls {
        None => http(stream, request, expect, body_contains).await,
        Some((config, name)) => {
            let stream = TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|source| ProbeError::TlsHandshake { source })?;
            http(stream, request, expect, body_contains).await
        }
    }
}

/// The TLS client configuration for `verify`: ring, TLS 1.2 and 1.3, ALPN `http/1.1`.
fn client_config(verify: &Verify) -> Result<Arc<ClientConfig>, ProbeError> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let mut config = match verify {
        Verify::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
        Verify::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            let ca_file = |source| ProbeError::CaFile {
                path: path.clone(),
                source,
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(ca_file)? {
                // A certificate rustls cannot use as an anchor is skipped, as a browser would.
                let _ = roots.add(cert.map_err(ca_file)?);
            }
            if roots.is_empty() {
                return Err(ProbeError::NoCaCertificate { path: path.clone() });
            }
            builder.with_root_certificates(roots)
        }
    }
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS server name for a `Host` header (its name without the port), or the target's
/// address when `host` is no DNS name or IP address.
fn server_name(host: &str, target: SocketAddr) -> ServerName<'static> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ServerName::from(ip);
    }
    if let Ok(addr) = host.parse::<SocketAddr>() {
        return ServerName::from(addr.ip());
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = name.parse::<IpAddr>() {
        return ServerName::from(ip);
    }
    ServerName::try_from(name.to_owned()).unwrap_or_else(|_| ServerName::from(target.ip()))
}

/// A certificate verifier that accepts any certificate (for [`Verify::None`]) but still
/// checks that the handshake is signed by the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The reason for a failed TLS handshake: the socket's ("connection reset"), or
/// "TLS handshake failed: " and rustls's ("invalid peer certificate: UnknownIssuer").
fn tls_reason(e: &io::Error) -> String {
    if e.raw_os_error().is_some() {
        return io_reason(e);
    }
    match e.get_ref() {
        Some(inner) => format!("TLS handshake failed: {inner}"),
        None => format!("TLS handshake failed: {}", e.kind()),
    }
}

/// Connects to `target`, from `source` when given.
async fn connect(target: SocketAddr, source: Option<SocketAddr>) -> Result<TcpStream, ProbeError> {
    let io = |source| ProbeError::Connect { source };
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(io)?;
    if let Some(from) = source {
        if from.is_ipv4() != target.is_ipv4() {
            return Err(ProbeError::SourceFamily { from });
        }
        socket.bind(from).map_err(io)?;
    }
    socket.connect(target).await.map_err(io)
}

/// The request, or an error when `path` or `host` would break the request's framing.
/// The header names go out title-cased, in this order:
/// `GET {path} HTTP/1.1`, `Host`, `User-Agent: lb-health`, `Connection: close`.
fn request(path: &str, host: &str) -> Result<Request<Empty<Bytes>>, ProbeError> {
    let path = if path.is_empty() { "/" } else { path };
    let breaks_framing = |s: &str| s.chars().any(|c| c.is_control() || c.is_whitespace());
    if breaks_framing(path) {
        return Err(ProbeError::InvalidPath);
    }
    let uri: Uri = path.parse().map_err(|_| ProbeError::InvalidPath)?;
    if host.is_empty() || breaks_framing(host) {
        return Err(ProbeError::InvalidHost);
    }
    let host = HeaderValue::from_str(host).map_err(|_| ProbeError::InvalidHost)?;
    Request::get(uri)
        .header(HOST, host)
        .header(USER_AGENT, "lb-health")
        .header(CONNECTION, "close")
        .body(Empty::new())
        .map_err(|_| ProbeError::InvalidPath)
}

/// Sends `request` on `stream` and judges the response.
async fn http<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    request: Request<Empty<Bytes>>,
    expect: (u16, u16),
    body_contains: Option<&str>,
) -> Result<(), ProbeError> {
    let received = Arc::new(AtomicBool::new(false));
    let stream = Watched {
        inner: stream,
        received: Arc::clone(&received),
    };
    let (mut sender, connection) = http1::Builder::new()
        .title_case_headers(true)
        .max_buf_size(MAX_HEAD)
        .max_header_size(MAX_HEAD)
        .max_headers(HEADER_LINES)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|source| ProbeError::BadResponse { source })?;
    let exchange = async {
        let response = sender.send_request(request).await.map_err(|source| {
            if socket_error(&source).is_some() {
                ProbeError::Transport { source }
            } else if (source.is_incomplete_message() || source.is_canceled())
                && !received.load(Ordering::Relaxed)
            {
                ProbeError::ClosedBeforeResponse { source }
            } else {
                ProbeError::BadResponse { source }
            }
        })?;
        judge(response, expect, body_contains).await
    };
    // hyper's connection future does the I/O: poll it alongside the exchange. When it ends
    // first (the server closed, or an error), the exchange holds the outcome.
    let mut connection = pin!(connection);
    let mut exchange = pin!(exchange);
    tokio::select! {
        biased;
        outcome = &mut exchange => outcome,
        _ = &mut connection => exchange.await,
    }
}

/// Judges a response: its status, then (when asked) its body.
async fn judge(
    response: Response<Incoming>,
    expect: (u16, u16),
    body_contains: Option<&str>,
) -> Result<(), ProbeError> {
    let status = response.status().as_u16();
    if !(expect.0..=expect.1).contains(&status) {
        return Err(ProbeError::Status { status });
    }
    let Some(needle) = body_contains else {
        return Ok(());
    };
    let needle_bytes = needle.as_bytes();
    let mut incoming = response.into_body();
    let mut body = Vec::new();
    // Bytes of `body` before `searched` cannot start a match: each frame only searches anew
    // from where a match could still begin, and a found needle ends the probe early.
    let mut searched = 0;
    loop {
        if contains(&body[searched..], needle_bytes) {
            return Ok(());
        }
        searched = body
            .len()
            .saturating_sub(needle_bytes.len().saturating_sub(1));
        if body.len() >= MAX_BODY {
            break;
        }
        match incoming.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = MAX_BODY - body.len();
                    body.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            // A socket error fails the probe; a body cut short is searched as it is.
            Some(Err(source)) if socket_error(&source).is_some() => {
                return Err(ProbeError::Transport { source });
            }
            Some(Err(_)) => break,
        }
    }
    Err(ProbeError::BodyLacks {
        status,
        needle: needle.to_owned(),
    })
}

/// Whether `needle` occurs in `haystack` (an empty needle always does).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The system error (reset, unreachable, ...) under a hyper error, if any. hyper also
/// reports framing problems (a malformed chunk) as I/O errors, without a system code:
/// those are not socket errors.
fn socket_error(e: &hyper::Error) -> Option<&io::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && io.raw_os_error().is_some()
        {
            return Some(io);
        }
        cause = e.source();
    }
    None
}

/// A short reason for an I/O error, as operators read it in logs: "connection refused",
/// "connection reset", otherwise the system's message ("no route to host"), or the
/// error kind when there is no system error.
fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
        _ => match e.raw_os_error() {
            Some(code) => {
                let text = e.to_string();
                let text = text
                    .strip_suffix(&format!(" (os error {code})"))
                    .unwrap_or(&text);
                let mut chars = text.chars();
                match chars.next() {
                    Some(first) => first.to_ascii_lowercase().to_string() + chars.as_str(),
                    None => e.kind().to_string(),
                }
            }
            None => e.kind().to_string(),
        },
    }
}

/// A stream that notes whether any byte was received, to tell a server that closed
/// without answering from one that closed in the middle of its response head.
struct Watched<S> {
    inner: S,
    received: Arc<AtomicBool>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.received.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
        task::JoinHandle,
    };

    use super::*;

    /// A timeout long enough that only a hung probe reaches it.
    const LONG: Duration = Duration::from_secs(10);

    /// A listener on 127.0.0.1 at a port the kernel picks, and its address.
    async fn listen() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        (listener, addr)
    }

    /// A server on 127.0.0.1 that accepts one connection and hands it to `handler`; its
    /// address, and the handle of its task.
    async fn serve_one<F, T>(
        handler: impl FnOnce(TcpStream) -> F + Send + 'static,
    ) -> (SocketAddr, JoinHandle<T>)
    where
        F: Future<Output = T> + Send,
        T: Send + 'static,
    {
        let (listener, addr) = listen().await;
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            handler(stream).await
        });
        (addr, server)
    }

    /// Reads a request head (through its empty line; at most 64 KiB).
    async fn read_request(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
        let mut request = Vec::new();
        let mut chunk = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&chunk[..n]),
            }
        }
        request
    }

    /// A tiny HTTP responder: accepts one connection, reads the request, writes `response`,
    /// then closes (`hold_open`: waits for the client to close instead). The handle yields
    /// the request received.
    async fn respond(
        response: impl AsRef<[u8]> + Send + 'static,
        hold_open: bool,
    ) -> (SocketAddr, JoinHandle<Vec<u8>>) {
        serve_one(move |mut stream| async move {
            let request = read_request(&mut stream).await;
            let _ = stream.write_all(response.as_ref()).await;
            if hold_open {
                let mut sink = [0u8; 1024];
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            } else {
                let _ = stream.shutdown().await;
            }
            request
        })
        .await
    }

    fn http(path: &str, expect: (u16, u16), body_contains: Option<&str>) -> ProbeKind {
        ProbeKind::Http {
            path: path.to_owned(),
            expect,
            host: None,
            body_contains: body_contains.map(str::to_owned),
            tls: None,
        }
    }

    fn fail(reason: &str) -> ProbeResult {
        ProbeResult::Fail(reason.to_owned())
    }

    /// Servers that answer one fixed response, and the verdict on each.
    #[tokio::test]
    async fn http_answers_are_judged() {
        #[rustfmt::skip]
        let cases: Vec<(&str, &'static [u8], bool, ProbeKind, ProbeResult)> = vec![
            ("a 503", &b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"[..], false, http("/", (200, 299), None), fail("HTTP 503")),
            ("the status first, then the body", &b"HTTP/1.1 500 Oops\r\n\r\nok"[..], false, http("/", (200, 299), Some("ok")), fail("HTTP 500")),
            ("the body has the text", &b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nstatus: ok\r\n"[..], false, http("/", (200, 200), Some("ok")), ProbeResult::Up),
            ("a body read until close", &b"HTTP/1.1 200 OK\r\n\r\nall is well"[..], false, http("/", (200, 200), Some("well")), ProbeResult::Up),
            // The needle follows the announced body, and the server keeps the connection open:
            // the probe must stop at Content-Length, neither matching past it nor waiting.
            ("Content-Length ends the body", &b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnopeok"[..], true, http("/", (200, 200), Some("ok")), fail("HTTP 200 but body lacks \"ok\"")),
            ("a 3xx inside the range", &b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n"[..], false, http("/", (200, 399), None), ProbeResult::Up),
            ("the range is inclusive", &b"HTTP/1.0 399 Odd\r\n\r\n"[..], false, http("/", (200, 399), None), ProbeResult::Up),
            ("a 3xx outside the range", &b"HTTP/1.1 302 Found\r\n\r\n"[..], false, http("/", (200, 299), None), fail("HTTP 302")),
            ("the body lacks the text", &b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ndegraded"[..], false, http("/", (200, 200), Some("ok")), fail("HTTP 200 but body lacks \"ok\"")),
            // "ok" split across two chunks: only the decoded body holds it.
            ("a chunked body is decoded", &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nall\r\n2\r\n o\r\n1\r\nk\r\n0\r\n\r\n"[..], false, http("/", (200, 200), Some("ok")), ProbeResult::Up),
            ("a chunked body without the text", &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nfail\r\n0\r\n\r\n"[..], false, http("/", (200, 200), Some("ok")), fail("HTTP 200 but body lacks \"ok\"")),
            ("not HTTP", &b"SSH-2.0-OpenSSH_9.6\r\n"[..], false, http("/", (200, 299), None), fail("bad HTTP response")),
            // Garbage without a line end, connection held open: judged at once, no timeout.
            ("garbage held open", &b"220 "[..], true, http("/", (200, 299), None), fail("bad HTTP response")),
            // Looks like HTTP, but the status code is not three digits.
            ("a two-digit status", &b"HTTP/1.1 20 OK\r\n\r\n"[..], false, http("/", (200, 299), None), fail("bad HTTP response")),
            ("closed without a response", &b""[..], false, http("/", (200, 299), None), fail("connection closed before response")),
            // Closed in the middle of the head: a response was started, and is not HTTP.
            ("closed in the head", &b"HTTP/1.1 200 OK\r\nX-Half: ye"[..], false, http("/", (200, 299), None), fail("bad HTTP response")),
        ];
        for (name, response, hold_open, kind, want) in cases {
            let (addr, _server) = respond(response, hold_open).await;
            assert_eq!(probe(&kind, addr, LONG).await, want, "{name}");
        }
    }

    #[tokio::test]
    async fn tcp_open_port_is_up() {
        let (listener, addr) = listen().await;
        let server = tokio::spawn(async move { listener.accept().await.is_ok() });
        assert_eq!(probe(&ProbeKind::Tcp, addr, LONG).await, ProbeResult::Up);
        assert!(
            server.await.expect("server task"),
            "server saw no connection"
        );
    }

    #[tokio::test]
    async fn tcp_closed_port_is_refused() {
        let (listener, addr) = listen().await;
        drop(listener);
        assert_eq!(
            probe(&ProbeKind::Tcp, addr, LONG).await,
            fail("connection refused")
        );
    }

    #[tokio::test]
    async fn tcp_from_source_address() {
        let (listener, addr) = listen().await;
        let server = tokio::spawn(async move {
            let (_, peer) = listener.accept().await.expect("accept");
            peer
        });
        let source = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        assert_eq!(
            probe_from(&ProbeKind::Tcp, addr, Some(source), LONG).await,
            ProbeResult::Up
        );
        assert_eq!(server.await.expect("server task").ip(), Ipv4Addr::LOCALHOST);
    }

    #[tokio::test]
    async fn tcp_over_ipv6() {
        let listener = TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, 0))
            .await
            .expect("bind [::1]:0 (IPv6 loopback is needed by this test)");
        let addr = listener.local_addr().expect("local_addr");
        let server = tokio::spawn(async move {
            let (_, peer) = listener.accept().await.expect("accept");
            peer
        });
        let source = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
        assert_eq!(
            probe_from(&ProbeKind::Tcp, addr, Some(source), LONG).await,
            ProbeResult::Up
        );
        assert_eq!(
            server.await.expect("server task").ip(),
            std::net::Ipv6Addr::LOCALHOST
        );
        // Nothing listens there any more: refused, over IPv6 as over IPv4.
        assert_eq!(
            probe(&ProbeKind::Tcp, addr, LONG).await,
            fail("connection refused")
        );
    }

    #[tokio::test]
    async fn http_200_is_up_and_request_is_well_formed() {
        let (addr, server) =
            respond(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false).await;
        let result = probe(&http("/healthz", (200, 299), None), addr, LONG).await;
        assert_eq!(result, ProbeResult::Up);
        let request = String::from_utf8(server.await.expect("server task")).expect("utf-8");
        assert_eq!(
            request,
            format!(
                "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: lb-health\r\n\
                 Connection: close\r\n\r\n"
            )
        );
    }

    #[tokio::test]
    async fn http_host_header_as_configured() {
        let (addr, server) = respond(b"HTTP/1.1 204 No Content\r\n\r\n", false).await;
        let kind = ProbeKind::Http {
            path: "/status?full=1".to_owned(),
            expect: (200, 299),
            host: Some("www.example.test".to_owned()),
            body_contains: None,
            tls: None,
        };
        assert_eq!(probe(&kind, addr, LONG).await, ProbeResult::Up);
        let request = String::from_utf8(server.await.expect("server task")).expect("utf-8");
        assert!(
            request.starts_with("GET /status?full=1 HTTP/1.1\r\n"),
            "{request:?}"
        );
        assert!(
            request.contains("\r\nHost: www.example.test\r\n"),
            "{request:?}"
        );
        assert!(!request.contains(&addr.to_string()), "{request:?}");
    }

    #[tokio::test]
    async fn http_silent_server_times_out() {
        let (addr, _server) = serve_one(|mut stream| async move {
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        })
        .await;
        let result = probe(
            &http("/", (200, 299), None),
            addr,
            Duration::from_millis(200),
        )
        .await;
        assert_eq!(result, fail("timeout after 200 ms"));
    }

    #[tokio::test]
    async fn http_reset_is_reported() {
        let (addr, _server) = serve_one(|mut stream| async move {
            read_request(&mut stream).await;
            // Closing with SO_LINGER 0 sends a RST instead of a FIN.
            stream.set_zero_linger().expect("SO_LINGER 0");
        })
        .await;
        let result = probe(&http("/", (200, 299), None), addr, LONG).await;
        assert_eq!(result, fail("connection reset"));
    }

    #[tokio::test]
    async fn http_over_ipv6() {
        let listener = TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, 0))
            .await
            .expect("bind [::1]:0 (IPv6 loopback is needed by this test)");
        let addr = listener.local_addr().expect("local_addr");
        let server = tokio::spawn(async move {
            let (mut stream, peer) = listener.accept().await.expect("accept");
            let request = read_request(&mut stream).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            (request, peer)
        });
        let source = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0));
        let kind = http("/", (200, 200), Some("ok"));
        assert_eq!(
            probe_from(&kind, addr, Some(source), LONG).await,
            ProbeResult::Up
        );
        let (request, peer) = server.await.expect("server task");
        let request = String::from_utf8(request).expect("utf-8");
        assert!(
            request.contains(&format!("\r\nHost: [::1]:{}\r\n", addr.port())),
            "{request:?}"
        );
        assert!(peer.is_ipv6(), "{peer}");
        // A source of the other family is refused before any connection.
        let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        assert_eq!(
            probe_from(&ProbeKind::Tcp, addr, Some(v4), LONG).await,
            fail("source address 127.0.0.1:0 is not of the target's address family")
        );
    }

    #[tokio::test]
    async fn http_endless_body_is_bounded() {
        let (addr, _server) = serve_one(|mut stream| async move {
            read_request(&mut stream).await;
            let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";
            if stream.write_all(head).await.is_err() {
                return;
            }
            let filler = [b'x'; 4096];
            // Until the client goes away.
            while stream.write_all(&filler).await.is_ok() {}
        })
        .await;
        // Only the bounded read can end this probe before the (long) timeout.
        let result = probe(&http("/", (200, 200), Some("ok")), addr, LONG).await;
        assert_eq!(result, fail("HTTP 200 but body lacks \"ok\""));
    }

    #[tokio::test]
    async fn http_endless_headers_are_bounded() {
        let (addr, _server) = serve_one(|mut stream| async move {
            read_request(&mut stream).await;
            if stream.write_all(b"HTTP/1.1 200 OK\r\n").await.is_err() {
                return;
            }
            while stream.write_all(b"X-Filler: yes\r\n").await.is_ok() {}
        })
        .await;
        let result = probe(&http("/", (200, 200), Some("ok")), addr, LONG).await;
        assert_eq!(result, fail("bad HTTP response"));
    }

    #[tokio::test]
    async fn http_refused_and_invalid_path() {
        let (listener, addr) = listen().await;
        drop(listener);
        assert_eq!(
            probe(&http("/", (200, 299), None), addr, LONG).await,
            fail("connection refused")
        );
        let (addr, _server) = respond(b"HTTP/1.1 200 OK\r\n\r\n", false).await;
        assert_eq!(
            probe(&http("/a b", (200, 299), None), addr, LONG).await,
            fail("invalid HTTP path")
        );
    }

    /// The status a probe reads from a response whose status line is `line`, or `None`
    /// when the probe finds no valid status line there ("bad HTTP response").
    async fn status_of(line: &'static str) -> Option<u16> {
        let end = if line.ends_with('\r') { "\n" } else { "\r\n" };
        let (addr, _server) = respond(format!("{line}{end}Content-Length: 0\r\n\r\n"), false).await;
        // No status is in (0, 0): every valid status fails as "HTTP <status>".
        match probe(&http("/", (0, 0), None), addr, LONG).await {
            ProbeResult::Fail(reason) if reason == BAD_RESPONSE => None,
            ProbeResult::Fail(reason) => Some(
                reason
                    .strip_prefix("HTTP ")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("unexpected reason {reason:?}")),
            ),
            ProbeResult::Up => panic!("no status is in (0, 0)"),
        }
    }

    #[tokio::test]
    async fn status_lines() {
        assert_eq!(status_of("HTTP/1.1 200 OK\r").await, Some(200));
        assert_eq!(status_of("HTTP/1.0 404 Not Found").await, Some(404));
        assert_eq!(status_of("HTTP/1.1 503").await, Some(503));
        assert_eq!(status_of("HTTP/1.1 200OK").await, None);
        assert_eq!(status_of("HTTP/1.1 2000 OK").await, None);
        assert_eq!(status_of("HTTP/x.1 200 OK").await, None);
        assert_eq!(status_of("HTTP/1.1  200 OK").await, None);
        assert_eq!(status_of("http/1.1 200 OK").await, None);
        assert_eq!(status_of("").await, None);
    }

    /// Probes a `200 OK` response with header lines `headers` and then `body` for `needle`;
    /// `hold_open`: the server keeps the connection open after the body (so only the
    /// announced framing can end it).
    async fn search(headers: &str, body: &str, needle: &str, hold_open: bool) -> ProbeResult {
        let response = format!("HTTP/1.1 200 OK\r\n{headers}\r\n{body}");
        let (addr, _server) = respond(response, hold_open).await;
        probe(&http("/", (200, 200), Some(needle)), addr, LONG).await
    }

    fn lacks(needle: &str) -> ProbeResult {
        fail(&format!("HTTP 200 but body lacks {needle:?}"))
    }

    #[tokio::test]
    async fn framings() {
        // Content-Length: the body is its first 12 bytes, and ends there.
        let h = "Content-Length: 12\r\n";
        assert_eq!(
            search(h, "0123456789abXY", "ab", true).await,
            ProbeResult::Up
        );
        assert_eq!(search(h, "0123456789abXY", "XY", true).await, lacks("XY"));
        let h = "content-length:7\r\nX: y\r\n";
        assert_eq!(search(h, "1234567tail", "567", true).await, ProbeResult::Up);
        assert_eq!(search(h, "1234567tail", "tail", true).await, lacks("tail"));
        // Chunked takes precedence over Content-Length (RFC 9112 §6.3).
        let h = "Content-Length: 3\r\nTransfer-Encoding: gzip, Chunked\r\n";
        let chunked = "5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(search(h, chunked, "hello", true).await, ProbeResult::Up);
        // Neither: the body ends when the server closes.
        assert_eq!(
            search("X: y\r\n", "all is well", "well", false).await,
            ProbeResult::Up
        );
        // An invalid or conflicting Content-Length is not HTTP we can frame.
        let bad = fail(BAD_RESPONSE);
        assert_eq!(search("Content-Length: -1\r\n", "x", "x", false).await, bad);
        let h = "Content-Length: 1\r\nContent-Length: 2\r\n";
        assert_eq!(search(h, "xy", "x", false).await, bad);
    }

    #[tokio::test]
    async fn dechunking() {
        let h = "Transfer-Encoding: chunked\r\n";
        let body = "3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(search(h, body, "abcde", true).await, ProbeResult::Up);
        // Chunk lines end in CRLF (RFC 9112 §7.1); hyper rejects bare LF ones, so nothing
        // of this body is decoded (the hand-written decoder found "abcd" here).
        let body = "3\nabc\n1\nd\n0\n\n";
        assert_eq!(search(h, body, "abcd", false).await, lacks("abcd"));
        // Cut short by the server closing: searched as far as it came.
        assert_eq!(search(h, "5\r\nab", "ab", false).await, ProbeResult::Up);
        assert_eq!(search(h, "zz\r\nab", "ab", false).await, lacks("ab"));
    }

    /// A self-signed certificate for 127.0.0.1 and localhost, issued by and to `issuer`,
    /// and its key.
    fn certificate(issuer: &str) -> rcgen::CertifiedKey<rcgen::KeyPair> {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let mut params = rcgen::CertificateParams::new(names).expect("certificate names");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, issuer);
        let signing_key = rcgen::KeyPair::generate().expect("generating a key");
        let cert = params
            .self_signed(&signing_key)
            .expect("signing a certificate");
        rcgen::CertifiedKey { cert, signing_key }
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    /// A TLS server on 127.0.0.1 with `cert`: accepts one connection, reads the request,
    /// answers `OK` and closes. The handle yields the request received.
    async fn tls_respond(
        cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
    ) -> (SocketAddr, JoinHandle<io::Result<Vec<u8>>>) {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert.cert.der().clone()], key)
                .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        serve_one(|stream| async move {
            let mut stream = acceptor.accept(stream).await?;
            let request = read_request(&mut stream).await;
            stream.write_all(OK).await?;
            stream.shutdown().await?;
            Ok(request)
        })
        .await
    }

    /// A file in the temporary directory, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &str) -> Self {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let name = format!("lb-probe-test-{}-{n}.pem", std::process::id());
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, contents).expect("writing a temporary file");
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// An HTTPS check of `/` for a 200 with "ok" in the body.
    fn https(host: Option<&str>, verify: Verify) -> ProbeKind {
        ProbeKind::Http {
            path: "/".to_owned(),
            expect: (200, 200),
            host: host.map(str::to_owned),
            body_contains: Some("ok".to_owned()),
            tls: Some(Tls { verify }),
        }
    }

    fn reason(result: ProbeResult) -> String {
        match result {
            ProbeResult::Fail(reason) => reason,
            ProbeResult::Up => panic!("the probe passed"),
        }
    }

    #[tokio::test]
    async fn https_unverified_is_up() {
        let cert = certificate("lb test server");
        let (addr, server) = tls_respond(&cert).await;
        let kind = https(None, Verify::None);
        assert_eq!(probe(&kind, addr, LONG).await, ProbeResult::Up);
        let request = server.await.expect("server task").expect("TLS server");
        let request = String::from_utf8(request).expect("utf-8");
        assert!(
            request.starts_with(&format!("GET / HTTP/1.1\r\nHost: {addr}\r\n")),
            "{request:?}"
        );
    }

    #[tokio::test]
    async fn https_verified_by_its_ca() {
        let cert = certificate("lb test server");
        let ca = TempFile::new(&cert.cert.pem());
        let verify = Verify::CaFile(ca.0.clone());
        // Checked for the target's address (no Host), then for the Host's name.
        for host in [None, Some("localhost:8443")] {
            let (addr, server) = tls_respond(&cert).await;
            let kind = https(host, verify.clone());
            assert_eq!(probe(&kind, addr, LONG).await, ProbeResult::Up, "{host:?}");
            server.await.expect("server task").expect("TLS server");
        }
        // A name the certificate does not hold.
        let (addr, _server) = tls_respond(&cert).await;
        let kind = https(Some("www.example.test"), verify);
        let reason = reason(probe(&kind, addr, LONG).await);
        assert!(
            reason.starts_with("TLS handshake failed: invalid peer certificate: ")
                && reason.contains("www.example.test"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn https_by_another_ca_fails() {
        let cert = certificate("lb test server");
        let ca = TempFile::new(&certificate("another CA").cert.pem());
        let (addr, _server) = tls_respond(&cert).await;
        let kind = https(None, Verify::CaFile(ca.0.clone()));
        assert_eq!(
            probe(&kind, addr, LONG).await,
            fail("TLS handshake failed: invalid peer certificate: UnknownIssuer")
        );
    }

    #[tokio::test]
    async fn https_to_plain_http_fails_the_handshake() {
        let (addr, _server) = serve_one(|mut stream| async move {
            // Answers HTTP at once, where a TLS server would say hello.
            let _ = stream.write_all(OK).await;
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        })
        .await;
        let reason = reason(probe(&https(None, Verify::None), addr, LONG).await);
        assert!(reason.starts_with("TLS handshake failed: "), "{reason}");
    }

    #[tokio::test]
    async fn https_ca_file_problems_are_named() {
        let (listener, addr) = listen().await;
        let missing = std::env::temp_dir().join("lb-probe-test-no-such-file.pem");
        let kind = https(None, Verify::CaFile(missing.clone()));
        let reason = reason(probe(&kind, addr, LONG).await);
        assert!(
            reason.starts_with(&format!("cannot read CA file {}: ", missing.display())),
            "{reason}"
        );
        let empty = TempFile::new("not a certificate\n");
        let kind = https(None, Verify::CaFile(empty.0.clone()));
        assert_eq!(
            probe(&kind, addr, LONG).await,
            fail(&format!("no CA certificate in {}", empty.0.display()))
        );
        // Neither probe connected: the configuration is judged first.
        drop(listener);
    }

    #[test]
    fn server_names() {
        let target = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 11), 443));
        let dns = ServerName::try_from("www.example.test").expect("DNS name");
        assert_eq!(server_name("www.example.test", target), dns);
        assert_eq!(server_name("www.example.test:8443", target), dns);
        let v4 = ServerName::from(IpAddr::from(Ipv4Addr::new(10, 0, 0, 12)));
        assert_eq!(server_name("10.0.0.12:443", target), v4);
        let v6 = ServerName::from(IpAddr::from(std::net::Ipv6Addr::LOCALHOST));
        assert_eq!(server_name("[::1]:443", target), v6);
        assert_eq!(server_name("::1", target), v6);
        // Not a DNS name: the target's address.
        let own = ServerName::from(target.ip());
        assert_eq!(server_name("bad_name!", target), own);
    }

    #[test]
    fn io_reasons() {
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(io_reason(&refused), "connection refused");
        let reset = io::Error::from_raw_os_error(libc::ECONNRESET);
        assert_eq!(io_reason(&reset), "connection reset");
        let unreachable = io_reason(&io::Error::from_raw_os_error(libc::EHOSTUNREACH));
        assert!(
            !unreachable.is_empty() && !unreachable.contains("os error"),
            "{unreachable}"
        );
        assert!(
            unreachable.starts_with(|c: char| c.is_ascii_lowercase()),
            "{unreachable}"
        );
        let custom = io::Error::new(io::ErrorKind::BrokenPipe, "long internal detail");
        assert_eq!(io_reason(&custom), "broken pipe");
    }
}
