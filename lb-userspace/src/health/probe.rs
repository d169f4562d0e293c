//! Running one health probe against one backend: a TCP connect, or a minimal HTTP/1.1 GET
//! written by hand over a [`TcpStream`].
//!
//! Every probe is bounded in time and in memory:
//! - the whole probe (connect, request, response) runs under one `tokio::time::timeout`;
//! - at most [`MAX_HEAD`] bytes of status line and headers are read, and the body is read
//!   (only when [`ProbeKind::Http::body_contains`] is set) up to [`MAX_BODY`] bytes: a
//!   server streaming an endless response cannot make a probe hang or grow.
//!
//! Simplifications of the HTTP client, deliberate for a health check:
//! - no redirects are followed: a 3xx is judged by the expected status range like any other;
//! - a `Transfer-Encoding: chunked` body is searched as raw bytes first (chunk-size lines
//!   included), then, if that fails, decoded from what was read; a needle made only of
//!   hex digits could match a chunk-size line;
//! - a body shorter than its `Content-Length` (the server closed early) is searched as is;
//! - header lines without a colon are ignored; 1xx interim responses are not skipped.

use std::{
    fmt, io,
    net::{SocketAddr, SocketAddrV4},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};

/// Most bytes of response head (status line and headers) an HTTP probe reads.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most bytes of response body an HTTP probe reads (only when `body_contains` is set).
pub const MAX_BODY: usize = 64 * 1024;
/// Most bytes asked for by one read.
const READ_CHUNK: usize = 8 * 1024;

/// The reason given for a response that is not HTTP, or not well-formed HTTP.
const BAD_RESPONSE: &str = "bad HTTP response";

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
        /// `Host` header; `None` sends the target's `ip:port`.
        host: Option<String>,
        /// Text the body must contain (searched in its first [`MAX_BODY`] bytes).
        body_contains: Option<String>,
    },
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

impl fmt::Display for ProbeResult {
    /// `ok`, or the failure reason.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeResult::Up => f.write_str("ok"),
            ProbeResult::Fail(reason) => f.write_str(reason),
        }
    }
}

/// Runs one probe against `target` with an overall `timeout` (connect + request + response),
/// from the kernel's choice of local address. See [`probe_from`].
pub async fn probe(kind: &ProbeKind, target: SocketAddrV4, timeout: Duration) -> ProbeResult {
    probe_from(kind, target, None, timeout).await
}

/// Runs one probe against `target` with an overall `timeout` (connect + request + response).
///
/// `source`: local address to bind before connecting (`None` = kernel's choice); give it
/// port 0 unless a fixed port is really wanted (two probes cannot share one).
pub async fn probe_from(
    kind: &ProbeKind,
    target: SocketAddrV4,
    source: Option<SocketAddrV4>,
    timeout: Duration,
) -> ProbeResult {
    match tokio::time::timeout(timeout, run(kind, target, source)).await {
        Ok(Ok(())) => ProbeResult::Up,
        Ok(Err(reason)) => ProbeResult::Fail(reason),
        Err(_elapsed) => ProbeResult::Fail(format!("timeout after {} ms", timeout.as_millis())),
    }
}

/// The probe without its timeout: `Err` carries the failure reason.
async fn run(
    kind: &ProbeKind,
    target: SocketAddrV4,
    source: Option<SocketAddrV4>,
) -> Result<(), String> {
    let stream = connect(target, source).await.map_err(|e| io_reason(&e))?;
    match kind {
        ProbeKind::Tcp => Ok(()),
        ProbeKind::Http {
            path,
            expect,
            host,
            body_contains,
        } => {
            let host = match host {
                Some(host) => host.clone(),
                None => target.to_string(),
            };
            let request = request(path, &host)?;
            http(stream, &request, *expect, body_contains.as_deref()).await
        }
    }
}

/// Connects to `target`, from `source` when given.
async fn connect(target: SocketAddrV4, source: Option<SocketAddrV4>) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(source) = source {
        socket.bind(SocketAddr::V4(source))?;
    }
    socket.connect(SocketAddr::V4(target)).await
}

/// The request bytes, or a reason when `path` or `host` would break the request's framing.
fn request(path: &str, host: &str) -> Result<String, String> {
    let path = if path.is_empty() { "/" } else { path };
    let breaks_framing = |s: &str| s.chars().any(|c| c.is_control() || c.is_whitespace());
    if breaks_framing(path) {
        return Err("invalid HTTP path".to_owned());
    }
    if host.is_empty() || breaks_framing(host) {
        return Err("invalid Host header".to_owned());
    }
    Ok(format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-health\r\nConnection: close\r\n\r\n"
    ))
}

/// Sends `request` and judges the response. `Err` carries the failure reason.
async fn http(
    mut stream: TcpStream,
    request: &str,
    expect: (u16, u16),
    body_contains: Option<&str>,
) -> Result<(), String> {
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io_reason(&e))?;

    // The status line. Bytes that cannot start one fail at once, without waiting for more.
    let mut buf = Vec::with_capacity(1024);
    let line_end = loop {
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            break i;
        }
        if !b"HTTP/".starts_with(&buf[..buf.len().min(5)]) || buf.len() >= MAX_HEAD {
            return Err(BAD_RESPONSE.to_owned());
        }
        if read_some(&mut stream, &mut buf, MAX_HEAD).await? == 0 {
            return Err(if buf.is_empty() {
                "connection closed before response"
            } else {
                BAD_RESPONSE
            }
            .to_owned());
        }
    };
    let status = parse_status_line(&buf[..line_end]).ok_or(BAD_RESPONSE)?;
    if !(expect.0..=expect.1).contains(&status) {
        return Err(format!("HTTP {status}"));
    }
    let Some(needle) = body_contains else {
        return Ok(());
    };

    // The rest of the head, then the body.
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() >= MAX_HEAD || read_some(&mut stream, &mut buf, MAX_HEAD).await? == 0 {
            return Err(BAD_RESPONSE.to_owned());
        }
    };
    let framing = framing(&buf[line_end + 1..head_end]).ok_or(BAD_RESPONSE)?;
    let limit = match framing {
        Framing::Length(len) => usize::try_from(len).unwrap_or(usize::MAX).min(MAX_BODY),
        Framing::Chunked | Framing::UntilClose => MAX_BODY,
    };
    let mut body = buf.split_off(head_end);
    body.truncate(limit);
    let needle = needle.as_bytes();
    // Bytes of `body` before `searched` cannot start a match: each read only searches anew
    // from where a match could still begin, and a found needle ends the probe early.
    let mut searched = 0;
    loop {
        if contains(&body[searched..], needle) {
            return Ok(());
        }
        searched = body.len().saturating_sub(needle.len().saturating_sub(1));
        if body.len() >= limit || read_some(&mut stream, &mut body, limit).await? == 0 {
            break;
        }
    }
    if matches!(framing, Framing::Chunked) && contains(&dechunk(&body), needle) {
        return Ok(());
    }
    Err(format!(
        "HTTP {status} but body lacks {:?}",
        String::from_utf8_lossy(needle)
    ))
}

/// Reads once into `buf` without letting it grow past `cap` bytes. Returns the number of
/// bytes read: 0 at end of stream (callers make sure `buf` is not full already).
async fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>, cap: usize) -> Result<usize, String> {
    let old = buf.len();
    let room = cap.saturating_sub(old).min(READ_CHUNK);
    if room == 0 {
        return Ok(0);
    }
    buf.resize(old + room, 0);
    let read = stream.read(&mut buf[old..]).await;
    let n = *read.as_ref().unwrap_or(&0);
    buf.truncate(old + n);
    read.map_err(|e| io_reason(&e))
}

/// The status code of an HTTP/1.x status line (`\r` or not at its end), e.g.
/// `HTTP/1.1 200 OK` → 200. `None` unless it has the form `HTTP/d.d ddd[ reason]`.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = line.strip_prefix(b"HTTP/")?;
    let [major, b'.', minor, b' ', rest @ ..] = rest else {
        return None;
    };
    if !major.is_ascii_digit() || !minor.is_ascii_digit() {
        return None;
    }
    let [a, b, c, tail @ ..] = rest else {
        return None;
    };
    if ![a, b, c].iter().all(|d| d.is_ascii_digit()) || !(tail.is_empty() || tail[0] == b' ') {
        return None;
    }
    Some(
        [a, b, c]
            .iter()
            .fold(0, |n, &&d| n * 10 + u16::from(d - b'0')),
    )
}

/// The length of the response head in `buf` (through the empty line ending it, `\r\n` or
/// bare `\n` line ends), or `None` while it is incomplete.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(offset) = buf[start..].iter().position(|&b| b == b'\n') {
        let newline = start + offset;
        let rest = &buf[newline + 1..];
        if rest.starts_with(b"\r\n") {
            return Some(newline + 3);
        }
        if rest.starts_with(b"\n") {
            return Some(newline + 2);
        }
        start = newline + 1;
    }
    None
}

/// How the end of a response body is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body ends when the server closes.
    UntilClose,
}

/// The body framing announced by the header lines `headers`; `None` for an invalid or
/// conflicting `Content-Length`. Chunked transfer coding takes precedence (RFC 9112 §6.3).
fn framing(headers: &[u8]) -> Option<Framing> {
    let mut length = None;
    let mut chunked = false;
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let len: u64 = std::str::from_utf8(value).ok()?.parse().ok()?;
            if length.is_some_and(|l| l != len) {
                return None;
            }
            length = Some(len);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked |= value.windows(7).any(|w| w.eq_ignore_ascii_case(b"chunked"));
        }
    }
    Some(match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(len)) => Framing::Length(len),
        (false, None) => Framing::UntilClose,
    })
}

/// The data of a chunked body, as far as `raw` holds it (a truncated or malformed body
/// yields what precedes the problem). Chunk extensions and trailers are ignored.
fn dechunk(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
        let line = rest[..newline]
            .strip_suffix(b"\r")
            .unwrap_or(&rest[..newline]);
        let size = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let Some(size) = std::str::from_utf8(size)
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok())
        else {
            break;
        };
        rest = &rest[newline + 1..];
        if size == 0 || size > rest.len() {
            out.extend_from_slice(&rest[..size.min(rest.len())]);
            break;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
        rest = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.strip_prefix(b"\n"))
            .unwrap_or(rest);
    }
    out
}

/// Whether `needle` occurs in `haystack` (an empty needle always does).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tokio::{net::TcpListener, task::JoinHandle};

    use super::*;

    /// A timeout long enough that only a hung probe reaches it.
    const LONG: Duration = Duration::from_secs(10);

    /// A listener on 127.0.0.1 at a port the kernel picks, and its address.
    async fn listen() -> (TcpListener, SocketAddrV4) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind 127.0.0.1:0");
        let SocketAddr::V4(addr) = listener.local_addr().expect("local_addr") else {
            panic!("IPv4 listener has a non-IPv4 address");
        };
        (listener, addr)
    }

    /// Reads a request head (through its empty line; at most 64 KiB).
    async fn read_request(stream: &mut TcpStream) -> Vec<u8> {
        let mut request = Vec::new();
        let mut chunk = [0u8; 1024];
        while find_head_end(&request).is_none() && request.len() < 64 * 1024 {
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
        response: &'static [u8],
        hold_open: bool,
    ) -> (SocketAddrV4, JoinHandle<Vec<u8>>) {
        let (listener, addr) = listen().await;
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let request = read_request(&mut stream).await;
            let _ = stream.write_all(response).await;
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
        });
        (addr, server)
    }

    fn http(path: &str, expect: (u16, u16), body_contains: Option<&str>) -> ProbeKind {
        ProbeKind::Http {
            path: path.to_owned(),
            expect,
            host: None,
            body_contains: body_contains.map(str::to_owned),
        }
    }

    fn fail(reason: &str) -> ProbeResult {
        ProbeResult::Fail(reason.to_owned())
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
        let source = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        assert_eq!(
            probe_from(&ProbeKind::Tcp, addr, Some(source), LONG).await,
            ProbeResult::Up
        );
        assert_eq!(server.await.expect("server task").ip(), Ipv4Addr::LOCALHOST);
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
    async fn http_503_fails_with_status() {
        let (addr, _server) = respond(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .await;
        let result = probe(&http("/", (200, 299), None), addr, LONG).await;
        assert_eq!(result, fail("HTTP 503"));
    }

    #[tokio::test]
    async fn http_status_range_is_inclusive() {
        let (addr, _server) = respond(b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n", false).await;
        assert_eq!(
            probe(&http("/", (200, 399), None), addr, LONG).await,
            ProbeResult::Up
        );
        let (addr, _server) = respond(b"HTTP/1.0 399 Odd\r\n\r\n", false).await;
        assert_eq!(
            probe(&http("/", (200, 399), None), addr, LONG).await,
            ProbeResult::Up
        );
        let (addr, _server) = respond(b"HTTP/1.1 302 Found\r\n\r\n", false).await;
        assert_eq!(
            probe(&http("/", (200, 299), None), addr, LONG).await,
            fail("HTTP 302")
        );
    }

    #[tokio::test]
    async fn http_status_is_judged_before_the_body() {
        let (addr, _server) = respond(b"HTTP/1.1 500 Oops\r\n\r\nok", false).await;
        let result = probe(&http("/", (200, 299), Some("ok")), addr, LONG).await;
        assert_eq!(result, fail("HTTP 500"));
    }

    #[tokio::test]
    async fn http_body_contains_present_is_up() {
        let (addr, _server) = respond(
            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nstatus: ok\r\n",
            false,
        )
        .await;
        let result = probe(&http("/", (200, 200), Some("ok")), addr, LONG).await;
        assert_eq!(result, ProbeResult::Up);
    }

    #[tokio::test]
    async fn http_body_contains_until_close_is_up() {
        let (addr, _server) = respond(b"HTTP/1.1 200 OK\r\n\r\nall is well", false).await;
        let result = probe(&http("/", (200, 200), Some("well")), addr, LONG).await;
        assert_eq!(result, ProbeResult::Up);
    }

    #[tokio::test]
    async fn http_body_contains_absent_fails() {
        let (addr, _server) = respond(
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ndegraded",
            false,
        )
        .await;
        let result = probe(&http("/", (200, 200), Some("ok")), addr, LONG).await;
        assert_eq!(result, fail("HTTP 200 but body lacks \"ok\""));
        let ProbeResult::Fail(reason) = result else {
            unreachable!()
        };
        assert!(reason.contains("body"), "{reason}");
    }

    #[tokio::test]
    async fn http_content_length_ends_the_body() {
        // The needle follows the announced body, and the server keeps the connection open:
        // the probe must stop at Content-Length, neither matching past it nor waiting.
        let (addr, _server) =
            respond(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnopeok", true).await;
        let result = probe(&http("/", (200, 200), Some("ok")), addr, LONG).await;
        assert_eq!(result, fail("HTTP 200 but body lacks \"ok\""));
    }

    #[tokio::test]
    async fn http_chunked_body_is_searched() {
        // "ok" split across two chunks: only the decoded body holds it.
        let (addr, _server) = respond(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nall\r\n2\r\n o\r\n1\r\nk\r\n0\r\n\r\n",
            false,
        )
        .await;
        let result = probe(&http("/", (200, 200), Some("ok")), addr, LONG).await;
        assert_eq!(result, ProbeResult::Up);
        let (addr, _server) = respond(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nfail\r\n0\r\n\r\n",
            false,
        )
        .await;
        let result = probe(&http("/", (200, 200), Some("ok")), addr, LONG).await;
        assert_eq!(result, fail("HTTP 200 but body lacks \"ok\""));
    }

    #[tokio::test]
    async fn http_host_header_as_configured() {
        let (addr, server) = respond(b"HTTP/1.1 204 No Content\r\n\r\n", false).await;
        let kind = ProbeKind::Http {
            path: "/status?full=1".to_owned(),
            expect: (200, 299),
            host: Some("www.example.test".to_owned()),
            body_contains: None,
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
        let (listener, addr) = listen().await;
        let _server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        });
        let result = probe(
            &http("/", (200, 299), None),
            addr,
            Duration::from_millis(200),
        )
        .await;
        assert_eq!(result, fail("timeout after 200 ms"));
    }

    #[tokio::test]
    async fn http_garbage_is_bad_response() {
        let (addr, _server) = respond(b"SSH-2.0-OpenSSH_9.6\r\n", false).await;
        let result = probe(&http("/", (200, 299), None), addr, LONG).await;
        assert_eq!(result, fail("bad HTTP response"));
        // Garbage without a line end, connection held open: judged at once, no timeout.
        let (addr, _server) = respond(b"220 ", true).await;
        let result = probe(&http("/", (200, 299), None), addr, LONG).await;
        assert_eq!(result, fail("bad HTTP response"));
        // Looks like HTTP, but the status code is not three digits.
        let (addr, _server) = respond(b"HTTP/1.1 20 OK\r\n\r\n", false).await;
        let result = probe(&http("/", (200, 299), None), addr, LONG).await;
        assert_eq!(result, fail("bad HTTP response"));
    }

    #[tokio::test]
    async fn http_closed_without_response() {
        let (addr, _server) = respond(b"", false).await;
        let result = probe(&http("/", (200, 299), None), addr, LONG).await;
        assert_eq!(result, fail("connection closed before response"));
    }

    #[tokio::test]
    async fn http_endless_body_is_bounded() {
        let (listener, addr) = listen().await;
        let _server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            read_request(&mut stream).await;
            let head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";
            if stream.write_all(head).await.is_err() {
                return;
            }
            let filler = [b'x'; 4096];
            // Until the client goes away.
            while stream.write_all(&filler).await.is_ok() {}
        });
        // Only the bounded read can end this probe before the (long) timeout.
        let result = probe(&http("/", (200, 200), Some("ok")), addr, LONG).await;
        assert_eq!(result, fail("HTTP 200 but body lacks \"ok\""));
    }

    #[tokio::test]
    async fn http_endless_headers_are_bounded() {
        let (listener, addr) = listen().await;
        let _server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            read_request(&mut stream).await;
            if stream.write_all(b"HTTP/1.1 200 OK\r\n").await.is_err() {
                return;
            }
            while stream.write_all(b"X-Filler: yes\r\n").await.is_ok() {}
        });
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

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 404 Not Found"), Some(404));
        assert_eq!(parse_status_line(b"HTTP/1.1 503"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/1.1 200OK"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 OK"), None);
        assert_eq!(parse_status_line(b"HTTP/x.1 200 OK"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1  200 OK"), None);
        assert_eq!(parse_status_line(b"http/1.1 200 OK"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[test]
    fn framings() {
        assert_eq!(
            framing(b"Content-Length: 12\r\n"),
            Some(Framing::Length(12))
        );
        assert_eq!(
            framing(b"content-length:7\r\nX: y\r\n"),
            Some(Framing::Length(7))
        );
        assert_eq!(
            framing(b"Content-Length: 3\r\nTransfer-Encoding: gzip, Chunked\r\n"),
            Some(Framing::Chunked)
        );
        assert_eq!(framing(b"X: y\r\n"), Some(Framing::UntilClose));
        assert_eq!(framing(b"Content-Length: -1\r\n"), None);
        assert_eq!(framing(b"Content-Length: 1\r\nContent-Length: 2\r\n"), None);
    }

    #[test]
    fn dechunking() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"), b"abcde");
        assert_eq!(dechunk(b"3\nabc\n1\nd\n0\n\n"), b"abcd");
        assert_eq!(dechunk(b"5\r\nab"), b"ab");
        assert_eq!(dechunk(b"zz\r\nab"), b"");
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
