//! The environments' overlays as a platform team runs them side by side: each with its own config
//! (an edit rolls that environment only) and its own namespace (environments share a cluster);
//! the disruption budget, the NetworkPolicy and the service account token of every rendered
//! overlay; and the optional KEDA and EKS Pod Identity components on top of every environment.
//! Components' custom resources (ScaledObject) have no schema in kubernetes-validate: everything
//! else is validated strictly, the ScaledObject field by field.

mod manifests;
mod support;

use manifests::*;
use support::prometheus::Prometheus;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value as Yaml;

/// The ports doka connects to: DNS, the MSK listeners (plaintext, TLS, SASL/SCRAM, IAM), HTTPS
/// for STS, Kinesis and Firehose.
const EGRESS: [(&str, u16); 7] = [
    ("UDP", 53),
    ("TCP", 53),
    ("TCP", 9092),
    ("TCP", 9094),
    ("TCP", 9096),
    ("TCP", 9098),
    ("TCP", 443),
];

/// Where the EKS Pod Identity agent answers on every node.
const POD_IDENTITY_AGENT: [&str; 2] = ["169.254.170.23/32", "fd00:ec2::23/128"];

fn port_of(rule_port: &Yaml) -> (String, u16) {
    let protocol = get_str(rule_port, "protocol").unwrap_or("TCP").to_owned();
    let port = get(rule_port, "port")
        .and_then(Yaml::as_u64)
        .expect("NetworkPolicy ports are numbers");
    (protocol, u16::try_from(port).expect("a port"))
}

/// Every (protocol, port) the rules of `direction` allow, with whether each rule has a peer list.
fn allowed(policy: &Yaml, direction: &str) -> Vec<(String, u16, bool)> {
    seq(policy, &format!("spec.{direction}"))
        .iter()
        .flat_map(|rule| {
            let scoped = !seq(rule, "to").is_empty() || !seq(rule, "from").is_empty();
            let ports = seq(rule, "ports");
            assert!(
                !ports.is_empty(),
                "a {direction} rule without ports allows every port: {rule:?}"
            );
            ports.iter().map(move |p| {
                let (protocol, port) = port_of(p);
                (protocol, port, scoped)
            })
        })
        .collect()
}

#[test]
fn each_environment_has_its_own_config_and_namespace() {
    let mut seen: BTreeMap<(String, String, String), String> = BTreeMap::new();
    let mut namespaces = BTreeSet::new();
    for env in overlays() {
        let r = Rendered::new(&env);
        let what = format!("overlay {env}");

        // The mounted config is the overlay's own file, word for word.
        let own = read(&format!("{}/doka.yaml", overlay_dir(&env)));
        assert_eq!(
            r.mounted_config(),
            own,
            "{what}: the pod must read the overlay's own doka.yaml"
        );
        let profile = r.env_var("DOKA_PROFILE").expect("DOKA_PROFILE");
        let raw: Yaml = serde_saphyr::from_str(&own).expect("doka.yaml parses");
        assert!(
            get(&raw, &format!("profiles.{profile}")).is_some(),
            "{what}: its doka.yaml has no profile {profile}"
        );

        // One namespace per environment, on every object.
        let namespace = r.namespace().to_owned();
        for object in &r.objects {
            assert_eq!(
                get_str(object, "metadata.namespace"),
                Some(namespace.as_str()),
                "{what}: {:?} is not in the environment's namespace",
                get_str(object, "metadata.name")
            );
        }
        assert!(
            namespaces.insert(namespace.clone()),
            "{what}: namespace {namespace} is another environment's too"
        );
        for id in identities(&r) {
            if let Some(other) = seen.insert(id.clone(), env.clone()) {
                panic!(
                    "{what} and overlay {other} both render {id:?}: they cannot share a cluster"
                );
            }
        }
    }
}

#[test]
fn editing_one_environments_config_rolls_only_that_environment() {
    let copy = TempDeploy::new();
    let dir = |env: &str| format!("deploy/kubernetes/overlays/{env}");
    let before: BTreeMap<String, String> = overlays()
        .into_iter()
        .map(|env| {
            let text = copy.render_text(&dir(&env));
            (env, text)
        })
        .collect();
    let config_map = |env: &str, text: &str| -> String {
        let r = Rendered::parse(env, text);
        let volume = seq(r.pod(), "spec.volumes")
            .iter()
            .find_map(|v| get_str(v, "configMap.name"))
            .expect("a ConfigMap volume")
            .to_owned();
        assert!(
            r.of_kind("ConfigMap")
                .iter()
                .any(|c| get_str(c, "metadata.name") == Some(&volume)),
            "overlay {env}: the pod mounts {volume}, which is not rendered"
        );
        volume
    };

    for edited in ENVIRONMENTS {
        // A real edit: this environment's batching.
        let file = format!("{}/doka.yaml", dir(edited));
        let original = copy.read(&file);
        let changed = format!(
            "{}\n    batch:\n      linger_ms: 25\n",
            original.trim_end_matches('\n')
        );
        let changed_yaml: Yaml = serde_saphyr::from_str(&changed).expect("the edit parses");
        assert_eq!(
            get(&changed_yaml, &format!("profiles.{edited}.batch.linger_ms"))
                .and_then(Yaml::as_u64),
            Some(25),
            "the edit lands in profile {edited}"
        );
        copy.write(&file, &changed);

        for (env, old) in &before {
            let new = copy.render_text(&dir(env));
            if env == edited {
                let (old_cm, new_cm) = (config_map(env, old), config_map(env, &new));
                assert_ne!(
                    old_cm, new_cm,
                    "editing {edited}'s config must change its ConfigMap's name (and so roll its pods)"
                );
            } else {
                assert_eq!(
                    &new, old,
                    "editing {edited}'s config changed what overlay {env} renders"
                );
            }
        }
        copy.write(&file, &original);
    }
}

#[test]
fn the_disruption_budget_lets_drains_evict_unready_pods() {
    for env in overlays() {
        let r = Rendered::new(&env);
        let pdb = r.one("PodDisruptionBudget");
        assert_eq!(
            get_str(pdb, "spec.unhealthyPodEvictionPolicy"),
            Some("AlwaysAllow"),
            "overlay {env}: during a Kinesis outage every pod is unready; with the default \
             policy a node drain blocks"
        );
        // Readiness still means what docs/OPERATIONS.md says: /readyz, unchanged.
        assert_eq!(
            get_str(r.container(), "readinessProbe.httpGet.path"),
            Some("/readyz"),
            "overlay {env}"
        );
    }
    let operations = read("docs/OPERATIONS.md");
    assert!(
        operations.contains("unhealthyPodEvictionPolicy: AlwaysAllow"),
        "docs/OPERATIONS.md explains the PodDisruptionBudget's eviction policy"
    );
}

#[test]
fn pods_get_no_api_token_and_leave_the_aws_token_paths_to_the_webhooks() {
    for env in overlays() {
        let r = Rendered::new(&env);
        let what = format!("overlay {env}");
        assert_eq!(
            get(r.pod(), "spec.automountServiceAccountToken").and_then(Yaml::as_bool),
            Some(false),
            "{what}: the pod mounts no Kubernetes API token"
        );
        let sa_name = get_str(r.pod(), "spec.serviceAccountName").expect("serviceAccountName");
        let sa = r.named("ServiceAccount", sa_name);
        assert_eq!(
            get(sa, "automountServiceAccountToken").and_then(Yaml::as_bool),
            Some(false),
            "{what}: the ServiceAccount does not hand out API tokens by default"
        );

        // The IRSA webhook projects role A's token at /var/run/secrets/eks.amazonaws.com and sets
        // AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE; the Pod Identity webhook does the same
        // under /var/run/secrets/pods.eks.amazonaws.com with AWS_CONTAINER_*. Neither depends on
        // automountServiceAccountToken, but a mount or a value of ours there would clash.
        for mount in seq(r.container(), "volumeMounts") {
            let path = get_str(mount, "mountPath").unwrap_or_default();
            assert!(
                !path.starts_with("/var/run/secrets"),
                "{what}: {path} is where the webhooks and the kubelet mount tokens"
            );
        }
        for var in seq(r.container(), "env") {
            let name = get_str(var, "name").unwrap_or_default();
            assert!(
                ![
                    "AWS_ROLE_ARN",
                    "AWS_WEB_IDENTITY_TOKEN_FILE",
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                ]
                .contains(&name),
                "{what}: {name} is the webhook's to set"
            );
        }
        // The projected token is readable by doka's non-root user through the pod's fsGroup.
        assert!(
            get(r.pod(), "spec.securityContext.fsGroup").is_some(),
            "{what}: without an fsGroup uid 10001 cannot read the projected AWS token"
        );
    }
}

#[test]
fn the_network_policy_allows_what_doka_needs_and_nothing_else() {
    let wanted: BTreeSet<(String, u16)> = EGRESS.iter().map(|(p, n)| (p.to_string(), *n)).collect();
    for env in overlays() {
        let r = Rendered::new(&env);
        let what = format!("overlay {env}");
        let policy = r.one("NetworkPolicy");
        assert!(
            r.selects_pods(policy, "spec.podSelector.matchLabels"),
            "{what}: the NetworkPolicy does not select doka's pods"
        );
        let types: BTreeSet<&str> = seq(policy, "spec.policyTypes")
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert_eq!(
            types,
            BTreeSet::from(["Egress", "Ingress"]),
            "{what}: policyTypes"
        );

        // Ingress: the metrics port of http.listen, nothing else.
        let port = r.http_port();
        let ingress = allowed(policy, "ingress");
        assert!(!ingress.is_empty(), "{what}: no ingress rule for /metrics");
        for (protocol, n, _) in &ingress {
            assert_eq!(
                (protocol.as_str(), *n),
                ("TCP", port),
                "{what}: ingress only to the metrics port (http.listen)"
            );
        }

        // Egress: DNS, MSK, HTTPS, and every broker port of the config among them.
        let egress: BTreeSet<(String, u16)> = allowed(policy, "egress")
            .into_iter()
            .map(|(p, n, _)| (p, n))
            .collect();
        assert_eq!(egress, wanted, "{what}: egress ports");
        let profile = r.env_var("DOKA_PROFILE").unwrap();
        let eff = effective_config(&r.mounted_config(), profile, &what);
        let brokers = list(&eff.config, "kafka.brokers");
        assert!(!brokers.is_empty(), "{what}: kafka.brokers");
        for broker in brokers {
            let port = listen_port(broker);
            assert!(
                egress.contains(&("TCP".to_owned(), port)),
                "{what}: broker {broker} is on a port the NetworkPolicy does not allow"
            );
        }
    }
}

#[test]
fn keda_scales_every_environment_on_its_lag_within_the_partition_count() {
    let copy = TempDeploy::new();
    let known = known_metrics();
    let prometheus = Prometheus::start(&[]);
    for env in ENVIRONMENTS {
        let dir = copy.stacked_overlay(env, &format!("{env}-keda"), &["keda"]);
        let r = copy.render(&format!("{env} with KEDA"), &dir);
        let what = format!("overlay {env} with the keda component");
        validate_strictly(&what, &r);

        let deployment = r.deployment();
        assert!(
            get(deployment, "spec.replicas").is_none(),
            "{what}: the Deployment keeps `replicas`, which would reset KEDA's count on apply"
        );
        let so = r.one("ScaledObject");
        assert_eq!(
            get_str(so, "apiVersion"),
            Some("keda.sh/v1alpha1"),
            "{what}"
        );
        assert_eq!(
            get_str(so, "metadata.namespace"),
            Some(r.namespace()),
            "{what}: the ScaledObject must be in the Deployment's namespace"
        );
        assert_eq!(
            get_str(so, "spec.scaleTargetRef.name"),
            get_str(deployment, "metadata.name"),
            "{what}: scaleTargetRef"
        );
        let min = get(so, "spec.minReplicaCount").and_then(Yaml::as_u64);
        let max = get(so, "spec.maxReplicaCount").and_then(Yaml::as_u64);
        assert!(
            min.is_some_and(|m| m >= 1),
            "{what}: minReplicaCount {min:?}: at least one member must consume and report lag"
        );
        let partitions: u64 = get(so, "metadata.annotations")
            .and_then(|a| key_str(a, "doka/partition-count"))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{what}: no doka/partition-count annotation"));
        let max = max.unwrap_or_else(|| panic!("{what}: no maxReplicaCount"));
        assert!(
            max <= partitions && max >= min.unwrap(),
            "{what}: maxReplicaCount {max} must be between minReplicaCount and the \
             partition count {partitions} (more members than partitions sit idle)"
        );

        let triggers = seq(so, "spec.triggers");
        assert_eq!(triggers.len(), 1, "{what}: one trigger");
        assert_eq!(get_str(&triggers[0], "type"), Some("prometheus"));
        let query = get_str(&triggers[0], "metadata.query").expect("a query");
        assert!(
            query.contains(&format!("namespace=\"{}\"", r.namespace())),
            "{what}: the query must read this environment's lag only: {query}"
        );
        let names = metric_names(query);
        assert_eq!(
            names,
            ["doka_consumer_lag_records"],
            "{what}: scale on doka's lag"
        );
        assert!(known.contains(&names[0]), "doka exports {}", names[0]);
        let answer = prometheus.query(query);
        assert!(
            answer["status"] == "success",
            "{what}: Prometheus refuses the trigger's query {query}:\n{answer}"
        );
        assert!(
            get_str(&triggers[0], "metadata.threshold")
                .and_then(|t| t.parse::<u64>().ok())
                .is_some_and(|t| t > 0),
            "{what}: a positive threshold"
        );
    }
    let readme = read("deploy/README.md");
    assert!(
        readme.contains("KEDA") && readme.contains("When to use"),
        "deploy/README.md says when to use the KEDA component"
    );
}

#[test]
fn pod_identity_replaces_the_irsa_annotation_in_every_environment() {
    let copy = TempDeploy::new();
    for env in ENVIRONMENTS {
        let plain = copy.render(env, &format!("deploy/kubernetes/overlays/{env}"));
        let dir = copy.stacked_overlay(env, &format!("{env}-pod-identity"), &["pod-identity"]);
        let r = copy.render(&format!("{env} with Pod Identity"), &dir);
        let what = format!("overlay {env} with the pod-identity component");
        validate_strictly(&what, &r);

        let sa_name = get_str(r.pod(), "spec.serviceAccountName").expect("serviceAccountName");
        let sa = r.named("ServiceAccount", sa_name);
        let annotations = get(sa, "metadata.annotations");
        for key in [
            "eks.amazonaws.com/role-arn",
            "eks.amazonaws.com/sts-regional-endpoints",
        ] {
            assert!(
                annotations.and_then(|a| a.get(key)).is_none(),
                "{what}: the ServiceAccount still has {key}: the IRSA webhook would inject a \
                 web identity token"
            );
        }
        assert!(
            plain
                .named("ServiceAccount", sa_name)
                .get("metadata")
                .and_then(|m| m.get("annotations"))
                .and_then(|a| key_str(a, "eks.amazonaws.com/role-arn"))
                .is_some(),
            "overlay {env} itself uses IRSA (the component is what removes it)"
        );

        // The agent is reachable on port 80, and only the agent.
        let policy = r.one("NetworkPolicy");
        let agent_rules: Vec<&Yaml> = seq(policy, "spec.egress")
            .iter()
            .filter(|rule| seq(rule, "ports").iter().any(|p| port_of(p).1 == 80))
            .collect();
        assert_eq!(agent_rules.len(), 1, "{what}: one egress rule to port 80");
        let cidrs: Vec<&str> = seq(agent_rules[0], "to")
            .iter()
            .filter_map(|peer| get_str(peer, "ipBlock.cidr"))
            .collect();
        assert_eq!(
            cidrs, POD_IDENTITY_AGENT,
            "{what}: port 80 only to the agent"
        );

        // Nothing else changes: the same objects, the same Deployment.
        assert_eq!(identities(&r), identities(&plain), "{what}: objects");
        assert_eq!(r.deployment(), plain.deployment(), "{what}: the Deployment");
    }
}
