//! doka as a child process: its config, its environment, its log, and how it is stopped.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use super::{ACCOUNT_A_KEY, REGION, ROLE_B, eventually};

pub struct Doka {
    child: Child,
    pub log: PathBuf,
    /// Where standard output went, when it was kept ([`Doka::start_keeping_stdout`]).
    out: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

/// What a test run of doka needs to know.
pub struct DokaSetup<'a> {
    pub bootstrap: &'a str,
    pub group: &'a str,
    pub topic: &'a str,
    pub stream: &'a str,
    pub sts: &'a str,
    pub kinesis: &'a str,
}

impl DokaSetup<'_> {
    pub fn yaml(&self) -> String {
        format!(
            r#"kafka:
  brokers: "{bootstrap}"
  group_id: {group}
  topics: [{topic}]
  properties:
    fetch.wait.max.ms: 5
    session.timeout.ms: 6000
    heartbeat.interval.ms: 500
aws:
  region: {REGION}
  sts_endpoint: {sts}
  kinesis_endpoint: {kinesis}
  role_arn: {ROLE_B}
  external_id: test-external-id
  session_duration_secs: 900
  credential_refresh_margin_secs: 60
kinesis:
  stream: {stream}
batch:
  linger_ms: 5
pipeline:
  commit_interval_ms: 100
retry:
  initial_backoff_ms: 20
  max_backoff_ms: 500
http:
  listen: 127.0.0.1:0
"#,
            bootstrap = self.bootstrap,
            group = self.group,
            topic = self.topic,
            sts = self.sts,
            kinesis = self.kinesis,
            stream = self.stream,
        )
    }
}

/// The doka binary: Cargo's for integration tests, `DOKA_BIN` (or target/debug/doka) for the demo.
pub fn doka_binary() -> String {
    match option_env!("CARGO_BIN_EXE_doka") {
        Some(path) => path.to_owned(),
        None => std::env::var("DOKA_BIN").unwrap_or_else(|_| "target/debug/doka".into()),
    }
}

/// An `env` value for [`doka_command`] that removes the variable instead of setting it.
pub const UNSET: &str = "<unset>";

/// A command for the doka binary with a clean environment: only the source identity (account A
/// keys) and the given variables, so nothing from the machine leaks in.
pub fn doka_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(doka_binary());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", ACCOUNT_A_KEY)
        .env("AWS_SECRET_ACCESS_KEY", "source-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("RUST_LOG", "info,doka=debug");
    for (k, v) in env {
        if *v == UNSET {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    cmd
}

/// The arguments of `doka <subcommand> --config <file> <args…>`, with `yaml` written to that
/// file in `dir`.
fn with_config(dir: &Path, subcommand: &str, yaml: &str, args: &[&str]) -> Vec<String> {
    let config = dir.join("doka.yaml");
    std::fs::write(&config, yaml).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let mut all = vec![subcommand.to_owned(), "--config".into(), config];
    all.extend(args.iter().map(|a| a.to_string()));
    all
}

/// Runs `doka <subcommand> --config <yaml in a temporary file> <args…>` to its end
/// (`check`, `config`): what a user gets from the same command.
pub fn run_doka(subcommand: &str, yaml: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let args = with_config(dir.path(), subcommand, yaml, args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    doka_command(&args, env).output().expect("run doka")
}

impl Doka {
    /// Starts `doka run` with `yaml` written to a temporary config file.
    pub fn start(yaml: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let args = with_config(dir.path(), "run", yaml, &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::spawn(&args, env, dir)
    }

    /// [`Doka::start`], with standard output kept in a file ([`Doka::stdout_text`]): for the
    /// `stdout` destination, whose records are that output.
    pub fn start_keeping_stdout(yaml: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let args = with_config(dir.path(), "run", yaml, &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = dir.path().join("doka.out");
        Self::spawn_with_stdout(&args, env, dir, Some(out))
    }

    /// Starts doka with these arguments; its log goes to a file in `dir`.
    pub fn spawn(args: &[&str], env: &[(&str, &str)], dir: tempfile::TempDir) -> Self {
        Self::spawn_with_stdout(args, env, dir, None)
    }

    fn spawn_with_stdout(
        args: &[&str],
        env: &[(&str, &str)],
        dir: tempfile::TempDir,
        out: Option<PathBuf>,
    ) -> Self {
        let log = dir.path().join("doka.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let stdout = match &out {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::null(),
        };
        let child = doka_command(args, env)
            .stdout(stdout)
            .stderr(log_file)
            .spawn()
            .expect("start doka");
        Self {
            child,
            log,
            out,
            _dir: dir,
        }
    }

    /// What doka wrote to standard output so far (started with [`Doka::start_keeping_stdout`]).
    pub fn stdout_text(&self) -> String {
        let path = self
            .out
            .as_ref()
            .expect("started with start_keeping_stdout");
        std::fs::read_to_string(path).expect("doka's standard output")
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The port doka's HTTP endpoint took (the harness' config lets the system choose one),
    /// from its start-up line.
    pub fn endpoint_port(&mut self) -> u16 {
        let line = self.wait_for_line(&["serving /metrics"], Duration::from_secs(30));
        line.rsplit(':')
            .next()
            .and_then(|p| {
                p.trim()
                    .trim_end_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no port in {line}"))
    }

    /// Waits until the log contains `needle` `times` times (e.g. "partitions assigned").
    pub fn wait_for_log(&mut self, needle: &str, times: usize, timeout: Duration) {
        self.wait_for(&format!("{needle:?}"), timeout, |log| {
            (log.matches(needle).count() >= times).then_some(())
        });
    }

    /// Waits until one log line contains every one of `parts`; returns that line.
    pub fn wait_for_line(&mut self, parts: &[&str], timeout: Duration) -> String {
        self.wait_for(&format!("a line with {parts:?}"), timeout, |log| {
            log.lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .map(str::to_owned)
        })
    }

    /// Reads the log until `found` finds something in it (`what`, for the failure), or panics
    /// when doka exits first or after `timeout`.
    fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        found: impl Fn(&str) -> Option<T>,
    ) -> T {
        eventually(&format!("doka to log {what}"), timeout, || {
            let log = self.log_text();
            if let Some(t) = found(&log) {
                return Ok(t);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("doka exited ({status}) before logging {what}:\n{log}");
            }
            Err(format!("the log:\n{log}"))
        })
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        self.signal_stop();
        let status = wait_with_timeout(&mut self.child, Duration::from_secs(60));
        let log = self.log_text();
        (status, log)
    }

    /// Sends SIGTERM and returns at once.
    pub fn signal_stop(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// SIGTERM and a clean exit (code 0) expected; returns the log. On any other exit the
    /// failure names the status first and shows the end of the log, where the reason is.
    pub fn stop(self) -> String {
        let (status, log) = self.terminate();
        expect_clean_exit(status, &log);
        log
    }

    /// [`Doka::stop`] for a doka started with [`Doka::start_keeping_stdout`]: the log and all it
    /// wrote to standard output.
    pub fn stop_keeping_stdout(mut self) -> (String, String) {
        self.signal_stop();
        let status = wait_with_timeout(&mut self.child, Duration::from_secs(60));
        let log = self.log_text();
        expect_clean_exit(status, &log);
        (log, self.stdout_text())
    }

    /// SIGKILL: no chance to commit or leave the group.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log_text()
    }

    pub fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, String) {
        let status = wait_with_timeout(&mut self.child, timeout);
        let log = self.log_text();
        (status, log)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

fn expect_clean_exit(status: ExitStatus, log: &str) {
    if status.code() != Some(0) {
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        panic!(
            "doka exited with {status} after SIGTERM, expected 0; the last {} of {} log lines:\n{tail}",
            lines.len().min(60),
            lines.len()
        );
    }
}

/// The peak resident memory of a running process, from /proc (0 when unknown).
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Waits for the child to exit (on a timeout the panic drops its [`Doka`], which kills it).
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    eventually("doka to exit", timeout, || child.try_wait().unwrap())
}

impl Drop for Doka {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().filter(|l| !l.contains("DEBUG")).collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("--- doka log (last 40 non-debug lines) ---\n{tail}");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // For a post-mortem of a run that passed but looked odd: keep every log.
        if let Some(dir) = std::env::var_os("DOKA_TEST_LOG_DIR") {
            let name = format!("doka-{}.log", self.child.id());
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::copy(&self.log, Path::new(&dir).join(name));
        }
    }
}

pub fn summary_count(log: &str, field: &str) -> u64 {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("summary:"))
        .expect("summary line");
    let start = line.find(&format!("{field}=")).expect("field") + field.len() + 1;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}
