//! The daemon's HTTP endpoint (`--metrics-addr`): the Prometheus metrics at `/metrics`,
//! the live stats page at `/` and the JSON it polls at `/stats.json` ([`page`]). Each
//! request reads the datapath's counters and the last published state; none waits for
//! the controller, and none changes anything.
use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use hyper::StatusCode;

use self::page::Conntrack;
use super::{
    Context,
    http::{self, Reply},
    metrics::render,
    views,
};

pub mod page;

/// Serves the pages on `listener` until the task is aborted; any other path is 404.
pub async fn serve(listener: tokio::net::TcpListener, ctx: Context) {
    if let Ok(addr) = listener.local_addr() {
        log::info!("metrics on http://{addr}/metrics, the stats page on http://{addr}/");
    }
    http::serve(listener, Arc::new(Pages { ctx })).await;
}

/// The endpoint's pages.
struct Pages {
    ctx: Context,
}

/// What a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Page {
    Metrics,
    Stats,
    StatsJson,
}

fn route(path: &str) -> Option<Page> {
    match path {
        "/metrics" => Some(Page::Metrics),
        "/" => Some(Page::Stats),
        "/stats.json" => Some(Page::StatsJson),
        _ => None,
    }
}

/// The answer to an unknown path.
const NOT_FOUND: &str = "not found: lb serves / (the stats page), /stats.json and /metrics\n";

impl http::Routes for Pages {
    fn get<'a>(&'a self, path: &'a str, _query: Option<&'a str>) -> http::ReplyFuture<'a> {
        Box::pin(async move {
            let Some(page) = route(path) else {
                return Reply::new(StatusCode::NOT_FOUND, http::TEXT, NOT_FOUND);
            };
            if page == Page::Stats {
                return Reply::new(StatusCode::OK, "text/html; charset=utf-8", page::HTML);
            }
            let ctx = self.ctx.clone();
            let read = tokio::task::spawn_blocking(move || {
                let snap = ctx.snapshot();
                let counts = ctx.conn_counts();
                let now = views::Readings::read(&ctx.counters, &snap)?;
                anyhow::Ok(match page {
                    Page::Metrics => Reply::new(
                        StatusCode::OK,
                        "text/plain; version=0.0.4; charset=utf-8",
                        render(&views::metrics(&snap, &counts, &now)),
                    ),
                    _ => {
                        let samples = ctx.samples();
                        let conntrack = Conntrack {
                            entries: counts.entries as u64,
                            max_entries: u64::from(snap.runtime.conntrack.max_entries),
                        };
                        let data = page::data(
                            ctx.lifecycle.status(),
                            views::list(&snap, &counts),
                            views::stats(&snap, &counts, &now, Some(&samples)),
                            conntrack,
                            unix_ms(),
                        );
                        Reply::new(
                            StatusCode::OK,
                            "application/json",
                            serde_json::to_vec(&data)?,
                        )
                    }
                })
            })
            .await;
            let error = StatusCode::INTERNAL_SERVER_ERROR;
            match read {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => Reply::new(error, http::TEXT, format!("{e:#}\n")),
                Err(e) => Reply::new(error, http::TEXT, format!("{e}\n")),
            }
        })
    }
}

/// Now, in milliseconds since the Unix epoch (0 before it).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_pages_and_nothing_else() {
        assert_eq!(route("/"), Some(Page::Stats));
        assert_eq!(route("/stats.json"), Some(Page::StatsJson));
        assert_eq!(route("/metrics"), Some(Page::Metrics));
        for other in ["", "/index.html", "/metrics/", "/stats", "/../metrics"] {
            assert_eq!(route(other), None, "{other}");
        }
    }
}
