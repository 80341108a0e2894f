//! The deployment artefacts under deploy/, checked with the tools a platform team would use on
//! them: hadolint on the Dockerfile, `kubectl kustomize` and kubernetes-validate on every overlay,
//! and doka's own config loader on each overlay's config.
//!
//! The manifests are also checked against doka itself: the profile each overlay selects exists,
//! `doka config` accepts it, the probes, the container port and the scrape annotation use the port
//! of `http.listen`, the grace period outlasts the shutdown drain, and the config is mounted where
//! the container's arguments look for it.
//!
//! Beside this file: `deploy_overlays.rs` (one config per environment, shared clusters, the
//! PodDisruptionBudget, the NetworkPolicy, the service account token, the KEDA and Pod Identity
//! components), `deploy_operator.rs` (the Prometheus Operator component), `deploy_monitoring.rs`
//! (alert rules, their unit tests, the dashboard), `deploy_iam.rs` (the IAM examples), and
//! `manifests/` (what they share).
//!
//! Tool paths come from the environment (`DOKA_TEST_HADOLINT`, `DOKA_TEST_KUBERNETES_VALIDATE`,
//! `DOKA_TEST_PROMTOOL`, `DOKA_TEST_PROMETHEUS`), printed by `scripts/stack.sh up` (which runs
//! `scripts/tools.sh install`); `kubectl` is taken from PATH (or `DOKA_TEST_KUBECTL`).

mod manifests;
mod support;

use manifests::*;

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value as Yaml;
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
        let raw: Yaml = serde_saphyr::from_str(&yaml).expect("the shipped doka.yaml parses");
        let profiles: BTreeSet<&str> = get(&raw, "profiles")
            .and_then(Yaml::as_object)
            .map(|m| m.keys().map(String::as_str).collect())
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
