//! A local EKS Pod Identity agent: the node-local endpoint EKS points a pod's SDK at with
//! `AWS_CONTAINER_CREDENTIALS_FULL_URI` (`http://169.254.170.23/v1/credentials`), here on a
//! loopback port (the SDK allows plain HTTP to loopback as it does to the agent's addresses).
//!
//! It speaks the agent's protocol (github.com/aws/eks-pod-identity-agent): `GET /v1/credentials`
//! with the pod's projected service account token as the whole `Authorization` header; an empty
//! or unparseable token is a 400 with the agent's text, a token the EKS Auth API does not accept
//! is the 400 `InvalidTokenException` the agent passes on; accepted, the answer is
//! `{"AccessKeyId","SecretAccessKey","Token","AccountId","Expiration"}`. Where the real agent asks
//! EKS Auth (AssumeRoleForPodIdentity), this one asks the STS emulator for role A with account
//! A's long-term key, on every request, so each answer is fresh temporary credentials with a
//! real expiry and the SDK's renewals come back here. Not checked: the request's target host
//! (the agent insists on 169.254.170.23, which this machine does not route).

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::{REGION, UNSET, source_credentials};

/// The pod's role: the source identity, in the MSK cluster's account (A).
pub const ROLE_A: &str = "arn:aws:iam::123456789012:role/doka-pod";
const ACCOUNT_A: &str = "123456789012";
/// The path the agent serves credentials on.
const CREDENTIALS_PATH: &str = "/v1/credentials";

/// One request the agent answered.
#[derive(Debug, Clone)]
pub struct AgentRequest {
    pub path: String,
    /// The `Authorization` header, when there was one.
    pub presented: Option<String>,
    pub status: u16,
    /// The access key id handed out, when credentials were.
    pub issued_key: Option<String>,
    /// Its secret, to check that it appears nowhere.
    pub issued_secret: Option<String>,
}

/// The running agent and the pod's token file. Stopped when dropped.
pub struct PodIdentityAgent {
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` for the pod.
    pub url: String,
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`: holds the token the agent accepts.
    pub token_file: PathBuf,
    /// The token the agent accepts.
    pub token: String,
    requests: Arc<Mutex<Vec<AgentRequest>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// What the agent does on each request.
struct Agent {
    token: String,
    sts: aws_sdk_sts::Client,
    session_name: String,
    /// How long handed-out credentials last, when shorter than STS's answer.
    lifetime: Option<Duration>,
    requests: Arc<Mutex<Vec<AgentRequest>>>,
}

impl PodIdentityAgent {
    /// Starts the agent on a free loopback port; it hands out role A's credentials for session
    /// `session_name`, obtained from the STS emulator at `sts`.
    pub fn start(sts: &str, session_name: &str) -> Self {
        Self::start_with_lifetime(sts, session_name, None)
    }

    /// [`Self::start`], with credentials marked as expiring `lifetime` after they are handed
    /// out (the emulator gives an hour): the SDK comes back for new ones that often.
    pub fn start_with_lifetime(sts: &str, session_name: &str, lifetime: Option<Duration>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token = service_account_token();
        // As EKS projects it: a file holding the token, no trailing newline.
        let token_file = dir.path().join("eks-pod-identity-token");
        std::fs::write(&token_file, &token).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let agent = Arc::new(Agent {
            token: token.clone(),
            sts: sts_client(sts),
            session_name: session_name.to_owned(),
            lifetime,
            requests: requests.clone(),
        });
        // Its own thread and runtime: it answers whatever the test's runtime is blocked on
        // (a `doka check` run to completion, a wait for doka's exit).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(serve(agent, listener, stopped));
        });
        Self {
            url: format!("http://{addr}{CREDENTIALS_PATH}"),
            token_file,
            token,
            requests,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// The pod's environment as the EKS Pod Identity webhook sets it (the agent's loopback URL
    /// in place of 169.254.170.23), the region, and no keys, no web identity.
    pub fn pod_env(&self) -> [(&'static str, &str); 7] {
        [
            ("AWS_ACCESS_KEY_ID", UNSET),
            ("AWS_SECRET_ACCESS_KEY", UNSET),
            ("AWS_ROLE_ARN", UNSET),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", UNSET),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &self.url),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                self.token_file.to_str().unwrap(),
            ),
            ("AWS_REGION", REGION),
        ]
    }

    /// Puts another token into the pod's token file (one the agent does not accept).
    pub fn replace_token(&self, contents: &str) {
        std::fs::write(&self.token_file, contents).unwrap();
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<AgentRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// The access key ids handed out so far.
    pub fn issued_keys(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter_map(|r| r.issued_key)
            .collect()
    }
}

impl Drop for PodIdentityAgent {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    agent: Arc<Agent>,
    listener: std::net::TcpListener,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { return };
                let agent = agent.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let agent = agent.clone();
                        async move { Ok::<_, Infallible>(agent.handle(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = &mut stopped => return,
        }
    }
}

impl Agent {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let presented = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let (status, body, issued) = self.answer(&path, presented.as_deref()).await;
        let (issued_key, issued_secret) = issued.unzip();
        self.requests.lock().unwrap().push(AgentRequest {
            path,
            presented,
            status: status.as_u16(),
            issued_key,
            issued_secret,
        });
        let content_type = if status == StatusCode::OK {
            "application/json"
        } else {
            "text/plain; charset=utf-8"
        };
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }

    /// The agent's answer: status, body, and the key and secret handed out.
    async fn answer(
        &self,
        path: &str,
        presented: Option<&str>,
    ) -> (StatusCode, String, Option<(String, String)>) {
        let refuse = |message: &str| (StatusCode::BAD_REQUEST, format!("{message}\n"), None);
        if path != CREDENTIALS_PATH {
            return (StatusCode::NOT_FOUND, "404 page not found\n".into(), None);
        }
        let token = presented.unwrap_or_default();
        if token.is_empty() {
            return refuse("Service account token cannot be empty");
        }
        if token.split('.').count() != 3 {
            return refuse("Service account token cannot be parsed: token is malformed");
        }
        if token != self.token {
            // What EKS Auth answers for a token it did not issue, as the agent passes it on.
            return refuse(
                "[doka-test]: (InvalidTokenException): The specified Kubernetes service account \
                 token is invalid., fault: client",
            );
        }
        match self.assume_role_a().await {
            Ok(credentials) => {
                let field = |name: &str| credentials[name].as_str().unwrap_or_default().to_owned();
                let issued = (field("AccessKeyId"), field("SecretAccessKey"));
                (StatusCode::OK, credentials.to_string(), Some(issued))
            }
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e, None),
        }
    }

    /// Role A's temporary credentials in the agent's JSON.
    async fn assume_role_a(&self) -> Result<serde_json::Value, String> {
        let out = self
            .sts
            .assume_role()
            .role_arn(ROLE_A)
            .role_session_name(&self.session_name)
            .send()
            .await
            .map_err(|e| format!("AssumeRole into {ROLE_A}: {e:?}"))?;
        let c = out.credentials.ok_or("no credentials")?;
        let expiration = match self.lifetime {
            Some(lifetime) => aws_smithy_types::DateTime::from(SystemTime::now() + lifetime),
            None => c.expiration,
        };
        let expiration = expiration
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .map_err(|e| e.to_string())?;
        Ok(json!({
            "AccessKeyId": c.access_key_id,
            "SecretAccessKey": c.secret_access_key,
            "Token": c.session_token,
            "AccountId": ACCOUNT_A,
            "Expiration": expiration,
        }))
    }
}

/// STS at the emulator, as account A's long-term key (standing in for the agent's node role and
/// EKS Auth).
fn sts_client(sts: &str) -> aws_sdk_sts::Client {
    let conf = aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(aws_sdk_sts::config::Region::new(REGION))
        .endpoint_url(sts)
        .credentials_provider(source_credentials())
        .build();
    aws_sdk_sts::Client::from_conf(conf)
}

/// A JWT-shaped projected service account token for audience `pods.eks.amazonaws.com`, unique to
/// this agent (its signature is not checked: the agent only parses it, EKS Auth validates it).
fn service_account_token() -> String {
    let b64 = |s: &str| base64_simd::URL_SAFE_NO_PAD.encode_to_string(s);
    let header = b64(r#"{"alg":"RS256","kid":"doka-test"}"#);
    let claims = b64(&format!(
        r#"{{"aud":["pods.eks.amazonaws.com"],"sub":"system:serviceaccount:doka:doka","jti":"{:016x}"}}"#,
        rand::random::<u64>()
    ));
    format!("{header}.{claims}.doka-test-signature")
}
