//! What the deploy tests share: the repository's files, the tools (kubectl, kubernetes-validate,
//! promtool) run as child processes, YAML lookups, overlays rendered with `kubectl kustomize` and
//! read back as objects, doka's own `doka config` on a rendered config, and the metric names doka
//! exports.
#![allow(dead_code)]

use crate::support;
#[allow(unused_imports)]
pub use crate::support::prometheus::tool;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value as Yaml;

/// The Kubernetes version whose schemas the rendered manifests are validated against.
pub const KUBERNETES_VERSION: &str = "1.29.0";
/// The profiles of the shipped config that must have an overlay.
pub const ENVIRONMENTS: [&str; 3] = ["dev", "qa", "prod"];
/// doka's HTTP port when the config does not set `http.listen`.
pub const DEFAULT_HTTP_PORT: u16 = 9464;
/// After `pipeline.shutdown_timeout_ms`, doka takes up to 15 s to leave the group and 10 s to close.
pub const SHUTDOWN_AFTER_DRAIN_SECS: u64 = 25;

// ---------------------------------------------------------------------------------------------
// Tools and files

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub fn kubectl() -> PathBuf {
    std::env::var_os("DOKA_TEST_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| "kubectl".into())
}

/// Runs `cmd` in the repository root, feeding it `stdin`, and returns what it printed.
pub fn run(cmd: &mut Command, stdin: Option<&str>) -> Output {
    let shown = format!("{cmd:?}");
    cmd.current_dir(root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e} (run `scripts/stack.sh up`)"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("writing to {shown}: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {shown}: {e}"))
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `cmd` and panics with its output unless it exits 0; returns its stdout.
pub fn run_ok(cmd: &mut Command, stdin: Option<&str>) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd, stdin);
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

// ---------------------------------------------------------------------------------------------
// YAML helpers

pub fn get<'a>(v: &'a Yaml, path: &str) -> Option<&'a Yaml> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

pub fn get_str<'a>(v: &'a Yaml, path: &str) -> Option<&'a str> {
    get(v, path).and_then(Yaml::as_str)
}

/// One key that may contain dots (annotations, ConfigMap keys).
pub fn key_str<'a>(v: &'a Yaml, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Yaml::as_str)
}

pub fn must<'a>(v: &'a Yaml, path: &str, what: &str) -> &'a Yaml {
    get(v, path).unwrap_or_else(|| panic!("{what} has no `{path}`"))
}

pub fn seq<'a>(v: &'a Yaml, path: &str) -> &'a [Yaml] {
    get(v, path)
        .and_then(Yaml::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// A list setting, written as a YAML list or as doka's comma-separated string.
pub fn list<'a>(v: &'a Yaml, path: &str) -> Vec<&'a str> {
    match get(v, path) {
        Some(Yaml::String(s)) => s.split(',').map(str::trim).collect(),
        _ => seq(v, path).iter().filter_map(Yaml::as_str).collect(),
    }
}

/// `profile` merged over `base`, key by key, as doka merges `profiles.<name>` over the file.
pub fn merged(base: &Yaml, profile: &Yaml) -> Yaml {
    match (base, profile) {
        (Yaml::Object(b), Yaml::Object(p)) => {
            let mut out = b.clone();
            for (k, v) in p {
                let m = match b.get(k) {
                    Some(old) => merged(old, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), m);
            }
            Yaml::Object(out)
        }
        (_, p) => p.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Kustomize

pub fn overlay_dir(env: &str) -> String {
    format!("deploy/kubernetes/overlays/{env}")
}

/// The overlays on disk: every one is rendered and checked, and dev, qa and prod must be there.
pub fn overlays() -> Vec<String> {
    let dir = root().join("deploy/kubernetes/overlays");
    let mut envs: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("overlay entry"))
        .filter(|e| e.path().join("kustomization.yaml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    envs.sort();
    for env in ENVIRONMENTS {
        assert!(
            envs.iter().any(|e| e == env),
            "no overlay deploy/kubernetes/overlays/{env} (found {envs:?})"
        );
    }
    envs
}

/// `kubectl kustomize` of an overlay, as text.
pub fn render_text(env: &str) -> String {
    run_ok(
        Command::new(kubectl()).args(["kustomize", &overlay_dir(env)]),
        None,
    )
}

/// `kubectl kustomize` of any kustomization directory, as text.
pub fn render_dir(dir: &Path) -> String {
    let path = dir.to_str().expect("utf-8 path");
    run_ok(Command::new(kubectl()).args(["kustomize", path]), None)
}

/// A copy of deploy/ in a temporary directory, to edit and render without touching the tree.
pub struct TempDeploy {
    dir: tempfile::TempDir,
}

impl TempDeploy {
    pub fn new() -> Self {
        fn copy(from: &Path, to: &Path) {
            std::fs::create_dir_all(to).expect("create dir");
            for entry in std::fs::read_dir(from).expect("read dir") {
                let entry = entry.expect("dir entry");
                let target = to.join(entry.file_name());
                if entry.file_type().expect("file type").is_dir() {
                    copy(&entry.path(), &target);
                } else {
                    std::fs::copy(entry.path(), &target).expect("copy file");
                }
            }
        }
        let dir = tempfile::tempdir().expect("temp dir");
        copy(&root().join("deploy"), &dir.path().join("deploy"));
        TempDeploy { dir }
    }

    /// A path inside the copy, relative to the repository root (`deploy/…`).
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path(relative)).expect("read copied file")
    }

    pub fn write(&self, relative: &str, text: &str) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("create dir");
        std::fs::write(path, text).expect("write copied file");
    }

    /// Adds `components` to a kustomization of the copy.
    pub fn add_components(&self, kustomization_dir: &str, components: &[&str]) {
        let file = format!("{kustomization_dir}/kustomization.yaml");
        let mut text = self.read(&file);
        text.push_str("\ncomponents:\n");
        for c in components {
            text.push_str(&format!("  - {c}\n"));
        }
        self.write(&file, &text);
    }

    /// A new overlay `overlays/<name>` on top of the environment's overlay, with `components`:
    /// how components that change what an environment's overlay sets are used.
    pub fn stacked_overlay(&self, env: &str, name: &str, components: &[&str]) -> String {
        let dir = format!("deploy/kubernetes/overlays/{name}");
        let mut text = format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - ../{env}\ncomponents:\n"
        );
        for c in components {
            text.push_str(&format!("  - ../../components/{c}\n"));
        }
        self.write(&format!("{dir}/kustomization.yaml"), &text);
        dir
    }

    pub fn render_text(&self, dir: &str) -> String {
        render_dir(&self.path(dir))
    }

    pub fn render(&self, what: &str, dir: &str) -> Rendered {
        Rendered::parse(what, &self.render_text(dir))
    }
}

/// API groups whose kinds are custom resources: kubernetes-validate has no schema for them.
pub const CUSTOM_RESOURCE_GROUPS: [&str; 2] = ["monitoring.coreos.com/", "keda.sh/"];

pub fn is_custom_resource(object: &Yaml) -> bool {
    let api = get_str(object, "apiVersion").unwrap_or_default();
    CUSTOM_RESOURCE_GROUPS.iter().any(|g| api.starts_with(g))
}

/// Validates every object that is not a custom resource against the Kubernetes schemas,
/// strictly (unknown fields are errors); returns how many were validated. The custom resources
/// (PodMonitor, PrometheusRule, ScaledObject) have no schema there: their callers check their
/// shape field by field.
pub fn validate_strictly(what: &str, rendered: &Rendered) -> usize {
    let core: Vec<&Yaml> = rendered
        .objects
        .iter()
        .filter(|o| !is_custom_resource(o))
        .collect();
    let text = core
        .iter()
        .map(|o| serde_saphyr::to_string(o).expect("YAML"))
        .collect::<Vec<_>>()
        .join("---\n");
    let validate = tool("DOKA_TEST_KUBERNETES_VALIDATE");
    let out = run(
        Command::new(&validate).args(["--kubernetes-version", KUBERNETES_VERSION, "--strict", "-"]),
        Some(&text),
    );
    let report = text_of(&out);
    assert!(
        out.status.success() && !report.contains("WARN") && !report.contains("ERROR"),
        "{what} does not validate against Kubernetes {KUBERNETES_VERSION}:\n{report}"
    );
    let passed = report.lines().filter(|l| l.contains(" passed ")).count();
    assert_eq!(
        passed,
        core.len(),
        "{what}: {} objects, {passed} validated:\n{report}",
        core.len()
    );
    passed
}

fn text_of(out: &Output) -> String {
    text(&out.stdout) + &text(&out.stderr)
}

/// The (kind, namespace, name) of every object: what would collide in a cluster.
pub fn identities(rendered: &Rendered) -> Vec<(String, String, String)> {
    rendered
        .objects
        .iter()
        .map(|o| {
            (
                get_str(o, "kind").unwrap_or_default().to_owned(),
                get_str(o, "metadata.namespace")
                    .unwrap_or_default()
                    .to_owned(),
                get_str(o, "metadata.name").unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The objects an overlay renders to.
pub struct Rendered {
    pub env: String,
    pub objects: Vec<Yaml>,
}

impl Rendered {
    pub fn new(env: &str) -> Self {
        Self::parse(env, &render_text(env))
    }

    pub fn parse(env: &str, text: &str) -> Self {
        let objects = serde_saphyr::from_multiple::<Yaml>(text)
            .expect("rendered YAML parses")
            .into_iter()
            .filter(|v| !v.is_null())
            .collect();
        Rendered {
            env: env.to_owned(),
            objects,
        }
    }

    pub fn of_kind(&self, kind: &str) -> Vec<&Yaml> {
        self.objects
            .iter()
            .filter(|o| get_str(o, "kind") == Some(kind))
            .collect()
    }

    pub fn one(&self, kind: &str) -> &Yaml {
        let all = self.of_kind(kind);
        assert_eq!(all.len(), 1, "overlay {}: expected one {kind}", self.env);
        all[0]
    }

    pub fn named(&self, kind: &str, name: &str) -> &Yaml {
        self.of_kind(kind)
            .into_iter()
            .find(|o| get_str(o, "metadata.name") == Some(name))
            .unwrap_or_else(|| panic!("overlay {}: no {kind} named {name}", self.env))
    }

    pub fn deployment(&self) -> &Yaml {
        self.one("Deployment")
    }

    pub fn pod(&self) -> &Yaml {
        must(self.deployment(), "spec.template", "the Deployment")
    }

    /// doka's container: the one named doka, or the only one.
    pub fn container(&self) -> &Yaml {
        let containers = seq(self.pod(), "spec.containers");
        containers
            .iter()
            .find(|c| get_str(c, "name") == Some("doka"))
            .or_else(|| (containers.len() == 1).then(|| &containers[0]))
            .unwrap_or_else(|| panic!("overlay {}: no container named doka", self.env))
    }

    /// The literal value of an environment variable of doka's container.
    pub fn env_var(&self, name: &str) -> Option<&str> {
        seq(self.container(), "env")
            .iter()
            .find(|e| get_str(e, "name") == Some(name))
            .and_then(|e| get_str(e, "value"))
    }

    /// The config file doka's container reads: `DOKA_CONFIG`, which every `doka` command in the
    /// container honours (`doka run` and a `kubectl exec … -- doka check` alike), and no
    /// `--config` argument pointing elsewhere.
    pub fn config_path(&self) -> String {
        let path = self.env_var("DOKA_CONFIG").unwrap_or_else(|| {
            panic!(
                "overlay {}: DOKA_CONFIG is not set: `kubectl exec deploy/doka -- doka check` \
                 would look for ./doka.yaml",
                self.env
            )
        });
        let args: Vec<&str> = seq(self.container(), "args")
            .iter()
            .chain(seq(self.container(), "command"))
            .filter_map(Yaml::as_str)
            .collect();
        if let Some(pos) = args.iter().position(|a| *a == "--config") {
            assert_eq!(
                args.get(pos + 1).copied(),
                Some(path),
                "overlay {}: --config and DOKA_CONFIG disagree",
                self.env
            );
        }
        path.to_owned()
    }

    /// The config file the container reads: found through its volume mount and the ConfigMap.
    pub fn mounted_config(&self) -> String {
        let path = self.config_path();
        let (dir, file) = path
            .rsplit_once('/')
            .unwrap_or_else(|| panic!("overlay {}: --config {path} is not absolute", self.env));
        let mount = seq(self.container(), "volumeMounts")
            .iter()
            .find(|m| {
                let at = get_str(m, "mountPath").unwrap_or_default();
                at == dir || (at == path && get(m, "subPath").is_some())
            })
            .unwrap_or_else(|| {
                panic!(
                    "overlay {}: nothing is mounted at {dir}, where --config {path} points",
                    self.env
                )
            });
        let volume_name = get_str(mount, "name").expect("volumeMount name");
        let volume = seq(self.pod(), "spec.volumes")
            .iter()
            .find(|v| get_str(v, "name") == Some(volume_name))
            .unwrap_or_else(|| panic!("overlay {}: no volume {volume_name}", self.env));
        let cm_name = get_str(volume, "configMap.name").unwrap_or_else(|| {
            panic!(
                "overlay {}: volume {volume_name} at {dir} is not a ConfigMap",
                self.env
            )
        });
        let key = if let Some(sub) =
            get_str(mount, "subPath").filter(|_| get_str(mount, "mountPath") == Some(&path))
        {
            sub.to_owned()
        } else {
            seq(volume, "configMap.items")
                .iter()
                .find(|i| get_str(i, "path") == Some(file))
                .and_then(|i| get_str(i, "key"))
                .unwrap_or(file)
                .to_owned()
        };
        let cm = self.named("ConfigMap", cm_name);
        get(cm, "data")
            .and_then(|data| key_str(data, &key))
            .unwrap_or_else(|| {
                panic!(
                    "overlay {}: ConfigMap {cm_name} has no key {key} for {path}",
                    self.env
                )
            })
            .to_owned()
    }

    /// The port of `http.listen` in the effective config the pod runs with (its profile of its
    /// mounted doka.yaml, as `doka config` prints it).
    pub fn http_port(&self) -> u16 {
        let profile = self
            .env_var("DOKA_PROFILE")
            .unwrap_or_else(|| panic!("overlay {}: no DOKA_PROFILE", self.env));
        let what = format!("overlay {}", self.env);
        let eff = effective_config(&self.mounted_config(), profile, &what);
        get_str(&eff.config, "http.listen").map_or(DEFAULT_HTTP_PORT, listen_port)
    }

    /// The namespace of doka's Deployment.
    pub fn namespace(&self) -> &str {
        get_str(self.deployment(), "metadata.namespace")
            .unwrap_or_else(|| panic!("overlay {}: the Deployment has no namespace", self.env))
    }

    /// A container port given by number or by name, as a number.
    pub fn port_number(&self, port: &Yaml) -> u16 {
        if let Some(n) = port.as_u64() {
            return u16::try_from(n).expect("port number");
        }
        let name = port.as_str().expect("port is a number or a name");
        let found = seq(self.container(), "ports")
            .iter()
            .find(|p| get_str(p, "name") == Some(name))
            .unwrap_or_else(|| panic!("overlay {}: no container port named {name}", self.env));
        let n = must(found, "containerPort", "a container port")
            .as_u64()
            .expect("containerPort");
        u16::try_from(n).expect("port number")
    }

    /// The pod's labels match `selector.matchLabels` of `obj`.
    pub fn selects_pods(&self, obj: &Yaml, path: &str) -> bool {
        let labels = must(self.pod(), "metadata.labels", "the pod template");
        let selector = get(obj, path).and_then(Yaml::as_object);
        match selector {
            Some(sel) if !sel.is_empty() => sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
            _ => false,
        }
    }
}

/// The shipped config as doka sees it with a profile: `doka config` must accept it.
pub struct Effective {
    pub raw: Yaml,
    pub config: Yaml,
}

pub fn effective_config(yaml: &str, profile: &str, what: &str) -> Effective {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("doka.yaml");
    std::fs::write(&file, yaml).expect("write config");
    let path = file.to_str().expect("utf-8 path");
    let out = support::doka_command(&["config", "--config", path, "--profile", profile], &[])
        .output()
        .expect("run doka config");
    assert!(
        out.status.success(),
        "{what}: `doka config --profile {profile}` exited {} instead of 0:\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let config: Yaml = serde_saphyr::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: `doka config` printed no YAML ({e})"));
    Effective {
        raw: serde_saphyr::from_str(yaml).expect("the shipped config parses"),
        config,
    }
}

pub fn listen_port(listen: &str) -> u16 {
    listen
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("http.listen {listen:?} has no port"))
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// The `doka_*` metric names in a PromQL expression (roughly `doka_[a-z_]+`).
pub fn metric_names(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    while let Some(at) = expr[i..].find("doka_") {
        let start = i + at;
        let mut end = start + "doka_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end] == b'_'
                || bytes[end].is_ascii_digit())
        {
            end += 1;
        }
        let inside_word = start > 0
            && (bytes[start - 1].is_ascii_alphanumeric()
                || bytes[start - 1] == b'_'
                || bytes[start - 1] == b':');
        if !inside_word {
            names.push(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// Every series name doka exports, read from doka's own registry with one label set of each
/// family created (a family without any is not exposed).
pub fn known_metrics() -> BTreeSet<String> {
    use doka::telemetry::metrics::{CredentialKind, Metrics, PutOutcome};
    let metrics = Metrics::new();
    let stream = metrics.destination("default", "s");
    stream.request(PutOutcome::Ok);
    stream.put_duration.observe(0.1);
    stream.batch_records.observe(1.0);
    stream.batch_bytes.observe(1.0);
    stream.record_age.observe(1.0);
    metrics.oldest_undelivered("default").set(0.0);
    metrics.consumed("t");
    metrics.dead_lettered("t");
    metrics.skipped("t");
    metrics.skipped_as_delivered("t");
    metrics.partition("t", 0, Some(1), Some(1), Some(0));
    metrics.credentials_renewed(CredentialKind::AssumedRole, "default", Some(1.0));
    metrics.rebalance("assigned");
    let schemas = metrics.schemas.resolve("default", "value", 10);
    schemas.decoded.inc();
    schemas.fetch_duration.observe(0.1);
    schemas.waiting.set(0);
    schemas.cached.set(0);
    let known: BTreeSet<String> = metrics
        .encode()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    assert!(known.len() > 20, "{known:?}");
    known
}
