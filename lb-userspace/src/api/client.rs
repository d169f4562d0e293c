//! A client of the control socket: the CLI's, and the tests'.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Request, Response};

/// Why a request got no result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach lb at {} (is `lb run` running? is --socket right?)", .socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to lb at {}", .socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unreadable response: {line}")]
    Unreadable {
        line: String,
        #[source]
        source: serde_json::Error,
    },
    /// The daemon refused the request; the message is its own.
    #[error("{0}")]
    Refused(String),
}

/// One connection to a daemon's control socket; requests go one at a time.
pub struct Client {
    socket: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the socket at `socket`; each read waits at most `timeout` (none: for
    /// ever).
    pub fn connect(socket: &Path, timeout: Option<Duration>) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
        let io = |source| ClientError::Io {
            socket: socket.to_path_buf(),
            source,
        };
        stream.set_read_timeout(timeout).map_err(io)?;
        let reader = BufReader::new(stream.try_clone().map_err(io)?);
        Ok(Client {
            socket: socket.to_path_buf(),
            reader,
            writer: stream,
        })
    }

    /// Sends one request; returns its result as JSON, or the daemon's refusal.
    pub fn send(&mut self, req: &Request) -> Result<Value, ClientError> {
        let io = |source| ClientError::Io {
            socket: self.socket.clone(),
            source,
        };
        self.writer
            .write_all(format!("{}\n", req.to_line()).as_bytes())
            .map_err(io)?;
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(io)?;
        let resp: Response =
            serde_json::from_str(&line).map_err(|source| ClientError::Unreadable {
                line: line.clone(),
                source,
            })?;
        match (resp.ok, resp.result, resp.error) {
            (true, Some(v), _) => Ok(v),
            (true, None, _) => Ok(Value::Null),
            (false, _, e) => Err(ClientError::Refused(
                e.unwrap_or_else(|| "request failed".into()),
            )),
        }
    }

    /// Sends one request and reads its result as `T` (every field required).
    pub fn call<T: DeserializeOwned>(&mut self, req: &Request) -> Result<T, ClientError> {
        let v = self.send(req)?;
        let line = v.to_string();
        serde_json::from_value(v).map_err(|source| ClientError::Unreadable { line, source })
    }
}
