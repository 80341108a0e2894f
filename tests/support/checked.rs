//! `doka check --output json` run as a user runs it, and its report read hop by hop.

use serde_json::Value;

use super::run_doka;

/// A finished `doka check --output json`.
pub struct Checked {
    pub code: Option<i32>,
    pub report: Value,
    pub stdout: String,
}

impl Checked {
    pub fn hops(&self, name: &str) -> Vec<&Value> {
        self.report["hops"]
            .as_array()
            .expect("hops")
            .iter()
            .filter(|h| h["hop"] == name)
            .collect()
    }

    /// The detail of the first hop named `name`.
    pub fn detail(&self, name: &str) -> String {
        let hops = self.hops(name);
        let hop = hops
            .first()
            .unwrap_or_else(|| panic!("no hop {name}:\n{}", self.stdout));
        hop["detail"].as_str().unwrap_or_default().to_owned()
    }

    /// The one failed hop: its name, detail and fix.
    pub fn failure(&self) -> (&str, String, String) {
        let failed: Vec<&Value> = self.report["hops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["status"] == "fail")
            .collect();
        assert_eq!(failed.len(), 1, "exactly one failed hop:\n{}", self.stdout);
        let hop = failed[0];
        (
            hop["hop"].as_str().unwrap(),
            hop["detail"].as_str().unwrap().to_owned(),
            hop["fix"].as_str().unwrap_or_default().to_owned(),
        )
    }

    pub fn status_of(&self, name: &str) -> Vec<&str> {
        self.hops(name)
            .iter()
            .map(|h| h["status"].as_str().unwrap())
            .collect()
    }
}

/// Runs `doka check` on `yaml` with `args` and `env` (brokers get 5 s to answer).
pub fn check(yaml: &str, args: &[&str], env: &[(&str, &str)]) -> Checked {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let mut env = env.to_vec();
    env.push(("DOKA_KAFKA__CONNECT_TIMEOUT_MS", "5000"));
    let out = run_doka("check", yaml, &all, &env);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    Checked {
        code: out.status.code(),
        report,
        stdout,
    }
}
