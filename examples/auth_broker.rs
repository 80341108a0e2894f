//! `auth_broker`: a local stand-in for Amazon MSK's authenticated listeners (started by
//! `scripts/stack.sh up`, which puts stunnel in front of it for TLS).
//!
//! librdkafka's mock cluster speaks the Kafka protocol but has neither TLS nor SASL. This hosts one
//! single-broker mock cluster per mode, each behind a plain-TCP listener:
//!
//! | mode  | listener | stunnel (TLS) | the listener                                       |
//! |-------|----------|---------------|----------------------------------------------------|
//! | tls   | 4621     | 4611          | pipes bytes                                        |
//! | mtls  | 4622     | 4612          | pipes bytes (stunnel demands a client certificate) |
//! | scram | 4623     | 4613          | SASL SCRAM-SHA-512/256, one known user, then pipes |
//! | iam   | 4624     | 4614          | SASL OAUTHBEARER, records each token, then pipes   |
//!
//! Each mock broker advertises the public (stunnel) port in Metadata and FindCoordinator, so
//! clients that bootstrap over TLS stay on TLS for every later connection. See
//! ../shared/reference/msk-auth-testing.md for why the mock cluster and not another broker.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use base64_simd::STANDARD as B64;
use clap::Parser;
use hmac::{Hmac, KeyInit, Mac};
use rdkafka::ClientConfig;
use rdkafka::bindings as rdsys;
use rdkafka::producer::{BaseProducer, Producer as _};
use sha2::{Digest, Sha256, Sha512};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Shared with the tests: the same reading of a token, independent of the SDK doka signs with.
#[path = "../tests/support/msk_token.rs"]
mod msk_token;

#[derive(Parser)]
struct Args {
    /// Address the plain-TCP listeners bind to.
    #[arg(long, env = "DOKA_AUTH_BROKER_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Listener ports for tls, mtls, scram, iam.
    #[arg(long, value_delimiter = ',', default_value = "4621,4622,4623,4624")]
    #[arg(env = "DOKA_AUTH_BROKER_PORTS")]
    ports: Vec<u16>,
    /// Ports the brokers advertise (stunnel's TLS ports) for tls, mtls, scram, iam.
    #[arg(long, value_delimiter = ',', default_value = "4611,4612,4613,4614")]
    #[arg(env = "DOKA_AUTH_BROKER_PUBLIC_PORTS")]
    public_ports: Vec<u16>,
    /// Host the brokers advertise: it must match the server certificate.
    #[arg(
        long,
        env = "DOKA_AUTH_BROKER_ADVERTISE_HOST",
        default_value = "127.0.0.1"
    )]
    advertise_host: String,
    #[arg(long, env = "DOKA_TEST_SCRAM_USER", default_value = "doka-test")]
    scram_user: String,
    #[arg(
        long,
        env = "DOKA_TEST_SCRAM_PASSWORD",
        default_value = "doka-test-secret"
    )]
    #[arg(hide_env_values = true, hide_default_value = true)]
    scram_password: String,
    /// KEY_ID=SECRET pairs whose MSK IAM tokens are verified (signature, expiry); tokens of
    /// other keys (temporary STS keys, unsigned test JWTs) are accepted unverified.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "123456789012=source-secret"
    )]
    #[arg(env = "DOKA_AUTH_BROKER_IAM_KEYS", hide_env_values = true)]
    #[arg(hide_default_value = true)]
    iam_keys: Vec<String>,
    /// How long a new consumer group waits for more members before the first assignment. The
    /// default is Kafka's (and MSK's) and costs each test that joins a group about 3 s.
    #[arg(long, env = "DOKA_AUTH_BROKER_GROUP_DELAY_MS", default_value_t = 3000)]
    group_initial_rebalance_delay_ms: i32,
    /// JSON-lines file each accepted OAUTHBEARER token is appended to
    /// [default: $DOKA_STACK_DIR/run/oauth-tokens.jsonl].
    #[arg(long, env = "DOKA_TEST_OAUTH_TOKENS")]
    tokens_file: Option<PathBuf>,
}

#[derive(Clone, Copy)]
enum Mode {
    Tls,
    Mtls,
    Scram,
    Iam,
}

impl Mode {
    fn name(self) -> &'static str {
        ["tls", "mtls", "scram", "iam"][self as usize]
    }

    /// The SASL mechanisms this mode's listener accepts; none means a plain pipe.
    fn mechanisms(self) -> &'static [&'static str] {
        match self {
            Mode::Tls | Mode::Mtls => &[],
            Mode::Scram => &["SCRAM-SHA-512", "SCRAM-SHA-256"],
            Mode::Iam => &["OAUTHBEARER"],
        }
    }
}

/// What the SASL listeners share.
struct Auth {
    scram: ScramStore,
    tokens: Mutex<std::fs::File>,
    /// Access key id → secret of the identities whose MSK IAM tokens are verified, as MSK
    /// verifies the cluster account's: a wrong signature or an expired token is refused.
    iam_keys: BTreeMap<String, String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.ports.len() == 4 && args.public_ports.len() == 4,
        "four ports expected"
    );
    let tokens_path = args.tokens_file.clone().unwrap_or_else(|| {
        let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
        let stack = std::env::var_os("DOKA_STACK_DIR").map(PathBuf::from);
        let stack = stack.unwrap_or_else(|| home.join(".cache/doka-stack"));
        stack.join("run/oauth-tokens.jsonl")
    });
    std::fs::create_dir_all(tokens_path.parent().context("tokens file path")?)?;
    let mut tokens = std::fs::OpenOptions::new();
    let tokens = tokens.create(true).append(true).open(&tokens_path);
    let tokens = tokens.with_context(|| format!("opening {}", tokens_path.display()))?;
    let scram = ScramStore::new(&args.scram_user, &args.scram_password);
    let iam_keys = args
        .iam_keys
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .context("--iam-keys takes KEY_ID=SECRET pairs")
        })
        .collect::<anyhow::Result<_>>()?;
    let auth = Arc::new(Auth {
        scram,
        tokens: Mutex::new(tokens),
        iam_keys,
    });

    // The mock clusters live as long as the clients that own them: as long as this process.
    let mut owners = Vec::new();
    for (i, mode) in [Mode::Tls, Mode::Mtls, Mode::Scram, Mode::Iam]
        .into_iter()
        .enumerate()
    {
        let (owner, bootstrap) = start_mock(&args, args.public_ports[i])?;
        owners.push(owner);
        let backend = tokio::net::lookup_host(&bootstrap)
            .await?
            .next()
            .context("mock address")?;
        let listener = TcpListener::bind((args.host.as_str(), args.ports[i]))
            .await
            .with_context(|| format!("binding {}:{}", args.host, args.ports[i]))?;
        let (at, public) = (listener.local_addr()?, args.public_ports[i]);
        let name = mode.name();
        let advertised = format!("{}:{public}", args.advertise_host);
        println!(
            "auth_broker: {name} listening on {at} -> mock {bootstrap} advertising {advertised}"
        );
        tokio::spawn(serve(mode, listener, backend, auth.clone()));
    }
    println!(
        "auth_broker: ready (OAUTHBEARER tokens -> {})",
        tokens_path.display()
    );
    std::future::pending::<()>().await;
    drop(owners);
    Ok(())
}

/// Creates a one-broker mock cluster that advertises `advertise_host:public_port` instead of the
/// port it listens on. Returns the owning client and the address the broker really listens on.
fn start_mock(args: &Args, public_port: u16) -> anyhow::Result<(BaseProducer, String)> {
    // `MockCluster` hides the pointer `set_host_port` needs, so do what it does: create the
    // cluster on a throwaway client, which lends it logging and configuration.
    let owner: BaseProducer = ClientConfig::new().create()?;
    let cluster = unsafe { rdsys::rd_kafka_mock_cluster_new(owner.client().native_ptr(), 1) };
    ensure!(!cluster.is_null(), "rd_kafka_mock_cluster_new failed");
    // Computed at creation, so it keeps the port the broker really listens on.
    let bootstrap = unsafe { CStr::from_ptr(rdsys::rd_kafka_mock_cluster_bootstraps(cluster)) };
    let bootstrap = bootstrap.to_string_lossy().into_owned();
    let delay = args.group_initial_rebalance_delay_ms;
    unsafe { rdsys::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, delay) };
    let host = CString::new(args.advertise_host.as_str())?;
    let port = public_port.into();
    unsafe { rdsys::rd_kafka_mock_broker_set_host_port(cluster, 1, host.as_ptr(), port) };
    Ok((owner, bootstrap))
}

async fn serve(mode: Mode, listener: TcpListener, backend: SocketAddr, auth: Arc<Auth>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("auth_broker: {}: accept failed: {e}", mode.name());
                continue;
            }
        };
        let mut conn = Conn {
            mode,
            peer,
            auth: auth.clone(),
            client_id: String::new(),
        };
        tokio::spawn(async move {
            if let Err(e) = conn.run(client, backend).await {
                conn.log(&format!("{e:#}"));
            }
        });
    }
}

// Kafka API keys and error codes the SASL listeners deal with.
const SASL_HANDSHAKE: i16 = 17;
const API_VERSIONS: i16 = 18;
const SASL_AUTHENTICATE: i16 = 36;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
/// (key, min, max) added to the mock broker's ApiVersions answer.
const SASL_APIS: [(i16, i16, i16); 2] = [(SASL_HANDSHAKE, 0, 1), (SASL_AUTHENTICATE, 0, 2)];
/// The mock broker answers ApiVersions v3 with UNSUPPORTED_VERSION (clients then retry lower).
const MOCK_API_VERSIONS_MAX: i16 = 2;
const MAX_SASL_FRAME: usize = 1 << 20;

/// One client connection.
struct Conn {
    mode: Mode,
    peer: SocketAddr,
    auth: Arc<Auth>,
    client_id: String,
}

impl Conn {
    fn log(&self, what: &str) {
        let (mode, peer, id) = (self.mode.name(), self.peer, &self.client_id);
        eprintln!("auth_broker: {mode} {peer} client_id={id}: {what}");
    }

    async fn run(&mut self, mut client: TcpStream, backend: SocketAddr) -> anyhow::Result<()> {
        // Small request/response frames dominate: Nagle would add delayed-ACK stalls.
        client.set_nodelay(true)?;
        let mut broker = TcpStream::connect(backend)
            .await
            .context("connecting to the mock")?;
        broker.set_nodelay(true)?;
        if !self.mode.mechanisms().is_empty() && !self.sasl(&mut client, &mut broker).await? {
            return Ok(()); // dropping the streams closes the connection
        }
        // SASL frames were read with exact-length reads, so no client bytes are held back here.
        let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
        Ok(())
    }

    /// Runs the SASL exchange; true when the client authenticated and may talk to the broker.
    async fn sasl(
        &mut self,
        client: &mut TcpStream,
        broker: &mut TcpStream,
    ) -> anyhow::Result<bool> {
        let mut session: Option<Session> = None;
        // After SaslHandshake v0 the tokens come as bare size-prefixed frames (before KIP-152).
        let mut bare_tokens = false;
        let mut seen = Vec::new(); // request versions, for the log
        loop {
            let Some(frame) = read_frame(client, MAX_SASL_FRAME).await? else {
                return Ok(false);
            };
            if let (Some(session), true) = (&mut session, bare_tokens) {
                let Ok((reply, done)) = self.step(session, &frame, &seen) else {
                    return Ok(false);
                };
                client.write_all(&sized(&reply)).await?;
                if done {
                    return Ok(true);
                }
                continue;
            }
            let mut r = Reader(&frame);
            let (key, version, corr) = (r.i16()?, r.i16()?, r.i32()?);
            self.client_id = r.string()?.unwrap_or_default();
            let flexible =
                (key == API_VERSIONS && version >= 3) || (key == SASL_AUTHENTICATE && version >= 2);
            if flexible {
                r.skip_tags()?;
            }
            seen.push(format!("{} v{version}", api_name(key)));
            let mut body = Vec::new();
            match (key, &mut session) {
                (API_VERSIONS, _) => {
                    let body = api_versions(broker, version, corr, &self.client_id).await?;
                    client.write_all(&response(corr, false, &body)).await?;
                }
                (SASL_HANDSHAKE, None) => {
                    let mechanism = r.string()?.unwrap_or_default();
                    let enabled = self.mode.mechanisms();
                    let accepted = enabled.contains(&mechanism.as_str());
                    body.put_i16(if accepted {
                        0
                    } else {
                        UNSUPPORTED_SASL_MECHANISM
                    });
                    body.put_len(enabled.len(), false);
                    enabled.iter().for_each(|m| body.put_string(Some(m), false));
                    client.write_all(&response(corr, false, &body)).await?;
                    if !accepted {
                        self.log(&format!("refused mechanism {mechanism:?}"));
                        return Ok(false);
                    }
                    session = Some(Session::new(&mechanism));
                    bare_tokens = version == 0;
                }
                (SASL_AUTHENTICATE, Some(session)) => {
                    let message = if flexible {
                        r.compact_bytes()?
                    } else {
                        r.bytes()?
                    };
                    let outcome = self.step(session, message, &seen);
                    let (error, text, reply) = match &outcome {
                        Ok((reply, _)) => (0, None, reply.as_slice()),
                        Err(e) => (SASL_AUTHENTICATION_FAILED, Some(e.as_str()), &[][..]),
                    };
                    body.put_i16(error);
                    body.put_string(text, flexible);
                    body.put_bytes(reply, flexible);
                    if version >= 1 {
                        body.put_i64(0); // session_lifetime_ms: no re-authentication
                    }
                    if flexible {
                        body.push(0); // no tagged fields
                    }
                    client.write_all(&response(corr, flexible, &body)).await?;
                    match outcome {
                        Ok((_, done)) if !done => {}
                        // Kafka closes the connection after a failed authentication.
                        _ => return Ok(outcome.is_ok()),
                    }
                }
                _ => {
                    self.log(&format!(
                        "refused {} v{version} before authentication",
                        api_name(key)
                    ));
                    return Ok(false);
                }
            }
        }
    }

    /// One SASL round: the reply and whether authentication is complete, or why it failed.
    /// Logged when it ends the exchange.
    fn step(&self, session: &mut Session, message: &[u8], seen: &[String]) -> Step {
        let mechanism = session.mechanism();
        let outcome = match session {
            Session::Scram(server) => server.step(message, &self.auth.scram),
            Session::OAuthBearer => self.check_token(message).map(|()| (Vec::new(), true)),
        };
        match &outcome {
            Ok((_, true)) => self.log(&format!(
                "authenticated with {mechanism} ({})",
                seen.join(", ")
            )),
            Ok(_) => {}
            Err(e) => self.log(&format!("{mechanism} failed: {e}")),
        }
        outcome.map_err(|e| e.to_string())
    }

    /// Records the token, then verifies it when it is an MSK IAM token of a known key.
    fn check_token(&self, message: &[u8]) -> anyhow::Result<()> {
        let token = bearer_token(message)?;
        let verdict = self.verify_token(&token);
        self.record_token(&token, verdict.is_ok())?;
        verdict
    }

    fn verify_token(&self, token: &str) -> anyhow::Result<()> {
        let Ok(facts) = msk_token::read_token(token) else {
            return Ok(()); // not an MSK IAM token: the test clients' unsigned JWTs
        };
        let Some(secret) = self.auth.iam_keys.get(&facts.access_key) else {
            return Ok(()); // a key this stand-in cannot check (temporary STS credentials)
        };
        ensure!(
            msk_token::signature_matches(&facts, secret),
            "Authentication failed: the IAM token's signature does not match the secret of access key {}",
            facts.access_key
        );
        ensure!(
            facts.signed_at + facts.expires_in > SystemTime::now(),
            "Authentication failed: the IAM token has expired"
        );
        Ok(())
    }

    fn record_token(&self, token: &str, accepted: bool) -> anyhow::Result<()> {
        let received_at_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
        let line = serde_json::json!({"client_id": self.client_id, "mechanism": "OAUTHBEARER",
            "token": token, "accepted": accepted, "received_at_ms": received_at_ms});
        let mut file = self.auth.tokens.lock().unwrap_or_else(|e| e.into_inner());
        writeln!(file, "{line}")
            .and_then(|()| file.flush())
            .context("recording the token")?;
        let start: String = token.chars().take(16).collect();
        self.log(&format!("recorded token {start}… ({} chars)", token.len()));
        Ok(())
    }
}

/// Asks the mock broker for its API versions and answers the client in the version it asked for,
/// with the SASL APIs added.
async fn api_versions(
    broker: &mut TcpStream,
    version: i16,
    corr: i32,
    client_id: &str,
) -> anyhow::Result<Vec<u8>> {
    let mut request = Vec::new();
    request.put_i16(API_VERSIONS);
    request.put_i16(version.min(MOCK_API_VERSIONS_MAX));
    request.put_i32(corr);
    request.put_string(Some(client_id), false);
    broker.write_all(&sized(&request)).await?;
    let frame = read_frame(broker, MAX_SASL_FRAME)
        .await?
        .context("mock closed the connection")?;
    let mut r = Reader(&frame);
    r.i32()?; // correlation id: ApiVersions responses always use response header v0
    let error = r.i16()?;
    let mut apis = BTreeMap::new();
    for _ in 0..r.i32()? {
        apis.insert(r.i16()?, (r.i16()?, r.i16()?));
    }
    apis.extend(SASL_APIS.map(|(key, min, max)| (key, (min, max))));

    // v3+ bodies are flexible (compact arrays, tagged fields), yet keep response header v0.
    let flexible = version >= 3;
    let mut body = Vec::new();
    body.put_i16(error);
    body.put_len(apis.len(), flexible);
    for (key, (min, max)) in apis {
        for v in [key, min, max] {
            body.put_i16(v);
        }
        if flexible {
            body.push(0);
        }
    }
    if version >= 1 {
        body.put_i32(0); // throttle_time_ms
    }
    if flexible {
        body.push(0);
    }
    Ok(body)
}

fn api_name(key: i16) -> String {
    match key {
        SASL_HANDSHAKE => "SaslHandshake".into(),
        API_VERSIONS => "ApiVersions".into(),
        SASL_AUTHENTICATE => "SaslAuthenticate".into(),
        _ => format!("ApiKey {key}"),
    }
}

type Step = Result<(Vec<u8>, bool), String>;

/// A SASL exchange after the handshake chose its mechanism.
enum Session {
    Scram(ScramServer),
    OAuthBearer,
}

impl Session {
    fn new(mechanism: &str) -> Session {
        match mechanism {
            "SCRAM-SHA-256" => Session::Scram(ScramServer::new(Hash::Sha256, random_nonce())),
            "SCRAM-SHA-512" => Session::Scram(ScramServer::new(Hash::Sha512, random_nonce())),
            _ => Session::OAuthBearer,
        }
    }

    fn mechanism(&self) -> &'static str {
        match self {
            Session::Scram(server) => server.hash.mechanism(),
            Session::OAuthBearer => "OAUTHBEARER",
        }
    }
}

/// The token of an RFC 7628 initial client response: `n,,\x01auth=Bearer <token>\x01…\x01\x01`.
fn bearer_token(message: &[u8]) -> anyhow::Result<String> {
    let text = std::str::from_utf8(message).context("OAUTHBEARER message is not UTF-8")?;
    let (gs2, pairs) = text
        .split_once('\x01')
        .context("malformed OAUTHBEARER message")?;
    ensure!(
        gs2.starts_with("n,") || gs2.starts_with("y,"),
        "malformed OAUTHBEARER GS2 header"
    );
    let auth = pairs.split('\x01').find_map(|kv| kv.strip_prefix("auth="));
    let (scheme, token) = auth
        .context("no auth= in OAUTHBEARER message")?
        .split_once(' ')
        .unwrap_or_default();
    ensure!(
        scheme.eq_ignore_ascii_case("bearer"),
        "OAUTHBEARER auth scheme is not Bearer"
    );
    ensure!(
        !token.trim().is_empty(),
        "Authentication failed: empty OAUTHBEARER token"
    );
    Ok(token.trim().to_string())
}

#[derive(Clone, Copy, PartialEq)]
enum Hash {
    Sha256,
    Sha512,
}

impl Hash {
    fn mechanism(self) -> &'static str {
        match self {
            Hash::Sha256 => "SCRAM-SHA-256",
            Hash::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => Sha256::digest(data).to_vec(),
            Hash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        fn mac<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
            let mac = <M as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
            mac.chain_update(data).finalize().into_bytes().to_vec()
        }
        match self {
            Hash::Sha256 => mac::<Hmac<Sha256>>(key, data),
            Hash::Sha512 => mac::<Hmac<Sha512>>(key, data),
        }
    }

    /// RFC 5802 Hi(): PBKDF2 with a single output block.
    fn salted_password(self, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut u = self.hmac(password.as_bytes(), &[salt, &1u32.to_be_bytes()].concat());
        let mut result = u.clone();
        for _ in 1..iterations {
            u = self.hmac(password.as_bytes(), &u);
            result.iter_mut().zip(&u).for_each(|(r, x)| *r ^= x);
        }
        result
    }
}

/// What a Kafka broker stores for a SCRAM user (RFC 5802 §3): never the password itself.
struct ScramCredential {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl ScramCredential {
    fn new(hash: Hash, password: &str, salt: Vec<u8>, iterations: u32) -> ScramCredential {
        let salted = hash.salted_password(password, &salt, iterations);
        let stored_key = hash.digest(&hash.hmac(&salted, b"Client Key"));
        let server_key = hash.hmac(&salted, b"Server Key");
        ScramCredential {
            salt,
            iterations,
            stored_key,
            server_key,
        }
    }
}

/// The one known user, with a credential per hash (derived once: 4096 iterations are slow in
/// a debug build).
struct ScramStore {
    user: String,
    sha256: ScramCredential,
    sha512: ScramCredential,
}

impl ScramStore {
    fn new(user: &str, password: &str) -> ScramStore {
        let sha256 =
            ScramCredential::new(Hash::Sha256, password, random_bytes::<16>().into(), 4096);
        let sha512 =
            ScramCredential::new(Hash::Sha512, password, random_bytes::<16>().into(), 4096);
        ScramStore {
            user: user.to_string(),
            sha256,
            sha512,
        }
    }

    fn lookup(&self, hash: Hash, user: &str) -> anyhow::Result<&ScramCredential> {
        ensure!(
            user == self.user,
            "Authentication failed: unknown user {user}"
        );
        Ok(if hash == Hash::Sha256 {
            &self.sha256
        } else {
            &self.sha512
        })
    }
}

/// The server side of RFC 5802: client-first → server-first, client-final → server-final.
struct ScramServer {
    hash: Hash,
    server_nonce: String,
    first: Option<ClientFirst>,
}

/// What the final round checks against.
struct ClientFirst {
    user: String,
    gs2_header: String,
    bare: String,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    fn new(hash: Hash, server_nonce: String) -> ScramServer {
        ScramServer {
            hash,
            server_nonce,
            first: None,
        }
    }

    fn step(&mut self, message: &[u8], store: &ScramStore) -> anyhow::Result<(Vec<u8>, bool)> {
        let message = std::str::from_utf8(message).context("SCRAM message is not UTF-8")?;
        let Some(first) = &self.first else {
            // client-first: gs2-cbind-flag "," [authzid] "," n=user,r=nonce[,extensions]
            let mut parts = message.splitn(3, ',');
            let (flag, authzid) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let bare = parts
                .next()
                .context("malformed SCRAM client-first message")?;
            ensure!(
                flag == "n" || flag == "y",
                "SCRAM channel binding is not supported"
            );
            let user = attribute(bare, "n").context("no user in SCRAM client-first message")?;
            let user = user.replace("=2C", ",").replace("=3D", "=");
            let nonce = attribute(bare, "r").context("no nonce in SCRAM client-first message")?;
            let credential = store.lookup(self.hash, &user)?;
            let nonce = format!("{nonce}{}", self.server_nonce);
            let (salt, i) = (
                B64.encode_to_string(&credential.salt),
                credential.iterations,
            );
            let server_first = format!("r={nonce},s={salt},i={i}");
            let reply = server_first.clone().into_bytes();
            let (gs2_header, bare) = (format!("{flag},{authzid},"), bare.to_string());
            self.first = Some(ClientFirst {
                user,
                gs2_header,
                bare,
                server_first,
                nonce,
            });
            return Ok((reply, false));
        };
        // client-final: c=base64(gs2 header),r=nonce[,extensions],p=proof
        let (without_proof, proof) = message
            .rsplit_once(",p=")
            .context("no proof in SCRAM client-final")?;
        let channel_binding = B64.encode_to_string(&first.gs2_header);
        ensure!(
            attribute(without_proof, "c") == Some(&channel_binding),
            "SCRAM channel binding mismatch"
        );
        ensure!(
            attribute(without_proof, "r") == Some(&first.nonce),
            "SCRAM nonce mismatch"
        );
        let credential = store.lookup(self.hash, &first.user)?;
        let auth_message = format!("{},{},{without_proof}", first.bare, first.server_first);
        let client_signature = self
            .hash
            .hmac(&credential.stored_key, auth_message.as_bytes());
        let proof = B64.decode_to_vec(proof).unwrap_or_default();
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let valid = proof.len() == client_signature.len()
            && self.hash.digest(&client_key) == credential.stored_key;
        ensure!(
            valid,
            "Authentication failed: bad proof for user {}",
            first.user
        );
        let server_signature = self
            .hash
            .hmac(&credential.server_key, auth_message.as_bytes());
        Ok((
            format!("v={}", B64.encode_to_string(server_signature)).into_bytes(),
            true,
        ))
    }
}

/// The value of `name=` in a comma-separated SCRAM message.
fn attribute<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message
        .split(',')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::fill(&mut bytes[..]);
    bytes
}

fn random_nonce() -> String {
    B64.encode_to_string(random_bytes::<24>()) // base64 has no ',' (which SCRAM nonces must not contain)
}

/// Reads one size-prefixed Kafka frame; None when the stream ends before it.
async fn read_frame(stream: &mut TcpStream, max: usize) -> anyhow::Result<Option<Vec<u8>>> {
    let mut size = [0u8; 4];
    match stream.read_exact(&mut size).await {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        result => result?,
    };
    let size = u32::from_be_bytes(size) as usize;
    ensure!(size <= max, "{size}-byte frame before authentication");
    let mut frame = vec![0u8; size];
    stream.read_exact(&mut frame).await?;
    Ok(Some(frame))
}

fn sized(body: &[u8]) -> Vec<u8> {
    [&(body.len() as u32).to_be_bytes()[..], body].concat()
}

/// A response frame; a flexible response header (v1) adds empty tagged fields.
fn response(corr: i32, flexible_header: bool, body: &[u8]) -> Vec<u8> {
    let header = if flexible_header { &[0u8][..] } else { &[] };
    sized(&[&corr.to_be_bytes()[..], header, body].concat())
}

/// Kafka protocol encoding; `compact` is the flexible versions' encoding (uvarint of length + 1).
trait Put {
    fn put_i16(&mut self, v: i16);
    fn put_i32(&mut self, v: i32);
    fn put_i64(&mut self, v: i64);
    fn put_len(&mut self, n: usize, compact: bool);
    fn put_string(&mut self, s: Option<&str>, compact: bool);
    fn put_bytes(&mut self, b: &[u8], compact: bool);
}

impl Put for Vec<u8> {
    fn put_i16(&mut self, v: i16) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_i32(&mut self, v: i32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_i64(&mut self, v: i64) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_len(&mut self, n: usize, compact: bool) {
        if !compact {
            return self.put_i32(n as i32);
        }
        let mut v = n as u64 + 1;
        while v >= 0x80 {
            self.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.push(v as u8);
    }
    fn put_string(&mut self, s: Option<&str>, compact: bool) {
        match (s, compact) {
            (None, true) => self.push(0),
            (None, false) => self.put_i16(-1),
            (Some(s), true) => self.put_len(s.len(), true),
            (Some(s), false) => self.put_i16(s.len() as i16),
        }
        self.extend_from_slice(s.unwrap_or_default().as_bytes());
    }
    fn put_bytes(&mut self, b: &[u8], compact: bool) {
        self.put_len(b.len(), compact);
        self.extend_from_slice(b);
    }
}

/// A cursor over a request or response.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        ensure!(n <= self.0.len(), "truncated Kafka frame");
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn i16(&mut self) -> anyhow::Result<i16> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into()?))
    }
    fn i32(&mut self) -> anyhow::Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into()?))
    }
    fn uvarint(&mut self) -> anyhow::Result<usize> {
        let mut v = 0;
        for shift in (0..35).step_by(7) {
            let b = self.take(1)?[0];
            v |= usize::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        bail!("uvarint too long")
    }
    /// A nullable string with an i16 length (such as the request header's client_id).
    fn string(&mut self) -> anyhow::Result<Option<String>> {
        let n = self.i16()?;
        let s = (n >= 0).then(|| self.take(n as usize)).transpose()?;
        Ok(s.map(|s| String::from_utf8_lossy(s).into_owned()))
    }
    fn bytes(&mut self) -> anyhow::Result<&'a [u8]> {
        let n = self.i32()?;
        self.take(n.max(0) as usize)
    }
    fn compact_bytes(&mut self) -> anyhow::Result<&'a [u8]> {
        let n = self.uvarint()?;
        self.take(n.saturating_sub(1))
    }
    fn skip_tags(&mut self) -> anyhow::Result<()> {
        for _ in 0..self.uvarint()? {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.take(size)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const CLIENT_FIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";

    fn rfc7677_store() -> ScramStore {
        let salt = B64.decode_to_vec("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let sha256 = ScramCredential::new(Hash::Sha256, "pencil", salt, 4096);
        let sha512 = ScramCredential::new(Hash::Sha512, "pencil", vec![0], 1);
        ScramStore {
            user: "user".into(),
            sha256,
            sha512,
        }
    }

    /// RFC 7677 §3: the SCRAM-SHA-256 exchange for user "user", password "pencil".
    #[test]
    fn scram_sha256_rfc7677_vector() {
        let store = rfc7677_store();
        let mut server = ScramServer::new(Hash::Sha256, NONCE.into());
        let (first, done) = server.step(CLIENT_FIRST, &store).unwrap();
        let expected = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(
            (String::from_utf8(first).unwrap().as_str(), done),
            (expected, false)
        );
        let (last, done) = server.step(CLIENT_FINAL.as_bytes(), &store).unwrap();
        let expected = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
        assert_eq!(
            (String::from_utf8(last).unwrap().as_str(), done),
            (expected, true)
        );
    }

    #[test]
    fn scram_refuses_a_wrong_proof_and_an_unknown_user() {
        let store = rfc7677_store();
        let mut server = ScramServer::new(Hash::Sha256, NONCE.into());
        server.step(CLIENT_FIRST, &store).unwrap();
        let wrong = CLIENT_FINAL.replace("p=dHzb", "p=dHzc");
        let error = server
            .step(wrong.as_bytes(), &store)
            .unwrap_err()
            .to_string();
        assert_eq!(error, "Authentication failed: bad proof for user user");
        let mut server = ScramServer::new(Hash::Sha256, NONCE.into());
        let error = server
            .step(b"n,,n=nobody,r=abc", &store)
            .unwrap_err()
            .to_string();
        assert_eq!(error, "Authentication failed: unknown user nobody");
    }

    #[test]
    fn oauthbearer_initial_response() {
        let token = bearer_token(b"n,,\x01auth=Bearer abc.def\x01x=y\x01\x01").unwrap();
        assert_eq!(token, "abc.def");
        assert!(bearer_token(b"n,,\x01auth=Bearer \x01\x01").is_err());
        assert!(bearer_token(b"n,,\x01\x01").is_err());
    }
}
