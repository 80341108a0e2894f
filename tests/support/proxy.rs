//! A fault-injecting HTTP proxy in front of the Kinesis emulator. No emulator throttles or fails
//! single entries, so this one does: it rejects a chosen share of PutRecords entries with
//! `ProvisionedThroughputExceededException` (those entries are *not* forwarded, exactly like a
//! real throttled entry), or every entry beyond a shard-like capacity per second; answers a share
//! of whole requests with 500/503 or lets them time out; and can refuse connections for a while.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Share of PutRecords entries rejected as throttled.
    pub entry_failure_rate: f64,
    /// Share of PutRecords requests answered with a 500/503 without being forwarded.
    pub request_error_rate: f64,
    /// Every n-th PutRecords request is answered with a 500/503 (as well as the random share).
    pub error_every: Option<u64>,
    /// Every n-th PutRecords request gets no answer before `hang` has passed; every other one of
    /// them is written upstream first (a timeout says nothing about whether it was applied).
    pub timeout_every: Option<u64>,
    pub hang: Duration,
    /// Entries per second the "stream" takes, like a shard's 1,000 records/s; the rest of each
    /// request is throttled. A second's worth can be taken at once.
    pub capacity_per_sec: Option<f64>,
    /// Answer every PutRecords with this error type and status 400 (e.g. AccessDeniedException).
    pub deny_with: Option<&'static str>,
    /// In front of STS: refuse AssumeRole as a role's trust policy would (the emulator trusts
    /// everyone and ignores external ids).
    pub trust: Option<Trust>,
    /// In front of STS: web-identity credentials (AssumeRoleWithWebIdentity, the IRSA exchange)
    /// expire this long after they are handed out (the emulator gives an hour).
    pub web_identity_expires_in: Option<Duration>,
    /// A PutRecords request carrying an entry with this partition key is never forwarded or
    /// answered (a request in flight at a kill); doka's request timeout ends its wait.
    pub hold_key: Option<&'static str>,
}

/// What a role's trust policy lets through, for the STS proxy.
#[derive(Debug, Clone, Copy)]
pub struct Trust {
    /// AssumeRole into this role is refused to everyone.
    pub refused_role: Option<&'static str>,
    /// AssumeRole without exactly this external id is refused.
    pub external_id: Option<&'static str>,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub put_records_requests: AtomicU64,
    pub entries_seen: AtomicU64,
    /// The largest PutRecords request that reached the proxy intact (not answered with an
    /// injected error or timeout first), as Kinesis measures its 5 MiB limit: data (decoded) and
    /// partition keys.
    pub largest_request_bytes: AtomicU64,
    pub entries_rejected: AtomicU64,
    pub requests_failed: AtomicU64,
    pub requests_timed_out: AtomicU64,
    pub requests_denied: AtomicU64,
    /// Every distinct `Data` value (base64) that reached the proxy in a PutRecords request.
    pub distinct_data: Mutex<std::collections::HashSet<String>>,
    /// The message ids ([`super::message_id`]) of entries the stream accepted, in answer order.
    pub acked_ids: Mutex<Vec<usize>>,
    /// PutRecords requests held by `Faults::hold_key`, and the message ids in them.
    pub held_requests: AtomicU64,
    /// PutRecords requests received and not answered yet (held ones included), and the entries
    /// in them: what is in flight.
    pub open_requests: AtomicU64,
    pub open_entries: AtomicU64,
    pub held_ids: Mutex<std::collections::HashSet<usize>>,
}

impl Counters {
    /// How many entries the stream accepted so far.
    pub fn acked(&self) -> usize {
        self.acked_ids.lock().unwrap().len()
    }

    /// The ids of the entries the stream accepted so far.
    pub fn acked_set(&self) -> std::collections::HashSet<usize> {
        self.acked_ids.lock().unwrap().iter().copied().collect()
    }
}

/// Counts a request and its entries as open while it lives.
struct Open<'a> {
    counters: &'a Counters,
    entries: u64,
}

impl<'a> Open<'a> {
    fn new(counters: &'a Counters) -> Self {
        counters.open_requests.fetch_add(1, Ordering::SeqCst);
        Self {
            counters,
            entries: 0,
        }
    }

    fn entries(&mut self, n: u64) {
        self.entries += n;
        self.counters.open_entries.fetch_add(n, Ordering::SeqCst);
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.counters.open_requests.fetch_sub(1, Ordering::SeqCst);
        self.counters
            .open_entries
            .fetch_sub(self.entries, Ordering::SeqCst);
    }
}

/// The message id in a PutRecords entry's data, if it is one of [`super::keyed_messages`].
fn entry_id(entry: &Value) -> Option<usize> {
    let data = base64_simd::STANDARD
        .decode_to_vec(entry["Data"].as_str()?)
        .ok()?;
    let text = std::str::from_utf8(&data[..data.iter().position(|&b| b == b';')?]).ok()?;
    text.strip_prefix("id=")?.parse().ok()
}

pub struct FaultProxy {
    pub url: String,
    pub faults: Arc<Mutex<Faults>>,
    pub counters: Arc<Counters>,
    refusing: watch::Sender<bool>,
}

impl FaultProxy {
    /// Starts the proxy on a free loopback port, forwarding to `upstream` (http://host:port).
    /// A proxy whose "stream" takes `records_per_sec` entries per second and throttles the rest:
    /// a run that lasts long enough on any machine for something to happen mid-run.
    pub async fn slowed(upstream: &str, records_per_sec: f64) -> Self {
        Self::start(
            upstream,
            Faults {
                capacity_per_sec: Some(records_per_sec),
                ..Faults::default()
            },
        )
        .await
    }

    pub async fn start(upstream: &str, faults: Faults) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let faults = Arc::new(Mutex::new(faults));
        let counters = Arc::new(Counters::default());
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            faults: faults.clone(),
            counters: counters.clone(),
            bucket: Mutex::new(None),
        });
        let (refusing, mut refusing_rx) = watch::channel(false);
        tokio::spawn(async move {
            let mut listener = Some(listener);
            loop {
                // Refusing: no listener on the port at all, so connecting fails at once.
                let _ = refusing_rx.wait_for(|refusing| !refusing).await;
                let listener = match listener.take() {
                    Some(l) => l,
                    None => TcpListener::bind(addr)
                        .await
                        .expect("rebind the proxy's port"),
                };
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { return };
                            let state = state.clone();
                            connections.spawn(async move {
                                let service = hyper::service::service_fn(move |req| {
                                    let state = state.clone();
                                    async move { Ok::<_, Infallible>(state.handle(req).await) }
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                        changed = refusing_rx.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            if *refusing_rx.borrow() {
                                // Close the port and every open connection.
                                connections.abort_all();
                                break;
                            }
                        }
                    }
                }
            }
        });
        Self {
            url: format!("http://{addr}"),
            faults,
            counters,
            refusing,
        }
    }

    /// Closes the port: connections are refused until [`Self::accept_connections`].
    pub fn refuse_connections(&self) {
        self.refusing.send_replace(true);
    }

    pub fn accept_connections(&self) {
        self.refusing.send_replace(false);
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap() = faults;
    }
}

struct State {
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
    faults: Arc<Mutex<Faults>>,
    counters: Arc<Counters>,
    /// (tokens, last refill) of the capacity limit.
    bucket: Mutex<Option<(f64, Instant)>>,
}

impl State {
    /// How many of `n` entries fit in the capacity now (all when there is no limit).
    fn take_capacity(&self, capacity: Option<f64>, n: usize) -> usize {
        let Some(per_sec) = capacity else {
            return n;
        };
        let mut bucket = self.bucket.lock().unwrap();
        let now = Instant::now();
        let (tokens, last) = bucket.get_or_insert((per_sec, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * per_sec).min(per_sec);
        *last = now;
        let granted = (tokens.floor().max(0.0) as usize).min(n);
        *tokens -= granted as f64;
        granted
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let target = parts
            .headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let trust = self.faults.lock().unwrap().trust;
        if let Some(trust) = trust
            && let Some(refusal) = refuse_assume_role(&trust, &body)
        {
            return Response::builder()
                .status(StatusCode::FORBIDDEN)
                .header("content-type", "text/xml")
                .body(Full::new(Bytes::from(refusal)))
                .unwrap();
        }
        if !target.ends_with(".PutRecords") {
            let expires_in = self.faults.lock().unwrap().web_identity_expires_in;
            let web_identity = form_action(&body).as_deref() == Some("AssumeRoleWithWebIdentity");
            let (status, mut body) = self.forward(&parts, body).await;
            if let Some(expires_in) = expires_in.filter(|_| web_identity) {
                body = with_expiration(&body, std::time::SystemTime::now() + expires_in);
            }
            return respond(status, body);
        }
        let nth = self
            .counters
            .put_records_requests
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let mut open = Open::new(&self.counters);
        let faults = *self.faults.lock().unwrap();
        let every = |n: Option<u64>| n.is_some_and(|n| nth.is_multiple_of(n));
        if let Some(kind) = faults.deny_with {
            self.counters
                .requests_denied
                .fetch_add(1, Ordering::Relaxed);
            return respond(
                StatusCode::BAD_REQUEST,
                Bytes::from(
                    json!({"__type": kind, "message": "User: arn:aws:sts::222222222222:assumed-role/doka-writer/doka is not authorized to perform: kinesis:PutRecords (injected by the test proxy)"}).to_string(),
                ),
            );
        }
        if every(faults.timeout_every) {
            let timeouts = self
                .counters
                .requests_timed_out
                .fetch_add(1, Ordering::Relaxed);
            if timeouts.is_multiple_of(2) {
                self.forward(&parts, body).await;
            }
            tokio::time::sleep(faults.hang).await;
            return respond(StatusCode::GATEWAY_TIMEOUT, Bytes::new());
        }
        if every(faults.error_every) || rand::random::<f64>() < faults.request_error_rate {
            self.counters
                .requests_failed
                .fetch_add(1, Ordering::Relaxed);
            let (status, kind) = if rand::random::<bool>() {
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            };
            return respond(
                status,
                Bytes::from(
                    json!({"__type": kind, "message": "injected by the test proxy"}).to_string(),
                ),
            );
        }

        let mut request: Value = serde_json::from_slice(&body).expect("PutRecords JSON");
        let entries = request["Records"].as_array().cloned().unwrap_or_default();
        self.counters
            .entries_seen
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        open.entries(entries.len() as u64);
        self.counters
            .largest_request_bytes
            .fetch_max(request_bytes(&entries), Ordering::Relaxed);
        let within_capacity = self.take_capacity(faults.capacity_per_sec, entries.len());
        let rejected: Vec<bool> = (0..entries.len())
            .map(|i| i >= within_capacity || rand::random::<f64>() < faults.entry_failure_rate)
            .collect();
        let n_rejected = rejected.iter().filter(|r| **r).count();
        self.counters
            .entries_rejected
            .fetch_add(n_rejected as u64, Ordering::Relaxed);
        if let Some(key) = faults.hold_key
            && entries.iter().any(|e| e["PartitionKey"] == key)
        {
            self.counters.held_requests.fetch_add(1, Ordering::SeqCst);
            self.counters
                .held_ids
                .lock()
                .unwrap()
                .extend(entries.iter().filter_map(entry_id));
            std::future::pending::<()>().await;
        }
        if n_rejected == 0 {
            let (status, body) = self.forward(&parts, body).await;
            if status == StatusCode::OK
                && let Ok(answer) = serde_json::from_slice::<Value>(&body)
            {
                self.note_acked(&entries, answer["Records"].as_array());
            }
            return respond(status, body);
        }

        // Forward only the accepted entries, then splice the throttled ones back into place.
        let accepted: Vec<Value> = entries
            .iter()
            .zip(&rejected)
            .filter(|(_, r)| !**r)
            .map(|(e, _)| e.clone())
            .collect();
        let mut upstream_results = Vec::new();
        if !accepted.is_empty() {
            request["Records"] = Value::Array(accepted);
            let (status, body) = self.forward(&parts, Bytes::from(request.to_string())).await;
            if status != StatusCode::OK {
                return respond(status, body);
            }
            let answer: Value = serde_json::from_slice(&body).expect("PutRecords answer");
            self.note_acked(
                request["Records"].as_array().unwrap(),
                answer["Records"].as_array(),
            );
            upstream_results = answer["Records"].as_array().cloned().unwrap_or_default();
        }
        let mut upstream_results = upstream_results.into_iter();
        let mut failed = 0;
        let results: Vec<Value> = rejected
            .iter()
            .map(|r| {
                if *r {
                    failed += 1;
                    json!({
                        "ErrorCode": "ProvisionedThroughputExceededException",
                        "ErrorMessage": "Rate exceeded for shard (injected by the test proxy)"
                    })
                } else {
                    let v = upstream_results
                        .next()
                        .expect("one result per forwarded entry");
                    if v.get("ErrorCode").is_some_and(|c| !c.is_null()) {
                        failed += 1;
                    }
                    v
                }
            })
            .collect();
        respond(
            StatusCode::OK,
            Bytes::from(json!({"FailedRecordCount": failed, "Records": results}).to_string()),
        )
    }

    /// Notes the ids of the entries the stream's answer accepted.
    fn note_acked(&self, entries: &[Value], results: Option<&Vec<Value>>) {
        let Some(results) = results else {
            return;
        };
        let accepted = entries
            .iter()
            .zip(results)
            .filter(|(_, r)| r.get("ErrorCode").is_none_or(Value::is_null))
            .filter_map(|(e, _)| entry_id(e));
        self.counters.acked_ids.lock().unwrap().extend(accepted);
    }

    async fn forward(
        &self,
        parts: &hyper::http::request::Parts,
        body: Bytes,
    ) -> (StatusCode, Bytes) {
        let uri = format!(
            "{}{}",
            self.upstream,
            parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
        );
        let mut builder = Request::builder().method(parts.method.clone()).uri(uri);
        for (name, value) in &parts.headers {
            if name != "host" && name != "content-length" {
                builder = builder.header(name, value);
            }
        }
        let req = builder.body(Full::new(body)).unwrap();
        match self.client.request(req).await {
            Ok(resp) => {
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                (status, body)
            }
            Err(e) => (
                StatusCode::BAD_GATEWAY,
                Bytes::from(json!({"__type": "BadGateway", "message": e.to_string()}).to_string()),
            ),
        }
    }
}

/// The `Action` of a form-encoded STS query.
fn form_action(body: &[u8]) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v.into_owned())
}

/// An STS answer with its credentials' `<Expiration>` set to `at`.
fn with_expiration(body: &Bytes, at: std::time::SystemTime) -> Bytes {
    let text = String::from_utf8_lossy(body);
    let (Some(start), Some(end)) = (text.find("<Expiration>"), text.find("</Expiration>")) else {
        return body.clone();
    };
    let at = aws_smithy_types::DateTime::from(at)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .expect("a formattable time");
    Bytes::from(format!(
        "{}<Expiration>{at}{}",
        &text[..start],
        &text[end..]
    ))
}

/// STS's AccessDenied answer when `trust` refuses this AssumeRole request (a form-encoded
/// query); `None` for anything else.
fn refuse_assume_role(trust: &Trust, body: &[u8]) -> Option<String> {
    let form: std::collections::HashMap<String, String> =
        form_urlencoded::parse(body).into_owned().collect();
    if form.get("Action").map(String::as_str) != Some("AssumeRole") {
        return None;
    }
    let role = form.get("RoleArn").cloned().unwrap_or_default();
    let refused = trust.refused_role == Some(role.as_str())
        || trust
            .external_id
            .is_some_and(|id| form.get("ExternalId").map(String::as_str) != Some(id));
    refused.then(|| {
        format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>\
             <Code>AccessDenied</Code><Message>User: arn:aws:iam::123456789012:user/doka is not \
             authorized to perform: sts:AssumeRole on resource: {role} (trust policy emulated by \
             the test proxy)</Message></Error><RequestId>test</RequestId></ErrorResponse>"
        )
    })
}

/// What PutRecords entries weigh against the request limit: decoded data plus partition keys.
fn request_bytes(entries: &[Value]) -> u64 {
    entries
        .iter()
        .map(|e| {
            let data = e["Data"].as_str().unwrap_or_default();
            let padding = data.bytes().rev().take_while(|&b| b == b'=').count();
            let decoded = data.len() / 4 * 3 - padding;
            (decoded + e["PartitionKey"].as_str().unwrap_or_default().len()) as u64
        })
        .sum()
}

fn respond(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.1")
        .body(Full::new(body))
        .unwrap()
}
