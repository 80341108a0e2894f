//! The container image, run the way the Deployment runs it.
//!
//! `make image` (scripts/image.sh) builds deploy/Dockerfile, unchanged, with buildah; `make test`
//! builds it before the tests and exports `DOKA_IMAGE` and the podman settings it used. Here a
//! container from that image runs as uid 10001 with a read-only root file system (no tmpfs
//! either, as `readOnlyRootFilesystem` gives none), the config mounted read-only where the
//! Deployment mounts its ConfigMap, `DOKA_PROFILE` set, role A from a projected IRSA token as EKS
//! mounts it, and the host's network to reach the local stack (never a bridge network: it would
//! change the host). The brokers are the stack's TLS listener (stunnel), so the image's OpenSSL
//! and CA handling are exercised, not assumed. Every record is counted by id.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const ROLE_A: &str = "arn:aws:iam::123456789012:role/doka-pod";
/// Where EKS' pod identity webhook mounts the IRSA token.
const IRSA_TOKEN_DIR: &str = "/var/run/secrets/eks.amazonaws.com/serviceaccount";
/// What the base Deployment promises the container: user, config mount, grace period.
struct PodSpec {
    user: String,
    config_dir: String,
    config_file: String,
    grace: Duration,
}

fn pod_spec() -> PodSpec {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/base/deployment.yaml"),
    )
    .unwrap();
    let deployment: Value = serde_saphyr::from_str(&text).unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let security = &pod["securityContext"];
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .expect("a config volume mount");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    let config_file = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DOKA_CONFIG")
        .and_then(|e| e["value"].as_str())
        .expect("DOKA_CONFIG in the Deployment")
        .to_owned();
    PodSpec {
        user: format!(
            "{}:{}",
            security["runAsUser"].as_u64().unwrap(),
            security["runAsGroup"].as_u64().unwrap()
        ),
        config_dir: mount["mountPath"].as_str().unwrap().to_owned(),
        config_file,
        grace: Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap()),
    }
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("podman (installed by scripts/image.sh)")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A named container, removed (with whatever it left) when the test ends, failed or not.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.0]);
    }
}

/// A directory the container's user can read (tempdirs are 0700, root's).
fn readable_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn write_readable(path: &Path, contents: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// The `podman run` options that make a container what the Deployment makes a pod.
fn pod_options(spec: &PodSpec, config: &Path, token: &Path, name: &str) -> Vec<String> {
    let options = [
        "--name",
        name,
        "--network",
        "host",
        "--user",
        &spec.user,
        "--read-only",
        "--read-only-tmpfs=false",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--volume",
        &format!("{}:{}:ro", config.display(), spec.config_dir),
        "--volume",
        &format!("{}:{IRSA_TOKEN_DIR}:ro", token.display()),
        // What the Deployment and EKS' webhook set; nothing else of the host's environment.
        "--env",
        "DOKA_PROFILE=container",
        "--env",
        &format!("AWS_ROLE_ARN={ROLE_A}"),
        "--env",
        &format!("AWS_WEB_IDENTITY_TOKEN_FILE={IRSA_TOKEN_DIR}/token"),
        "--env",
        &format!("AWS_ROLE_SESSION_NAME={name}"),
        "--env",
        &format!("AWS_REGION={REGION}"),
        "--env",
        "AWS_EC2_METADATA_DISABLED=true",
    ];
    options.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_checks_and_moves_every_record_as_the_deployment_runs_it() {
    let image = stack_var("DOKA_IMAGE");
    let spec = pod_spec();

    // The image's own settings, as the manifests rely on them.
    let inspect = podman(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Cmd}}|{{json .Config.Env}}",
        &image,
    ]);
    assert!(inspect.status.success(), "{}", text(&inspect));
    let facts = String::from_utf8_lossy(&inspect.stdout).trim().to_owned();
    let parts: Vec<&str> = facts.split('|').collect();
    assert_eq!(parts[0], spec.user, "the image's user is the Deployment's");
    assert_eq!(parts[1], r#"["doka"]"#);
    assert_eq!(parts[2], r#"["run"]"#);
    assert!(
        parts[3].contains(&format!("DOKA_CONFIG={}", spec.config_file)),
        "{facts}"
    );

    // A topic on the TLS listener, a stream in account B.
    let ep = endpoints();
    let b = account_b_kinesis(&ep).await;
    let stream = unique("doka-image");
    create_stream(&b, &stream, 2).await;
    let topic = unique("orders");
    let group = unique("doka-image-group");
    let bootstrap = stack_var("DOKA_TEST_KAFKA_TLS");
    let ca = PathBuf::from(stack_var("DOKA_TEST_TLS_DIR")).join("ca.pem");
    let client = [
        ("security.protocol", "SSL".to_owned()),
        ("ssl.ca.location", ca.display().to_string()),
    ];
    let n = 500;
    let placements = produce_with(&bootstrap, &client, &topic, &keyed_messages(0..n, 25));

    // The config as the ConfigMap would carry it, with the CA beside it in the mounted directory,
    // and a profile for DOKA_PROFILE to name.
    let config = readable_dir();
    let ca_inside = format!("{}/tls/ca.pem", spec.config_dir);
    let yaml = DokaSetup {
        bootstrap: &bootstrap,
        group: &group,
        topic: &topic,
        stream: &stream,
        sts: &ep.sts,
        kinesis: &ep.kinesis,
    }
    .yaml()
    .replacen(
        "kafka:\n",
        &format!("kafka:\n  auth:\n    mode: tls\n    tls:\n      ca_file: {ca_inside}\n"),
        1,
    ) + "profiles:\n  container:\n    batch:\n      max_records: 100\n";
    let file_name = Path::new(&spec.config_file).file_name().unwrap();
    write_readable(&config.path().join(file_name), yaml.as_bytes());
    write_readable(
        &config.path().join("tls/ca.pem"),
        &std::fs::read(&ca).unwrap(),
    );
    let token = readable_dir();
    write_readable(
        &token.path().join("token"),
        b"eyJhbGciOiJSUzI1NiJ9.irsa-test-token.sig",
    );

    // `doka check`, as `kubectl exec … -- doka check` runs it: no --config (DOKA_CONFIG).
    let name = unique("doka-check");
    let _check = Container(name.clone());
    let mut args = vec!["run".to_owned()];
    args.extend(pod_options(&spec, config.path(), token.path(), &name));
    args.extend([image.clone(), "check".into()]);
    let check = Command::new("podman").args(&args).output().unwrap();
    let report = text(&check);
    assert_eq!(check.status.code(), Some(0), "doka check failed:\n{report}");
    for hop in [
        "config valid (profile container)",
        "kafka.tls",
        "certificate and host name verification",
        "assumed-role/doka-pod/",
        "assumed-role/doka-writer/",
        &stream,
    ] {
        assert!(report.contains(hop), "`{hop}` not in:\n{report}");
    }

    // `doka run` (the image's default command), detached like a pod.
    let name = unique("doka-run");
    let run = Container(name.clone());
    let mut args = vec!["run".to_owned(), "--detach".into()];
    args.extend(pod_options(&spec, config.path(), token.path(), &name));
    args.push(image.clone());
    let started = Command::new("podman").args(&args).output().unwrap();
    assert!(started.status.success(), "{}", text(&started));

    let records = wait_for_all(&b, &stream, n, Duration::from_secs(120)).await;
    let (missing, _duplicates) = tally(n, &records);
    assert!(missing.is_empty(), "lost {missing:?}");
    let ends = end_offsets(&placements);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let committed = committed_with(&bootstrap, &client, &group, &topic, 4);
        if committed == ends {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "committed {committed:?}, expected {ends:?}:\n{}",
            text(&podman(&["logs", &run.0]))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGTERM (what the kubelet sends), SIGKILL only after the Deployment's grace period.
    let grace = spec.grace.as_secs().to_string();
    let stopping = Instant::now();
    let stop = podman(&["stop", "--time", &grace, &run.0]);
    let took = stopping.elapsed();
    assert!(stop.status.success(), "{}", text(&stop));
    let exit = podman(&["inspect", "--format", "{{.State.ExitCode}}", &run.0]);
    let logs = text(&podman(&["logs", &run.0]));
    assert_eq!(
        String::from_utf8_lossy(&exit.stdout).trim(),
        "0",
        "exit code after SIGTERM:\n{logs}"
    );
    assert!(
        took < spec.grace,
        "stopping took {took:?}, the grace period is {:?}",
        spec.grace
    );
    assert!(
        logs.contains("assumed-role/doka-pod/") && logs.contains("assumed-role/doka-writer/"),
        "{logs}"
    );
    delete_stream(&b, &stream).await;
}
