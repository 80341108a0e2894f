//! The HTTP endpoint: `/metrics` (Prometheus text format), `/healthz`, `/readyz`.
//!
//! It runs on a thread and a small runtime of its own, so a slow or abusive scraper competes with
//! nothing on the pipeline's runtime; at most [`MAX_CONCURRENT`] requests are served at once (the
//! rest get 503 at once). A page is built from atomics and one short lock, never waiting on the
//! pipeline. Responses carry counters and states only: no config values, no secrets.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::Semaphore;

use super::health::Health;
use super::metrics::Metrics;

const MAX_CONCURRENT: usize = 8;

/// Refreshes the gauges that are read rather than pushed (in-flight, send rate) before a scrape.
pub type BeforeScrape = Box<dyn Fn() + Send + Sync>;

struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    before_scrape: BeforeScrape,
    slots: Semaphore,
}

/// A started endpoint; dropping it stops it.
pub struct Endpoint {
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds `listen` now (so a taken or bad address stops start-up, naming `key`) and serves on a
/// thread of its own.
pub fn start(
    listen: &str,
    key: &str,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    before_scrape: BeforeScrape,
) -> Result<Endpoint, String> {
    let address: SocketAddr = listen.parse().map_err(|_| {
        format!("{key}: `{listen}` is not an address to listen on: expected host:port, e.g. 0.0.0.0:9464")
    })?;
    let listener = std::net::TcpListener::bind(address).map_err(|e| {
        format!(
            "{key}: cannot listen on {address}: {e}. Choose a free port, or set http.enabled: false"
        )
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("{key}: {e}"))?;
    let address = listener.local_addr().map_err(|e| format!("{key}: {e}"))?;
    let shared = Arc::new(Shared {
        metrics,
        health,
        before_scrape,
        slots: Semaphore::new(MAX_CONCURRENT),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("doka-http".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("the HTTP endpoint cannot start its runtime: {e}");
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("the HTTP endpoint cannot listen: {e}");
                        return;
                    }
                };
                let app = Router::new()
                    .route("/metrics", get(metrics_page))
                    .route("/healthz", get(healthz))
                    .route("/readyz", get(readyz))
                    .with_state(shared);
                let server = axum::serve(listener, app).with_graceful_shutdown(async {
                    let _ = stopped.await;
                });
                if let Err(e) = server.await {
                    tracing::error!("the HTTP endpoint stopped: {e}");
                }
            });
        })
        .map_err(|e| format!("{key}: cannot start the HTTP thread: {e}"))?;
    Ok(Endpoint {
        address,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Runs `page` if one of the slots is free, else 503.
async fn bounded(shared: &Shared, page: impl FnOnce(&Shared) -> Response) -> Response {
    let Ok(_slot) = shared.slots.try_acquire() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "busy\n").into_response();
    };
    page(shared)
}

async fn metrics_page(State(shared): State<Arc<Shared>>) -> Response {
    bounded(&shared, |s| {
        (s.before_scrape)();
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            s.metrics.encode(),
        )
            .into_response()
    })
    .await
}

fn verdict(result: Result<(), String>) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    bounded(&shared, |s| verdict(s.health.alive())).await
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    bounded(&shared, |s| verdict(s.health.ready())).await
}
