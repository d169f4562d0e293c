//! A small HTTP/1.1 server (hyper 1.x) for the daemon's read-only pages: the metrics
//! endpoint, and soon a stats page. A [`Routes`] maps the path of a GET to a [`Reply`];
//! this module does the rest:
//! - GET and HEAD (same status and headers, `Content-Length` included, no body); any other
//!   method is answered 405 with `Allow: GET, HEAD`;
//! - requests with a body are refused (413) and their connection closed: no page takes one;
//! - HTTP/1.1 keep-alive; a request head must arrive within [`HEADER_READ_TIMEOUT`] (this
//!   also bounds an idle keep-alive connection) and be at most [`MAX_REQUEST_HEAD`] bytes;
//!   a connection is asked to close after [`MAX_CONNECTION_TIME`], and dropped
//!   [`SHUTDOWN_GRACE`] later if it does not;
//! - at most [`MAX_CONNECTIONS`] connections at once: past that, new ones wait in the
//!   kernel's accept queue;
//! - a failing `accept` (EMFILE, ENFILE, ENOBUFS, ...) is logged once per burst of failures
//!   and retried after a growing pause (up to [`ACCEPT_BACKOFF_MAX`]), never in a busy loop.

use std::{
    convert::Infallible, future::Future, io, net::SocketAddr, pin::Pin, sync::Arc, time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Body as _, Bytes, Incoming},
    header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::Semaphore,
};

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time allowed for a request head to arrive, from when the server waits for one (so also
/// the longest a keep-alive connection stays idle).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a request head (request line and headers).
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// After this long, a connection is asked to close (once its current request is answered).
pub const MAX_CONNECTION_TIME: Duration = Duration::from_secs(300);
/// How long a connection asked to close may take to finish before it is dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// First pause after a failed `accept`; each further failure in a row doubles it.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest pause after a failed `accept`.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The content type of the server's own plain-text replies.
pub const TEXT: &str = "text/plain";

/// The answer to a GET: status, `Content-Type` and body (`Content-Length` is added).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Reply {
    pub fn new(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Self {
        Reply {
            status,
            content_type,
            body: body.into(),
        }
    }
}

/// The future of a [`Reply`], boxed so that [`Routes`] stays object-safe.
pub type ReplyFuture<'a> = Pin<Box<dyn Future<Output = Reply> + Send + 'a>>;

/// The pages a server serves.
pub trait Routes: Send + Sync {
    /// The reply to a GET (or HEAD) of `path` (without its query), `query` being what
    /// follows `?`, if anything.
    fn get<'a>(&'a self, path: &'a str, query: Option<&'a str>) -> ReplyFuture<'a>;
}

/// Serves `routes` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, routes: Arc<dyn Routes>) {
    let name = match listener.local_addr() {
        Ok(addr) => format!("HTTP server on {addr}"),
        Err(_) => "HTTP server".to_owned(),
    };
    accept_loop(&name, || listener.accept(), routes).await;
}

/// Accepts connections from `accept` and serves each on its own task, at most
/// [`MAX_CONNECTIONS`] at once. Returns only if the connection limit's semaphore closes,
/// which it never does.
async fn accept_loop<A, F, S>(name: &str, mut accept: A, routes: Arc<dyn Routes>)
where
    A: FnMut() -> F,
    F: Future<Output = io::Result<(S, SocketAddr)>>,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut failures: u32 = 0;
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        match accept().await {
            Ok((stream, peer)) => {
                if failures > 0 {
                    log::info!("{name}: accepting again after {failures} failed accept(s)");
                    failures = 0;
                }
                let routes = Arc::clone(&routes);
                tokio::spawn(async move {
                    connection(stream, routes).await;
                    log::trace!("connection from {peer} closed");
                    drop(slot);
                });
            }
            Err(e) => {
                if failures == 0 {
                    log::warn!(
                        "{name}: accept failed ({e}); retrying with pauses of up to {} ms",
                        ACCEPT_BACKOFF_MAX.as_millis()
                    );
                }
                failures = failures.saturating_add(1);
                tokio::time::sleep(accept_backoff(failures)).await;
            }
        }
    }
}

/// The pause after the `failures`-th failed `accept` in a row (counted from 1).
fn accept_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (ACCEPT_BACKOFF_MIN * 2u32.pow(doublings)).min(ACCEPT_BACKOFF_MAX)
}

/// Serves one connection, within [`MAX_CONNECTION_TIME`] (plus [`SHUTDOWN_GRACE`]).
async fn connection<S>(stream: S, routes: Arc<dyn Routes>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let routes = Arc::clone(&routes);
        async move { Ok::<_, Infallible>(respond(request, &*routes).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        .max_header_size(MAX_REQUEST_HEAD)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    let outcome = match tokio::time::timeout(MAX_CONNECTION_TIME, connection.as_mut()).await {
        Ok(outcome) => outcome,
        Err(_elapsed) => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, connection).await {
                Ok(outcome) => outcome,
                Err(_elapsed) => return,
            }
        }
    };
    // Clients going away, timeouts and malformed requests are theirs, not the daemon's.
    if let Err(e) = outcome {
        log::debug!("HTTP connection ended: {e}");
    }
}

/// The response to one request.
async fn respond(request: Request<Incoming>, routes: &dyn Routes) -> Response<Full<Bytes>> {
    let head = request.method() == Method::HEAD;
    // No page takes a body: one that is not read would be parsed as the next request,
    // so a request that comes with one is answered and its connection closed.
    let has_body = !request.body().is_end_stream();
    let (reply, allow) = if request.method() != Method::GET && !head {
        let body = "only GET and HEAD are served\n";
        (Reply::new(StatusCode::METHOD_NOT_ALLOWED, TEXT, body), true)
    } else if has_body {
        let body = "request bodies are not accepted\n";
        (Reply::new(StatusCode::PAYLOAD_TOO_LARGE, TEXT, body), false)
    } else {
        let uri = request.uri();
        (routes.get(uri.path(), uri.query()).await, false)
    };
    let mut response = Response::builder()
        .status(reply.status)
        .header(CONTENT_TYPE, reply.content_type)
        .header(CONTENT_LENGTH, reply.body.len());
    if allow {
        response = response.header(ALLOW, "GET, HEAD");
    }
    if has_body {
        response = response.header(CONNECTION, "close");
    }
    let body = if head { Bytes::new() } else { reply.body };
    response.body(Full::new(body)).unwrap_or_else(|e| {
        // Only an invalid content type can get here: a bug in a route.
        log::error!("building an HTTP response: {e}");
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        response
    })
}

#[cfg(test)]
mod tests {
    use std::{
        net::Ipv4Addr,
        sync::{Arc, Mutex},
    };

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
        time::Instant,
    };

    use super::*;

    /// `/hello` says hello (with the query echoed); everything else is 404.
    struct Hello;

    impl Routes for Hello {
        fn get<'a>(&'a self, path: &'a str, query: Option<&'a str>) -> ReplyFuture<'a> {
            Box::pin(async move {
                match path {
                    "/hello" => Reply::new(
                        StatusCode::OK,
                        "text/plain; charset=utf-8",
                        format!("hello {}\n", query.unwrap_or("world")),
                    ),
                    _ => Reply::new(StatusCode::NOT_FOUND, TEXT, "no such page\n"),
                }
            })
        }
    }

    /// A server of [`Hello`] on 127.0.0.1 at a port the kernel picks, and a client
    /// connection to it.
    async fn connect() -> TcpStream {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        tokio::spawn(serve(listener, Arc::new(Hello)));
        TcpStream::connect(addr).await.expect("connect")
    }

    /// A response as read off the wire: its head (status line and headers, lower-cased
    /// names) and its body.
    #[derive(Debug)]
    struct Raw {
        head: String,
        body: Vec<u8>,
    }

    impl Raw {
        fn status_line(&self) -> &str {
            self.head.lines().next().unwrap_or_default()
        }

        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().skip(1).find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim())
            })
        }
    }

    /// Header line asking the server to close after its response.
    const CLOSE: &str = "Connection: close\r\n";

    /// Sends a `method` request for `target` (with `Host`, the header lines `headers` and
    /// then `body`), and reads one response: its head, then `Content-Length` bytes of body
    /// (none for HEAD).
    async fn exchange(
        stream: &mut TcpStream,
        (method, target): (&str, &str),
        headers: &str,
        body: &str,
    ) -> Raw {
        let request = format!("{method} {target} HTTP/1.1\r\nHost: t\r\n{headers}\r\n{body}");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.expect("read response");
            assert!(n > 0, "connection closed mid-head: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).expect("UTF-8 head");
        let mut raw = Raw {
            head,
            body: buf[head_end..].to_vec(),
        };
        let length: usize = raw
            .header("content-length")
            .expect("Content-Length")
            .parse()
            .expect("numeric Content-Length");
        let wanted = if method == "HEAD" { 0 } else { length };
        while raw.body.len() < wanted {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "connection closed mid-body: {raw:?}");
            raw.body.extend_from_slice(&chunk[..n]);
        }
        raw
    }

    /// Reads until the server closes; panics if it sends anything.
    async fn expect_closed(stream: &mut TcpStream) {
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.expect("read to end");
        assert!(rest.is_empty(), "unexpected bytes: {rest:?}");
    }

    #[tokio::test]
    async fn get_200_with_body() {
        let mut stream = connect().await;
        let raw = exchange(&mut stream, ("GET", "/hello?you"), CLOSE, "").await;
        assert_eq!(raw.status_line(), "HTTP/1.1 200 OK", "{raw:?}");
        assert_eq!(
            raw.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(raw.header("content-length"), Some("10"));
        assert_eq!(raw.body, b"hello you\n");
        expect_closed(&mut stream).await;
    }

    #[tokio::test]
    async fn head_has_headers_but_no_body() {
        let mut stream = connect().await;
        let get = exchange(&mut stream, ("GET", "/hello"), "", "").await;
        assert_eq!(get.body, b"hello world\n");
        let head = exchange(&mut stream, ("HEAD", "/hello"), CLOSE, "").await;
        assert_eq!(head.status_line(), "HTTP/1.1 200 OK", "{head:?}");
        assert_eq!(head.header("content-length"), Some("12"));
        assert_eq!(head.header("content-type"), get.header("content-type"));
        assert!(head.body.is_empty(), "{head:?}");
        // Nothing follows the head: the next bytes are the end of the connection.
        expect_closed(&mut stream).await;
    }

    #[tokio::test]
    async fn unknown_path_is_404() {
        let mut stream = connect().await;
        let raw = exchange(&mut stream, ("GET", "/nope"), "", "").await;
        assert_eq!(raw.status_line(), "HTTP/1.1 404 Not Found", "{raw:?}");
        assert_eq!(raw.header("content-type"), Some(TEXT));
        assert_eq!(raw.body, b"no such page\n");
    }

    #[tokio::test]
    async fn other_methods_are_405_with_allow() {
        let mut stream = connect().await;
        for method in ["DELETE", "OPTIONS"] {
            let raw = exchange(&mut stream, (method, "/hello"), "", "").await;
            assert_eq!(
                raw.status_line(),
                "HTTP/1.1 405 Method Not Allowed",
                "{raw:?}"
            );
            assert_eq!(raw.header("allow"), Some("GET, HEAD"));
            assert_eq!(raw.body, b"only GET and HEAD are served\n");
        }
    }

    #[tokio::test]
    async fn keep_alive_serves_two_requests_on_one_connection() {
        let mut stream = connect().await;
        let first = exchange(&mut stream, ("GET", "/hello?a"), "", "").await;
        assert_eq!(first.body, b"hello a\n");
        assert_eq!(first.header("connection"), None, "{first:?}");
        let second = exchange(&mut stream, ("GET", "/hello?b"), "", "").await;
        assert_eq!(second.status_line(), "HTTP/1.1 200 OK", "{second:?}");
        assert_eq!(second.body, b"hello b\n");
    }

    #[tokio::test]
    async fn request_bodies_are_refused() {
        let mut stream = connect().await;
        // The body would read as a request of its own if the server went on.
        let smuggled = "GET /hello?smuggled HTTP/1.1\r\n\r\n";
        let length = format!("Content-Length: {}\r\n", smuggled.len());
        let raw = exchange(&mut stream, ("GET", "/hello"), &length, smuggled).await;
        assert_eq!(
            raw.status_line(),
            "HTTP/1.1 413 Payload Too Large",
            "{raw:?}"
        );
        assert_eq!(raw.header("connection"), Some("close"));
        assert_eq!(raw.body, b"request bodies are not accepted\n");
        expect_closed(&mut stream).await;
        // A POST is refused for its method first.
        let mut stream = connect().await;
        let raw = exchange(
            &mut stream,
            ("POST", "/hello"),
            "Content-Length: 2\r\n",
            "hi",
        )
        .await;
        assert_eq!(
            raw.status_line(),
            "HTTP/1.1 405 Method Not Allowed",
            "{raw:?}"
        );
        assert_eq!(raw.header("connection"), Some("close"));
    }

    /// An idle connection, new or kept alive, is closed after [`HEADER_READ_TIMEOUT`]
    /// (on the runtime's paused clock, which jumps ahead when every task waits).
    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed() {
        let mut stream = connect().await;
        let closed = tokio::time::timeout(HEADER_READ_TIMEOUT * 2, expect_closed(&mut stream));
        assert!(closed.await.is_ok(), "a silent connection stayed open");
        let mut stream = connect().await;
        let raw = exchange(&mut stream, ("GET", "/hello"), "", "").await;
        assert_eq!(raw.status_line(), "HTTP/1.1 200 OK", "{raw:?}");
        let closed = tokio::time::timeout(HEADER_READ_TIMEOUT * 2, expect_closed(&mut stream));
        assert!(
            closed.await.is_ok(),
            "an idle keep-alive connection stayed open"
        );
    }

    /// A failing `accept` is retried after growing pauses, not at once: time here is the
    /// runtime's paused clock, which only moves when every task waits.
    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off() {
        const FAILURES: usize = 6;
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&calls);
        let accept = move || {
            let n = {
                let mut calls = seen.lock().expect("calls");
                calls.push(Instant::now());
                calls.len()
            };
            async move {
                if n > FAILURES {
                    std::future::pending::<()>().await;
                }
                Err::<(TcpStream, SocketAddr), _>(io::Error::from_raw_os_error(libc::EMFILE))
            }
        };
        let accepting = accept_loop("test server", accept, Arc::new(Hello));
        assert!(
            tokio::time::timeout(Duration::from_secs(60), accepting)
                .await
                .is_err(),
            "the accept loop returned"
        );
        let calls = calls.lock().expect("calls");
        assert_eq!(calls.len(), FAILURES + 1, "{calls:?}");
        let pauses: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
        for (i, pause) in pauses.iter().enumerate() {
            let failures = u32::try_from(i + 1).expect("small");
            assert!(*pause >= accept_backoff(failures), "{pauses:?}");
        }
        assert!(pauses[0] >= ACCEPT_BACKOFF_MIN, "{pauses:?}");
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
    }

    #[test]
    fn accept_backoff_grows_to_its_cap() {
        assert_eq!(accept_backoff(1), ACCEPT_BACKOFF_MIN);
        assert_eq!(accept_backoff(2), ACCEPT_BACKOFF_MIN * 2);
        assert_eq!(accept_backoff(50), ACCEPT_BACKOFF_MAX);
        assert_eq!(accept_backoff(u32::MAX), ACCEPT_BACKOFF_MAX);
    }
}
