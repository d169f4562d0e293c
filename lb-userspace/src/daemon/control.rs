//! The control socket: a UNIX stream socket, one JSON request per line, one JSON response
//! per line, any number of concurrent clients.
//!
//! Reading requests (`list`, `stats`, `conns`) are answered from the latest snapshot and
//! the datapath's counters, without the controller; changes go to the controller's
//! queue. Looking up the neighbours of new DSR backends (which may wait for ARP) happens
//! here, before the change is queued, so it holds up nobody else.
use std::{
    io,
    os::unix::fs::{FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use super::{
    Context,
    controller::{Change, new_dsr_addresses},
    sweeper::now_seconds,
    views::{self, ConnFilter, ConnsView, Readings},
};
use crate::{
    api::{MAX_LINE, Request, Response},
    config::Config,
    dataplane::batch::Walk,
};

/// Binds the control socket at `path` (mode 0600, directory 0700 when lb creates it).
/// Refuses when another lb answers there; removes a stale socket left by a crashed run.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "another lb is serving the control socket {}: stop it first, or give this one another --socket",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
            log::info!(
                "removed a stale control socket left by an earlier run: {}",
                path.display()
            );
        }
        Ok(_) => bail!(
            "{} exists and is not a socket: remove it or give another --socket",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    }
    // Created owner-only from the start (not chmod-ed afterwards, which leaves a window).
    // SAFETY: umask(2) only swaps the process's file-creation mask.
    let mask = unsafe { libc::umask(0o177) };
    let bound = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(mask) };
    let listener =
        bound.with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Removes the socket file when dropped.
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Accepts clients until the task is aborted.
pub async fn serve(listener: UnixListener, ctx: Context) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(client(stream, ctx.clone()));
            }
            Err(e) => {
                log::warn!("control socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// A line read from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line (without its newline) is in the buffer.
    Complete,
    /// The line exceeded the limit; it was read to its end and discarded.
    TooLong,
    /// The client closed the connection.
    Eof,
}

/// Reads one line of at most `max` bytes into `buf`; longer lines are consumed to their
/// newline and reported, so the next request on the connection still parses.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(if too_long {
                Line::TooLong
            } else if buf.is_empty() {
                Line::Eof
            } else {
                Line::Complete
            });
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if !too_long {
            if buf.len() + chunk.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let used = done.unwrap_or(available.len());
        r.consume(used);
        if done.is_some() {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Complete
            });
        }
    }
}

async fn client(stream: UnixStream, ctx: Context) {
    // The same socket, for a hand-over's answer (which carries a descriptor).
    let raw = std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut buf = Vec::with_capacity(1024);
    loop {
        let response = match read_line(&mut r, &mut buf, MAX_LINE).await {
            Err(_) | Ok(Line::Eof) => return,
            Ok(Line::TooLong) => Response::error(format!(
                "request line longer than {MAX_LINE} bytes: rejected, nothing changed; send one request per line"
            )),
            Ok(Line::Complete) => match std::str::from_utf8(&buf) {
                Err(_) => Response::error("request is not UTF-8 text: rejected, nothing changed"),
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => match Request::parse(text.trim()) {
                    Err(e) => Response::error(e),
                    Ok(Request::Takeover {}) => {
                        let Ok(raw) = &raw else {
                            return;
                        };
                        match super::lifecycle::hand_over(raw, &*ctx.listener) {
                            Ok(()) => {
                                log::info!("handing the datapath over to a new lb run");
                                let _ = ctx.stop.send(super::Stop::Handover);
                            }
                            Err(e) => log::warn!("handing over failed: {e}"),
                        }
                        return;
                    }
                    Ok(req) => {
                        log::debug!("control request: {}", req.op());
                        handle(&ctx, req).await
                    }
                },
            },
        };
        // Changes are logged by the controller as they are made; refusals here.
        if let Some(e) = &response.error {
            log::info!("control request rejected: {e}");
        }
        let mut line = response.to_line();
        line.push('\n');
        if w.write_all(line.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Answers one request.
pub async fn handle(ctx: &Context, req: Request) -> Response {
    let change = match req {
        Request::Status {} => return Response::ok(&ctx.lifecycle.status()),
        Request::Takeover {} => {
            return Response::error("takeover: only `lb run --takeover` asks for it");
        }
        Request::List {} => {
            let snap = ctx.snapshot();
            return Response::ok(&views::list(&snap, &ctx.conn_counts()));
        }
        Request::Stats { rate } => {
            let ctx = ctx.clone();
            return blocking(move || {
                let snap = ctx.snapshot();
                let now = Readings::read(&ctx.counters, &snap)?;
                let samples = rate.then(|| ctx.samples());
                Ok(Response::ok(&views::stats(
                    &snap,
                    &ctx.conn_counts(),
                    &now,
                    samples.as_ref(),
                )))
            })
            .await;
        }
        Request::Conns {
            service,
            backend,
            limit,
        } => {
            let ctx = ctx.clone();
            return blocking(move || {
                let snap = ctx.snapshot();
                let filter = ConnFilter {
                    service,
                    backend,
                    limit,
                };
                // In batches: memory stays bounded whatever the table's size.
                let mut view = ConnsView::new(&snap, now_seconds(), filter);
                let mut walk = Walk::default();
                while let Some(batch) = ctx.conn_table.walk(&mut walk, 4096)? {
                    view.add(&batch);
                }
                let mut walk = Walk::default();
                while let Some(batch) = ctx.conn_table.walk6(&mut walk, 4096)? {
                    view.add(&batch);
                }
                Ok(Response::ok(&view.finish()))
            })
            .await;
        }
        Request::Reload {} => return reload(ctx).await,
        change => Change::from_request(change).expect("a change"),
    };
    match make(ctx, change).await {
        Ok(()) => Response::done(),
        Err(e) => Response::error(e),
    }
}

/// Re-reads the configuration file; an invalid file changes nothing.
pub async fn reload(ctx: &Context) -> Response {
    let path = ctx.config_path.clone();
    let loaded = tokio::task::spawn_blocking(move || Config::load(&path)).await;
    let outcome = match loaded {
        Ok(Ok(config)) => make(ctx, Change::Reload(config)).await,
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("internal error: {e}")),
    };
    match outcome {
        Ok(()) => Response::done(),
        Err(e) => Response::error(format!(
            "reload rejected, the running configuration stays: {e}"
        )),
    }
}

/// Looks up the neighbours a change needs, then has the controller make it; the
/// connection-table entries of services it removed go afterwards.
async fn make(ctx: &Context, change: Change) -> Result<(), String> {
    let new = {
        let snap = ctx.snapshot();
        new_dsr_addresses(&change, &snap.runtime, &snap.neighbours)
    };
    let found = if new.is_empty() {
        Default::default()
    } else {
        super::neighbours::resolve_waiting(&ctx.netlink, new)
            .await
            .map_err(|e| format!("{e:#}"))?
    };
    match ctx.writer.change(change, found).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(stopped) => Err(stopped.to_string()),
    }
}

/// Runs blocking reads off the async threads.
async fn blocking(f: impl FnOnce() -> Result<Response> + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Response::error(format!("{e:#}")),
        Err(e) => Response::error(format!("internal error: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<(Line, String)> {
        let mut r = BufReader::with_capacity(7, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let l = read_line(&mut r, &mut buf, max).await.unwrap();
            let eof = l == Line::Eof;
            out.push((l, String::from_utf8_lossy(&buf).into_owned()));
            if eof {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn long_lines_are_reported_and_skipped_whole() {
        let got = lines(
            b"short\nthis line is far too long\nok\nlast-without-newline",
            10,
        )
        .await;
        assert_eq!(
            got,
            vec![
                (Line::Complete, "short".into()),
                (Line::TooLong, String::new()),
                (Line::Complete, "ok".into()),
                (Line::TooLong, String::new()),
                (Line::Eof, String::new()),
            ]
        );
        let got = lines(b"a\nend", 10).await;
        assert_eq!(
            got,
            vec![
                (Line::Complete, "a".into()),
                (Line::Complete, "end".into()),
                (Line::Eof, String::new())
            ]
        );
        let got = lines(b"exactly-10\n", 10).await;
        assert_eq!(got[0], (Line::Complete, "exactly-10".into()));
    }
}
