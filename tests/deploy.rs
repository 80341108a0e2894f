//! The deployment artefacts under deploy/, checked with the tools a platform team would use on
//! them: hadolint on the Dockerfile, `kubectl kustomize` and kubernetes-validate on every overlay,
//! doka's own config loader on the shipped config, promtool on the alert rules, a real Prometheus
//! server parsing every dashboard query, and the IAM policies read as policy documents.
//!
//! The manifests are also checked against doka itself: the profile each overlay selects exists,
//! `doka config` accepts it, the probes, the container port and the scrape annotation use the port
//! of `http.listen`, the grace period outlasts the shutdown drain, the config is mounted where the
//! container's arguments look for it, and the IAM examples name the service account, the role,
//! the topics, the group and the stream of the shipped config.
//!
//! Tool paths come from the environment (`DOKA_TEST_HADOLINT`, `DOKA_TEST_KUBERNETES_VALIDATE`,
//! `DOKA_TEST_PROMTOOL`, `DOKA_TEST_PROMETHEUS`), printed by `scripts/stack.sh up` (which runs
//! `scripts/tools.sh install`); `kubectl` is taken from PATH (or `DOKA_TEST_KUBECTL`).

mod support;

use support::prometheus::{Prometheus, tool};

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

/// The Kubernetes version whose schemas the rendered manifests are validated against.
const KUBERNETES_VERSION: &str = "1.29.0";
/// The profiles of the shipped config that must have an overlay.
const ENVIRONMENTS: [&str; 3] = ["dev", "qa", "prod"];
/// doka's HTTP port when the config does not set `http.listen`.
const DEFAULT_HTTP_PORT: u16 = 9464;
/// After `pipeline.shutdown_timeout_ms`, doka takes up to 15 s to leave the group and 10 s to close.
const SHUTDOWN_AFTER_DRAIN_SECS: u64 = 25;

// ---------------------------------------------------------------------------------------------
// Tools and files

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn kubectl() -> PathBuf {
    std::env::var_os("DOKA_TEST_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| "kubectl".into())
}

/// Runs `cmd` in the repository root, feeding it `stdin`, and returns what it printed.
fn run(cmd: &mut Command, stdin: Option<&str>) -> Output {
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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `cmd` and panics with its output unless it exits 0; returns its stdout.
fn run_ok(cmd: &mut Command, stdin: Option<&str>) -> String {
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

fn get<'a>(v: &'a Yaml, path: &str) -> Option<&'a Yaml> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

fn get_str<'a>(v: &'a Yaml, path: &str) -> Option<&'a str> {
    get(v, path).and_then(Yaml::as_str)
}

/// One key that may contain dots (annotations, ConfigMap keys).
fn key_str<'a>(v: &'a Yaml, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Yaml::as_str)
}

fn must<'a>(v: &'a Yaml, path: &str, what: &str) -> &'a Yaml {
    get(v, path).unwrap_or_else(|| panic!("{what} has no `{path}`"))
}

fn seq<'a>(v: &'a Yaml, path: &str) -> &'a [Yaml] {
    get(v, path)
        .and_then(Yaml::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// A list setting, written as a YAML list or as doka's comma-separated string.
fn list<'a>(v: &'a Yaml, path: &str) -> Vec<&'a str> {
    match get(v, path) {
        Some(Yaml::String(s)) => s.split(',').map(str::trim).collect(),
        _ => seq(v, path).iter().filter_map(Yaml::as_str).collect(),
    }
}

/// `profile` merged over `base`, key by key, as doka merges `profiles.<name>` over the file.
fn merged(base: &Yaml, profile: &Yaml) -> Yaml {
    match (base, profile) {
        (Yaml::Mapping(b), Yaml::Mapping(p)) => {
            let mut out = b.clone();
            for (k, v) in p {
                let m = match b.get(k) {
                    Some(old) => merged(old, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), m);
            }
            Yaml::Mapping(out)
        }
        (_, p) => p.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Kustomize

fn overlay_dir(env: &str) -> String {
    format!("deploy/kubernetes/overlays/{env}")
}

/// The overlays on disk: every one is rendered and checked, and dev, qa and prod must be there.
fn overlays() -> Vec<String> {
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
fn render_text(env: &str) -> String {
    run_ok(
        Command::new(kubectl()).args(["kustomize", &overlay_dir(env)]),
        None,
    )
}

/// The objects an overlay renders to.
struct Rendered {
    env: String,
    objects: Vec<Yaml>,
}

impl Rendered {
    fn new(env: &str) -> Self {
        Self::parse(env, &render_text(env))
    }

    fn parse(env: &str, text: &str) -> Self {
        let objects = serde_yaml::Deserializer::from_str(text)
            .map(|doc| Yaml::deserialize(doc).expect("rendered YAML parses"))
            .filter(|v| !v.is_null())
            .collect();
        Rendered {
            env: env.to_owned(),
            objects,
        }
    }

    fn of_kind(&self, kind: &str) -> Vec<&Yaml> {
        self.objects
            .iter()
            .filter(|o| get_str(o, "kind") == Some(kind))
            .collect()
    }

    fn one(&self, kind: &str) -> &Yaml {
        let all = self.of_kind(kind);
        assert_eq!(all.len(), 1, "overlay {}: expected one {kind}", self.env);
        all[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Yaml {
        self.of_kind(kind)
            .into_iter()
            .find(|o| get_str(o, "metadata.name") == Some(name))
            .unwrap_or_else(|| panic!("overlay {}: no {kind} named {name}", self.env))
    }

    fn deployment(&self) -> &Yaml {
        self.one("Deployment")
    }

    fn pod(&self) -> &Yaml {
        must(self.deployment(), "spec.template", "the Deployment")
    }

    /// doka's container: the one named doka, or the only one.
    fn container(&self) -> &Yaml {
        let containers = seq(self.pod(), "spec.containers");
        containers
            .iter()
            .find(|c| get_str(c, "name") == Some("doka"))
            .or_else(|| (containers.len() == 1).then(|| &containers[0]))
            .unwrap_or_else(|| panic!("overlay {}: no container named doka", self.env))
    }

    /// The literal value of an environment variable of doka's container.
    fn env_var(&self, name: &str) -> Option<&str> {
        seq(self.container(), "env")
            .iter()
            .find(|e| get_str(e, "name") == Some(name))
            .and_then(|e| get_str(e, "value"))
    }

    /// The config file doka's container reads: `DOKA_CONFIG`, which every `doka` command in the
    /// container honours (`doka run` and a `kubectl exec … -- doka check` alike), and no
    /// `--config` argument pointing elsewhere.
    fn config_path(&self) -> String {
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
    fn mounted_config(&self) -> String {
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

    /// A container port given by number or by name, as a number.
    fn port_number(&self, port: &Yaml) -> u16 {
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
    fn selects_pods(&self, obj: &Yaml, path: &str) -> bool {
        let labels = must(self.pod(), "metadata.labels", "the pod template");
        let selector = get(obj, path).and_then(Yaml::as_mapping);
        match selector {
            Some(sel) if !sel.is_empty() => sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
            _ => false,
        }
    }
}

/// The shipped config as doka sees it with a profile: `doka config` must accept it.
struct Effective {
    raw: Yaml,
    config: Yaml,
}

fn effective_config(yaml: &str, profile: &str, what: &str) -> Effective {
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
    let config: Yaml = serde_yaml::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: `doka config` printed no YAML ({e})"));
    Effective {
        raw: serde_yaml::from_str(yaml).expect("the shipped config parses"),
        config,
    }
}

fn listen_port(listen: &str) -> u16 {
    listen
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("http.listen {listen:?} has no port"))
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

#[test]
fn the_dockerfile_passes_hadolint() {
    let hadolint = tool("DOKA_TEST_HADOLINT");
    let out = run(
        Command::new(hadolint).args([
            "--no-color",
            "--config",
            ".hadolint.yaml",
            "deploy/Dockerfile",
        ]),
        None,
    );
    assert!(
        out.status.success() && out.stdout.is_empty(),
        "hadolint found problems in deploy/Dockerfile ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );

    // What the manifests rely on: the entry point, the port, a numeric non-root user.
    let dockerfile = read("deploy/Dockerfile");
    let last_stage = dockerfile.rsplit("\nFROM ").next().expect("a final stage");
    fn directive<'a>(stage: &'a str, name: &str) -> Vec<&'a str> {
        stage
            .lines()
            .filter_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .collect()
    }
    assert_eq!(directive(last_stage, "ENTRYPOINT "), [r#"["doka"]"#]);
    assert_eq!(directive(last_stage, "CMD "), [r#"["run"]"#]);
    // Every doka command run in the container (`kubectl exec … -- doka check`) finds the config
    // the Deployment mounts, not ./doka.yaml.
    assert_eq!(
        directive(last_stage, "ENV "),
        ["DOKA_CONFIG=/etc/doka/doka.yaml"]
    );
    assert_eq!(
        directive(last_stage, "EXPOSE "),
        [DEFAULT_HTTP_PORT.to_string().as_str()]
    );
    let user = directive(last_stage, "USER ");
    assert_eq!(user.len(), 1, "one USER in the final stage");
    let uid: u32 = user[0]
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("USER {} is not numeric (runAsNonRoot needs a UID)", user[0]));
    assert_ne!(uid, 0, "the image must not run as root");
    let ignore = read(".dockerignore");
    assert!(
        ignore
            .lines()
            .any(|l| l.trim() == "*" || l.trim().trim_end_matches('/') == "target"),
        ".dockerignore must keep target/ out of the build context"
    );
}

/// Every documented `kubectl exec … -- doka …` relies on the container's DOKA_CONFIG (checked
/// above and per overlay): none may point `--config` anywhere else.
#[test]
fn documented_exec_commands_use_the_mounted_config() {
    let mut files = vec!["README.md".to_owned()];
    for dir in [
        "deploy",
        "deploy/iam",
        "deploy/monitoring",
        "deploy/kubernetes/base",
        "docs",
    ] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push(path.strip_prefix(root()).unwrap().display().to_string());
            }
        }
    }
    let mut seen = 0;
    for file in &files {
        for line in read(file).lines() {
            let Some(at) = line.find("exec deploy/doka -- doka ") else {
                continue;
            };
            seen += 1;
            let command = &line[at..];
            if let Some(pos) = command.find("--config ") {
                assert!(
                    command[pos + 9..].starts_with("/etc/doka/doka.yaml"),
                    "{file}: `{command}` points --config away from the mounted config"
                );
            }
        }
    }
    assert!(seen >= 3, "the docs show how to run doka check in the pod");
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

#[test]
fn every_overlay_renders_and_validates_against_the_kubernetes_schemas() {
    let validate = tool("DOKA_TEST_KUBERNETES_VALIDATE");
    for env in overlays() {
        let rendered = render_text(&env);
        let r = Rendered::parse(&env, &rendered);
        let documents = r.objects.len();
        let out = run(
            Command::new(&validate).args([
                "--kubernetes-version",
                KUBERNETES_VERSION,
                "--strict",
                "-",
            ]),
            Some(&rendered),
        );
        let report = text(&out.stdout) + &text(&out.stderr);
        // No CRDs are used: a kind without a schema (a WARN) is an error too.
        assert!(
            out.status.success() && !report.contains("WARN") && !report.contains("ERROR"),
            "overlay {env} does not validate against Kubernetes {KUBERNETES_VERSION}:\n{report}"
        );
        let passed = report.lines().filter(|l| l.contains(" passed ")).count();
        assert_eq!(
            passed, documents,
            "overlay {env}: {documents} objects rendered, {passed} validated:\n{report}"
        );
        for kind in [
            "Deployment",
            "ServiceAccount",
            "ConfigMap",
            "PodDisruptionBudget",
        ] {
            assert!(
                !r.of_kind(kind).is_empty(),
                "overlay {env} renders no {kind}"
            );
        }
    }
}

#[test]
fn every_overlay_lines_up_with_dokas_config() {
    for env in overlays() {
        let r = Rendered::new(&env);
        let what = format!("overlay {env}");

        // The profile: set, defined in the mounted doka.yaml, and accepted by doka.
        let profile = r
            .env_var("DOKA_PROFILE")
            .unwrap_or_else(|| panic!("{what}: the container sets no DOKA_PROFILE value"));
        let yaml = r.mounted_config();
        let raw: Yaml = serde_yaml::from_str(&yaml).expect("the shipped doka.yaml parses");
        let profiles: BTreeSet<&str> = get(&raw, "profiles")
            .and_then(Yaml::as_mapping)
            .map(|m| m.keys().filter_map(Yaml::as_str).collect())
            .unwrap_or_default();
        assert!(
            profiles.contains(profile),
            "{what}: DOKA_PROFILE={profile} is not a profile of its doka.yaml ({profiles:?})"
        );
        if ENVIRONMENTS.contains(&env.as_str()) {
            assert_eq!(profile, env, "{what} selects another environment's profile");
        }
        let eff = effective_config(&yaml, profile, &what);
        let config = &eff.config;

        // The HTTP port: set in the shipped file, enabled, and used by ports, probes, annotations.
        let sets_listen = get(&eff.raw, "http.listen").is_some()
            || get(&eff.raw, &format!("profiles.{profile}.http.listen")).is_some();
        assert!(
            sets_listen,
            "{what}: the shipped doka.yaml should set http.listen"
        );
        assert_ne!(
            get(config, "http.enabled").and_then(Yaml::as_bool),
            Some(false),
            "{what}: the HTTP endpoint is switched off, the probes cannot work"
        );
        let port = get_str(config, "http.listen").map_or(DEFAULT_HTTP_PORT, listen_port);
        let container = r.container();
        let named_port = seq(container, "ports")
            .iter()
            .find(|p| get(p, "containerPort").and_then(Yaml::as_u64) == Some(u64::from(port)))
            .unwrap_or_else(|| panic!("{what}: no container port {port} (http.listen)"));
        assert!(
            get_str(named_port, "name").is_some(),
            "{what}: name the container port {port}"
        );
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get_ = must(container, &format!("{probe}.httpGet"), &what);
            assert_eq!(get_str(get_, "path"), Some(path), "{what}: {probe} path");
            assert_eq!(
                r.port_number(must(get_, "port", &what)),
                port,
                "{what}: {probe} port"
            );
        }
        if let Some(startup) = get(container, "startupProbe.httpGet") {
            assert!(
                ["/healthz", "/readyz"].contains(&get_str(startup, "path").unwrap_or_default()),
                "{what}: startupProbe path"
            );
            assert_eq!(
                r.port_number(must(startup, "port", &what)),
                port,
                "{what}: startupProbe port"
            );
        }
        let annotations = must(r.pod(), "metadata.annotations", &what);
        assert_eq!(
            key_str(annotations, "prometheus.io/scrape"),
            Some("true"),
            "{what}: prometheus.io/scrape"
        );
        assert_eq!(
            key_str(annotations, "prometheus.io/port"),
            Some(port.to_string().as_str()),
            "{what}: prometheus.io/port"
        );
        if let Some(path) = key_str(annotations, "prometheus.io/path") {
            assert_eq!(path, "/metrics", "{what}: prometheus.io/path");
        }
        for service in r.of_kind("Service") {
            if r.selects_pods(service, "spec.selector") {
                for p in seq(service, "spec.ports") {
                    let target = get(p, "targetPort").or_else(|| get(p, "port")).unwrap();
                    assert_eq!(r.port_number(target), port, "{what}: Service targetPort");
                }
            }
        }

        // The identity: the pod's ServiceAccount is in the output, with its IRSA role.
        let sa_name = get_str(r.pod(), "spec.serviceAccountName")
            .unwrap_or_else(|| panic!("{what}: no serviceAccountName"));
        let sa = r.named("ServiceAccount", sa_name);
        let role = get(sa, "metadata.annotations")
            .and_then(|a| key_str(a, "eks.amazonaws.com/role-arn"))
            .unwrap_or_else(|| {
                panic!("{what}: ServiceAccount {sa_name} has no eks.amazonaws.com/role-arn")
            });
        assert!(is_role_arn(role), "{what}: {role} is not an IAM role ARN");

        // Shutdown: the kubelet waits longer than doka drains, leaves the group and closes.
        let drain_ms = get(config, "pipeline.shutdown_timeout_ms")
            .and_then(Yaml::as_u64)
            .unwrap_or(30_000);
        let grace = get(r.pod(), "spec.terminationGracePeriodSeconds")
            .and_then(Yaml::as_u64)
            .unwrap_or(30);
        assert!(
            grace * 1000 > drain_ms + SHUTDOWN_AFTER_DRAIN_SECS * 1000,
            "{what}: terminationGracePeriodSeconds {grace} must exceed \
             pipeline.shutdown_timeout_ms/1000 ({drain_ms} ms) + {SHUTDOWN_AFTER_DRAIN_SECS} s"
        );

        // Replicas and disruption budget.
        let replicas = get(r.deployment(), "spec.replicas")
            .and_then(Yaml::as_u64)
            .unwrap_or(1);
        if env == "prod" {
            assert!(replicas > 1, "{what}: prod runs more than one replica");
        }
        let pdb = r.one("PodDisruptionBudget");
        assert!(
            r.selects_pods(pdb, "spec.selector.matchLabels"),
            "{what}: the PodDisruptionBudget does not select doka's pods"
        );
        assert_eq!(
            get(pdb, "spec.maxUnavailable").and_then(Yaml::as_u64),
            Some(1),
            "{what}: PodDisruptionBudget maxUnavailable"
        );
    }
}

#[test]
fn every_overlay_runs_doka_locked_down() {
    for env in overlays() {
        let r = Rendered::new(&env);
        let what = format!("overlay {env}");
        let pod = must(r.pod(), "spec", &what);
        let c = r.container();
        let either = |path: &str| {
            get(c, &format!("securityContext.{path}"))
                .or_else(|| get(pod, &format!("securityContext.{path}")))
        };
        assert_eq!(
            either("runAsNonRoot").and_then(Yaml::as_bool),
            Some(true),
            "{what}: runAsNonRoot"
        );
        assert_eq!(
            get(c, "securityContext.readOnlyRootFilesystem").and_then(Yaml::as_bool),
            Some(true),
            "{what}: readOnlyRootFilesystem"
        );
        assert_eq!(
            get(c, "securityContext.allowPrivilegeEscalation").and_then(Yaml::as_bool),
            Some(false),
            "{what}: allowPrivilegeEscalation"
        );
        let dropped: Vec<&str> = seq(c, "securityContext.capabilities.drop")
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert_eq!(dropped, ["ALL"], "{what}: capabilities.drop");
        assert_eq!(
            either("seccompProfile.type").and_then(Yaml::as_str),
            Some("RuntimeDefault"),
            "{what}: seccompProfile"
        );
        for kind in ["requests", "limits"] {
            for res in ["cpu", "memory"] {
                assert!(
                    get(c, &format!("resources.{kind}.{res}")).is_some(),
                    "{what}: resources.{kind}.{res}"
                );
            }
        }
        // doka keeps its RSS around 35-100 MiB: the limit must leave room above that.
        let limit = get_str(c, "resources.limits.memory").unwrap_or_default();
        assert!(
            mebibytes(limit) >= 128,
            "{what}: memory limit {limit} is too small for doka (RSS up to ~100 MiB)"
        );
    }
}

/// A Kubernetes memory quantity in MiB (the suffixes the manifests use).
fn mebibytes(q: &str) -> u64 {
    let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = n
        .parse()
        .unwrap_or_else(|_| panic!("memory quantity {q:?}"));
    match unit {
        "Gi" => n * 1024,
        "Mi" => n,
        "G" => n * 1_000_000_000 / (1 << 20),
        "M" => n * 1_000_000 / (1 << 20),
        "" => n / (1 << 20),
        _ => panic!("unexpected memory unit in {q:?}"),
    }
}

fn is_role_arn(arn: &str) -> bool {
    arn.strip_prefix("arn:aws:iam::")
        .and_then(|rest| rest.split_once(":role/"))
        .is_some_and(|(account, name)| {
            account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty()
        })
}

// ---------------------------------------------------------------------------------------------
// IAM

fn strings(v: &Json) -> Vec<&str> {
    match v {
        Json::String(s) => vec![s.as_str()],
        Json::Array(a) => a.iter().filter_map(Json::as_str).collect(),
        _ => Vec::new(),
    }
}

/// A policy document: version, statements, and in each an effect, actions and what they apply to.
fn policy(file: &str) -> Vec<Json> {
    let text = read(&format!("deploy/iam/{file}"));
    let doc: Json =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("deploy/iam/{file}: {e}"));
    assert_eq!(doc["Version"], "2012-10-17", "{file}: Version");
    let statements = doc["Statement"]
        .as_array()
        .unwrap_or_else(|| panic!("{file}: Statement must be an array"));
    assert!(!statements.is_empty(), "{file}: no statements");
    let trust = file.contains("trust");
    for (i, s) in statements.iter().enumerate() {
        let effect = s["Effect"].as_str().unwrap_or_default();
        assert!(
            effect == "Allow" || effect == "Deny",
            "{file} statement {i}: Effect {effect:?}"
        );
        let actions = strings(&s["Action"]);
        assert!(
            !actions.is_empty()
                && actions.iter().all(|a| a
                    .split_once(':')
                    .is_some_and(|(svc, op)| !svc.is_empty() && !op.is_empty())),
            "{file} statement {i}: Action must be service:Operation strings, got {}",
            s["Action"]
        );
        if trust {
            assert!(
                s.get("Principal").is_some(),
                "{file} statement {i}: a trust policy statement needs a Principal"
            );
        } else {
            assert!(
                !strings(&s["Resource"]).is_empty() && s.get("Principal").is_none(),
                "{file} statement {i}: a permissions policy statement needs a Resource and no Principal"
            );
        }
    }
    statements.clone()
}

/// The resources the statements granting `action` apply to.
fn resources_for<'a>(statements: &'a [Json], action: &str) -> Vec<&'a str> {
    let granted: Vec<&Json> = statements
        .iter()
        .filter(|s| s["Effect"] == "Allow" && strings(&s["Action"]).contains(&action))
        .collect();
    assert!(!granted.is_empty(), "no statement allows {action}");
    granted
        .iter()
        .flat_map(|s| strings(&s["Resource"]))
        .collect()
}

#[test]
fn iam_examples_are_policy_documents_for_the_shipped_deployment() {
    // What the examples must match: prod's ServiceAccount, role and config.
    let r = Rendered::new("prod");
    let sa = r.one("ServiceAccount");
    let namespace = get_str(sa, "metadata.namespace").unwrap_or("default");
    let sa_name = get_str(sa, "metadata.name").unwrap();
    let role_a = get(sa, "metadata.annotations")
        .and_then(|a| key_str(a, "eks.amazonaws.com/role-arn"))
        .expect("prod's role A");
    let raw: Yaml = serde_yaml::from_str(&r.mounted_config()).unwrap();
    let prod = merged(&raw, get(&raw, "profiles.prod").unwrap_or(&Yaml::Null));

    let mut files: Vec<String> = std::fs::read_dir(root().join("deploy/iam"))
        .expect("deploy/iam")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".json"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "role-a-policy.json",
            "role-a-trust.json",
            "role-b-firehose-policy.json",
            "role-b-policy.json",
            "role-b-trust.json"
        ]
    );
    for f in &files {
        policy(f);
    }

    // Role A's trust: the cluster's OIDC provider, for doka's service account only.
    let trust_a = policy("role-a-trust.json");
    let s = trust_a
        .iter()
        .find(|s| strings(&s["Action"]).contains(&"sts:AssumeRoleWithWebIdentity"))
        .expect("role A trusts sts:AssumeRoleWithWebIdentity");
    let provider = s["Principal"]["Federated"]
        .as_str()
        .expect("a Federated principal");
    let issuer = provider
        .split_once(":oidc-provider/")
        .map(|(_, issuer)| issuer)
        .unwrap_or_else(|| panic!("{provider} is not an OIDC provider ARN"));
    let equals = &s["Condition"]["StringEquals"];
    assert_eq!(
        equals[format!("{issuer}:sub")],
        format!("system:serviceaccount:{namespace}:{sa_name}"),
        "role A's trust must name the ServiceAccount the manifests create"
    );
    assert_eq!(equals[format!("{issuer}:aud")], "sts.amazonaws.com");

    // Role A's permissions: assume role B, read the topics, use the group, all scoped.
    let policy_a = policy("role-a-policy.json");
    let role_b = get_str(&prod, "aws.role_arn").expect("aws.role_arn");
    assert_eq!(resources_for(&policy_a, "sts:AssumeRole"), [role_b]);
    let cluster = resources_for(&policy_a, "kafka-cluster:Connect");
    assert_eq!(cluster.len(), 1, "Connect to one cluster");
    let (prefix, cluster_id) = cluster[0]
        .split_once(":cluster/")
        .unwrap_or_else(|| panic!("{} is not an MSK cluster ARN", cluster[0]));
    assert!(
        prefix.starts_with("arn:aws:kafka:") && cluster_id.split('/').count() == 2,
        "{} is not arn:aws:kafka:REGION:ACCOUNT:cluster/NAME/UUID",
        cluster[0]
    );
    let topic_arn = |t: &str| format!("{prefix}:topic/{cluster_id}/{t}");
    for action in ["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"] {
        let granted = resources_for(&policy_a, action);
        let topics = list(&prod, "kafka.topics");
        assert!(!topics.is_empty(), "prod's kafka.topics");
        for topic in topics {
            assert!(
                granted.contains(&topic_arn(topic).as_str()),
                "{action} must cover topic {topic} ({}), got {granted:?}",
                topic_arn(topic)
            );
        }
    }
    let group = get_str(&prod, "kafka.group_id").expect("kafka.group_id");
    for action in ["kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"] {
        assert_eq!(
            resources_for(&policy_a, action),
            [format!("{prefix}:group/{cluster_id}/{group}")],
            "{action} on prod's group"
        );
    }
    if let Some(dead_letters) = get_str(&prod, "dead_letter.topic") {
        for action in ["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"] {
            assert!(
                resources_for(&policy_a, action).contains(&topic_arn(dead_letters).as_str()),
                "{action} must cover the dead-letter topic {dead_letters}"
            );
        }
    }
    for s in &policy_a {
        if strings(&s["Action"])
            .iter()
            .any(|a| a.starts_with("kafka-cluster:"))
        {
            assert!(
                strings(&s["Resource"]).iter().all(|r| !r.contains('*')),
                "MSK permissions must be scoped, not wildcards: {s}"
            );
        }
    }

    // Role B's trust: role A, with an external id.
    let trust_b = policy("role-b-trust.json");
    let s = trust_b
        .iter()
        .find(|s| strings(&s["Action"]).contains(&"sts:AssumeRole"))
        .expect("role B trusts sts:AssumeRole");
    assert_eq!(
        strings(&s["Principal"]["AWS"]),
        [role_a],
        "role B must trust prod's role A (the ServiceAccount's annotation)"
    );
    assert!(
        s["Condition"]["StringEquals"]["sts:ExternalId"].is_string(),
        "role B's trust checks sts:ExternalId"
    );

    // Role B's permissions: the stream, and its customer key.
    let policy_b = policy("role-b-policy.json");
    let stream = get_str(&prod, "kinesis.stream").expect("kinesis.stream");
    for action in [
        "kinesis:PutRecords",
        "kinesis:PutRecord",
        "kinesis:DescribeStreamSummary",
        "kinesis:ListShards",
    ] {
        assert_eq!(resources_for(&policy_b, action), [stream], "{action}");
    }
    let keys = resources_for(&policy_b, "kms:GenerateDataKey");
    assert!(
        keys.iter()
            .all(|k| k.starts_with("arn:aws:kms:") && k.contains(":key/")),
        "kms:GenerateDataKey on a key ARN, got {keys:?}"
    );
    // A Firehose route's role: write to and describe its delivery stream, nothing wider.
    let firehose = policy("role-b-firehose-policy.json");
    for action in ["firehose:PutRecordBatch", "firehose:DescribeDeliveryStream"] {
        let resources = resources_for(&firehose, action);
        assert!(
            !resources.is_empty()
                && resources
                    .iter()
                    .all(|r| r.starts_with("arn:aws:firehose:") && r.contains(":deliverystream/")),
            "{action} on a delivery stream ARN, got {resources:?}"
        );
    }
    let readme = read("deploy/iam/README.md");
    assert!(
        readme.contains("role-b-firehose-policy.json"),
        "deploy/iam/README.md says when the Firehose policy is needed"
    );
    assert!(
        readme.contains("kms:GenerateDataKey") && readme.contains("customer"),
        "deploy/iam/README.md explains when kms:GenerateDataKey is needed"
    );
}

// ---------------------------------------------------------------------------------------------
// Monitoring

/// The `doka_*` metric names in a PromQL expression (roughly `doka_[a-z_]+`).
fn metric_names(expr: &str) -> Vec<String> {
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
fn known_metrics() -> BTreeSet<String> {
    use doka::telemetry::metrics::{CredentialKind, Metrics, PutOutcome};
    let metrics = Metrics::new();
    let stream = metrics.destination("default", "s");
    stream.request(PutOutcome::Ok);
    stream.put_duration.observe(0.1);
    stream.batch_records.observe(1.0);
    stream.batch_bytes.observe(1.0);
    metrics.consumed("t");
    metrics.dead_lettered("t");
    metrics.skipped("t");
    metrics.partition("t", 0, Some(1), Some(1), Some(0));
    metrics.credentials_renewed(CredentialKind::AssumedRole, "default", Some(1.0));
    metrics.rebalance("assigned");
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

fn alert_rules() -> Vec<Yaml> {
    let rules: Yaml = serde_yaml::from_str(&read("deploy/monitoring/alerts.yaml")).unwrap();
    let groups = seq(&rules, "groups");
    let doka = groups
        .iter()
        .find(|g| get_str(g, "name") == Some("doka"))
        .expect("a rule group named doka");
    seq(doka, "rules").to_vec()
}

fn dashboard() -> Json {
    serde_json::from_str(&read("deploy/monitoring/dashboard.json"))
        .unwrap_or_else(|e| panic!("deploy/monitoring/dashboard.json: {e}"))
}

/// Every panel, rows' nested panels included, rows themselves excluded.
fn panels(dashboard: &Json) -> Vec<&Json> {
    fn walk<'a>(list: &'a Json, out: &mut Vec<&'a Json>) {
        for p in list.as_array().into_iter().flatten() {
            if p["type"] == "row" {
                walk(&p["panels"], out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn dashboard_exprs(dashboard: &Json) -> Vec<String> {
    panels(dashboard)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .map(str::to_owned)
        .collect()
}

#[test]
fn alert_rules_pass_promtool_and_tell_what_to_do() {
    let promtool = tool("DOKA_TEST_PROMTOOL");
    run_ok(
        Command::new(&promtool).args(["check", "rules", "deploy/monitoring/alerts.yaml"]),
        None,
    );
    let tested = run_ok(
        Command::new(&promtool).args(["test", "rules", "deploy/monitoring/alerts.test.yaml"]),
        None,
    );
    assert!(tested.contains("SUCCESS"), "promtool test rules:\n{tested}");

    let rules = alert_rules();
    assert!(!rules.is_empty(), "no rules in group doka");
    let mut used = BTreeSet::new();
    for rule in &rules {
        let name = get_str(rule, "alert").expect("only alerting rules");
        assert!(get_str(rule, "for").is_some(), "{name}: no `for:`");
        let severity = get_str(rule, "labels.severity").unwrap_or_default();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        let summary = get_str(rule, "annotations.summary").unwrap_or_default();
        let description = get_str(rule, "annotations.description").unwrap_or_default();
        assert!(!summary.is_empty(), "{name}: no summary");
        assert!(
            description.contains("doka check"),
            "{name}: the description should say what to do, starting with `doka check`"
        );
        let expr = get_str(rule, "expr").expect("expr");
        used.extend(metric_names(expr));
        if expr.contains("up{") {
            used.insert("up".to_owned());
        }
    }
    // What a person must act on: lag, stalled delivery, throttling, failures, credentials, dead
    // letters, and doka not being there at all.
    for metric in [
        "doka_consumer_lag_records",
        "doka_records_delivered_total",
        "doka_records_throttled_total",
        "doka_put_requests_total",
        "doka_records_failed_total",
        "doka_credentials_expiry_timestamp_seconds",
        "doka_credential_renewals_total",
        "doka_records_dead_lettered_total",
        "up",
    ] {
        assert!(used.contains(metric), "no alert rule uses {metric}");
    }

    // The unit tests cover the alerts that matter most, firing and, where it counts, quiet.
    let tests: Yaml = serde_yaml::from_str(&read("deploy/monitoring/alerts.test.yaml")).unwrap();
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for group in seq(&tests, "tests") {
        for case in seq(group, "alert_rule_test") {
            let alert = get_str(case, "alertname").unwrap_or_default().to_owned();
            if seq(case, "exp_alerts").is_empty() {
                quiet.insert(alert);
            } else {
                firing.insert(alert);
            }
        }
    }
    for alert in [
        "DokaConsumerLagGrowing",
        "DokaNothingDelivered",
        "DokaDeadLetters",
        "DokaCredentialsNearExpiry",
    ] {
        assert!(
            firing.contains(alert),
            "alerts.test.yaml: no case where {alert} fires"
        );
    }
    assert!(
        quiet.contains("DokaNothingDelivered"),
        "alerts.test.yaml: no case where DokaNothingDelivered stays quiet while delivering"
    );
}

#[test]
fn rules_and_dashboard_use_only_metrics_doka_exports() {
    let known = known_metrics();
    let mut sources: Vec<(String, String)> = alert_rules()
        .iter()
        .map(|r| {
            (
                format!("alerts.yaml {}", get_str(r, "alert").unwrap_or("?")),
                get_str(r, "expr").unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let d = dashboard();
    sources.extend(
        dashboard_exprs(&d)
            .into_iter()
            .map(|e| ("dashboard.json".to_owned(), e)),
    );
    for var in d["templating"]["list"].as_array().into_iter().flatten() {
        let query = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .or_else(|| var["definition"].as_str())
            .unwrap_or_default();
        sources.push(("dashboard.json variable".to_owned(), query.to_owned()));
    }
    let mut seen = BTreeSet::new();
    for (source, expr) in &sources {
        for name in metric_names(expr) {
            assert!(
                known.contains(&name),
                "{source}: `{name}` is not a metric doka exports (expr: {expr})"
            );
            seen.insert(name);
        }
    }
    assert!(
        !seen.is_empty(),
        "no doka metric found in the rules or the dashboard"
    );
}

#[test]
fn the_dashboard_has_a_valid_query_in_every_panel() {
    let d = dashboard();
    let schema = d["schemaVersion"].as_u64().unwrap_or_default();
    assert!(schema >= 36, "schemaVersion {schema} < 36");
    let variables = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let datasource_variable = variables
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .and_then(|v| v["name"].as_str());
    let datasource_input = d["__inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["type"] == "datasource" && i["pluginId"] == "prometheus")
        .and_then(|i| i["name"].as_str());
    let datasource = datasource_variable
        .or(datasource_input)
        .expect("a Prometheus datasource template variable or __inputs entry");
    let datasource_ref = format!("${{{datasource}}}");

    let all = panels(&d);
    assert!(!all.is_empty(), "no panels");
    for p in &all {
        let title = p["title"].as_str().unwrap_or("?");
        let exprs: Vec<&str> = p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str())
            .filter(|e| !e.trim().is_empty())
            .collect();
        assert!(
            !exprs.is_empty(),
            "panel {title:?} has no target with an expr"
        );
        assert_eq!(
            p["datasource"]["uid"].as_str(),
            Some(datasource_ref.as_str()),
            "panel {title:?} must use the dashboard's datasource"
        );
    }

    // The main metrics each have a panel.
    let exprs = dashboard_exprs(&d);
    let joined = exprs.join("\n");
    for metric in [
        "doka_records_delivered_total",
        "doka_records_consumed_total",
        "doka_consumer_lag_records",
        "doka_records_throttled_total",
        "doka_records_failed_total",
        "doka_put_request_duration_seconds_bucket",
        "doka_in_flight_records",
        "doka_send_rate_limit_records_per_second",
        "doka_credentials_expiry_timestamp_seconds",
    ] {
        assert!(joined.contains(metric), "no dashboard panel shows {metric}");
    }
    assert!(
        exprs.iter().any(|e| e.contains("histogram_quantile(")
            && e.contains("doka_put_request_duration_seconds_bucket")),
        "no PutRecords latency quantile panel"
    );

    // A real Prometheus parses every query (Grafana's variables replaced by plain values).
    let prometheus = Prometheus::start(&[]);
    for expr in &exprs {
        let query = grafana_to_promql(expr);
        let answer = prometheus.query(&query);
        assert!(
            answer["status"] == "success",
            "Prometheus refuses the dashboard query {expr}:\n{answer}"
        );
    }
}

/// A dashboard expression with Grafana's variables replaced, as Grafana sends it.
fn grafana_to_promql(expr: &str) -> String {
    let mut out = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    // Template variables ($name or ${name}) in label matchers: match anything.
    while let Some(at) = out.find('$') {
        let rest = &out[at + 1..];
        let len = if let Some(inner) = rest.strip_prefix('{') {
            inner.find('}').map(|e| e + 2).unwrap_or(rest.len())
        } else {
            rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())
        };
        out.replace_range(at..at + 1 + len, ".*");
    }
    out
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names(r#"sum(rate(doka_records_delivered_total{job="doka"}[5m])) / doka_x"#),
        ["doka_records_delivered_total", "doka_x"]
    );
    assert!(metric_names("doka:lag:sum + not_doka_metric").is_empty());
    assert_eq!(
        grafana_to_promql(
            r#"rate(doka_fetch_paused{namespace=~"$namespace",pod=~"${pod}"}[$__rate_interval])"#
        ),
        r#"rate(doka_fetch_paused{namespace=~".*",pod=~".*"}[1m])"#
    );
}
