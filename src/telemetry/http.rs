//! The HTTP endpoint: `/metrics` (Prometheus text format), `/healthz`, `/readyz`.
//!
//! It runs on a thread and a small runtime of its own, so a slow or abusive scraper competes with
//! nothing on the pipeline's runtime. At most [`MAX_CONNECTIONS`] connections are open at once
//! (more are closed as they come: the process' file descriptors belong to Kafka and Kinesis
//! first), each lives at most [`CONNECTION_TIMEOUT`] (a client that sends no request within
//! [`HEADER_READ_TIMEOUT`] is dropped),
//! and one request is served per connection. A page is built from atomics and one short lock,
//! never waiting on the pipeline. Responses carry counters and states only: no config values, no
//! secrets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::sync::Semaphore;

use super::health::Health;
use super::metrics::Metrics;

pub const MAX_CONNECTIONS: usize = 16;
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that has not sent its request headers by then is dropped: idle connections hold a
/// slot only this long, so the kubelet's probes (timeoutSeconds 3) get through a flood of them.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Refreshes the gauges that are read rather than pushed (in-flight, send rate) before a scrape.
pub type BeforeScrape = Box<dyn Fn() + Send + Sync>;

struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    before_scrape: BeforeScrape,
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
                serve(listener, shared, stopped).await;
            });
        })
        .map_err(|e| format!("{key}: cannot start the HTTP thread: {e}"))?;
    Ok(Endpoint {
        address,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Accepts until `stopped`, within the bounds above. Connections still open when it returns
/// are dropped with the runtime.
async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // over the cap: the connection is closed at once
        };
        let shared = shared.clone();
        let service = hyper::service::service_fn(move |request| {
            let answer = answer(&shared, &request);
            async move { Ok::<_, Infallible>(answer) }
        });
        tokio::spawn(async move {
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        });
    }
}

/// GET (or HEAD: hyper then sends the headers, the length included, without the body) on one of
/// the three paths; 405 naming GET and HEAD for another method there; 404 for any other path.
fn answer(shared: &Shared, request: &Request<Incoming>) -> Response<String> {
    let page: fn(&Shared) -> Response<String> = match request.uri().path() {
        "/metrics" => metrics_page,
        "/healthz" => |shared| verdict(shared.health.alive()),
        "/readyz" => |shared| verdict(shared.health.ready()),
        _ => return empty(StatusCode::NOT_FOUND),
    };
    match *request.method() {
        Method::GET | Method::HEAD => page(shared),
        _ => {
            let mut refused = empty(StatusCode::METHOD_NOT_ALLOWED);
            refused
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
            refused
        }
    }
}

fn metrics_page(shared: &Shared) -> Response<String> {
    (shared.before_scrape)();
    text(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        shared.metrics.encode(),
    )
}

fn verdict(result: Result<(), String>) -> Response<String> {
    let plain = "text/plain; charset=utf-8";
    match result {
        Ok(()) => text(StatusCode::OK, plain, "ok\n".to_owned()),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, plain, format!("{why}\n")),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<String> {
    let length = HeaderValue::from(body.len());
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, length);
    response
}

fn empty(status: StatusCode) -> Response<String> {
    let mut response = Response::new(String::new());
    *response.status_mut() = status;
    response
}
