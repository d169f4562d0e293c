//! The daemon's HTTP endpoint (`--metrics-addr`): the Prometheus metrics at `/metrics`.
//! Each request reads the datapath's counters and the last published state; none waits
//! for the controller.
use std::sync::Arc;

use hyper::StatusCode;

use super::{
    Context,
    http::{self, Reply},
    metrics::render,
    views,
};

/// Serves `GET /metrics` (and HEAD) on `listener` until the task is aborted; any other
/// path is 404.
pub async fn serve(listener: tokio::net::TcpListener, ctx: Context) {
    if let Ok(addr) = listener.local_addr() {
        log::info!("metrics on http://{addr}/metrics");
    }
    http::serve(listener, Arc::new(Metrics { ctx })).await;
}

/// The metrics endpoint's one page.
struct Metrics {
    ctx: Context,
}

impl http::Routes for Metrics {
    fn get<'a>(&'a self, path: &'a str, _query: Option<&'a str>) -> http::ReplyFuture<'a> {
        Box::pin(async move {
            if path != "/metrics" {
                let body = "only GET /metrics is served\n";
                return Reply::new(StatusCode::NOT_FOUND, http::TEXT, body);
            }
            let ctx = self.ctx.clone();
            let snap = tokio::task::spawn_blocking(move || {
                let snap = ctx.snapshot();
                let now = views::Readings::read(&ctx.counters, &snap)?;
                anyhow::Ok(views::metrics(&snap, &ctx.conn_counts(), &now))
            })
            .await;
            let error = StatusCode::INTERNAL_SERVER_ERROR;
            match snap {
                Ok(Ok(s)) => Reply::new(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    render(&s),
                ),
                Ok(Err(e)) => Reply::new(error, http::TEXT, format!("{e:#}\n")),
                Err(e) => Reply::new(error, http::TEXT, format!("{e}\n")),
            }
        })
    }
}
