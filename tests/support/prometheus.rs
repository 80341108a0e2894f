//! A real Prometheus server for the tests (Debian's `prometheus` package, installed by
//! `scripts/tools.sh`), and the plain HTTP GET the tests use to talk to it and to doka.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::eventually;

/// A tool installed by `scripts/tools.sh`, named by the environment variable it prints.
pub fn tool(var: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "{var} is not set: run the tests with `make test`, or after \
             `set -a; eval \"$(scripts/stack.sh up)\"; set +a` (scripts/stack.sh up installs the \
             tools with scripts/tools.sh and prints their paths)"
        )
    });
    assert!(
        path.is_file(),
        "{var}={} does not exist: run `scripts/stack.sh up` (or `scripts/tools.sh install`) again",
        path.display()
    );
    path
}

/// A plain HTTP/1.0 GET on loopback: (status, body); `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// A Prometheus server on a free loopback port with an empty database, scraping `targets`
/// (loopback ports) every second; killed on drop.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(targets: &[u16]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        let mut yaml = "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n".to_owned();
        if !targets.is_empty() {
            let targets: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
            yaml += &format!(
                "scrape_configs:\n  - job_name: doka\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            );
        }
        std::fs::write(&config, yaml).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(tool("DOKA_TEST_PROMETHEUS"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut prometheus = Self { child, port, dir };
        let what = format!("prometheus to get ready on port {port}");
        eventually(&what, Duration::from_secs(60), || {
            if let Some((200, _)) = http_get(port, "/-/ready") {
                return Some(());
            }
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                let log = std::fs::read_to_string(prometheus.dir.path().join("prometheus.log"))
                    .unwrap_or_default();
                panic!("prometheus exited ({status}):\n{log}");
            }
            None
        });
        prometheus
    }

    /// The API's answer to an instant query.
    pub fn query(&self, promql: &str) -> serde_json::Value {
        let encoded: String = form_urlencoded::byte_serialize(promql.as_bytes()).collect();
        let (_, body) = http_get(self.port, &format!("/api/v1/query?query={encoded}"))
            .expect("prometheus answers");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("prometheus answered {body:?}: {e}"))
    }

    /// The value of an instant query returning one sample; `None` while it returns none.
    pub fn scalar(&self, promql: &str) -> Option<f64> {
        let answer = self.query(promql);
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        let result = answer["data"]["result"].as_array()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `promql` gives `want`.
    pub fn wait_for(&self, promql: &str, want: f64, timeout: Duration) {
        let what = format!("Prometheus to give {promql} = {want}");
        eventually(&what, timeout, || {
            let seen = self.scalar(promql);
            (seen == Some(want))
                .then_some(())
                .ok_or(format!("{seen:?}"))
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The sum of every sample of `name` whose labels contain each of `labels` (`key="value"`).
pub fn sample_sum(exposition: &str, name: &str, labels: &[&str]) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}
