//! The IAM examples under deploy/iam read as policy documents and checked against the shipped
//! deployment: the service account, namespace and role of prod's rendered overlay, and the topics,
//! group and stream of prod's config (IRSA and EKS Pod Identity alike).

mod manifests;
mod support;

use manifests::*;

use serde_json::Value as Json;
use serde_json::Value as Yaml;

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
    let raw: Yaml = serde_saphyr::from_str(&r.mounted_config()).unwrap();
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
            "role-a-glue-schema-registry-policy.json",
            "role-a-pod-identity-trust.json",
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
    // Decoding with the Glue registry: GetSchemaVersion on its schemas, GetRegistry for the check.
    let glue = policy("role-a-glue-schema-registry-policy.json");
    for action in ["glue:GetSchemaVersion", "glue:GetRegistry"] {
        let resources = resources_for(&glue, action);
        assert!(
            resources
                .iter()
                .any(|r| r.starts_with("arn:aws:glue:") && r.contains(":registry/")),
            "{action}: {resources:?}"
        );
    }
    assert!(
        resources_for(&glue, "glue:GetSchemaVersion")
            .iter()
            .any(|r| r.contains(":schema/")),
        "GetSchemaVersion needs the registry's schemas"
    );

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

/// EKS Pod Identity, the other way to give the pod role A: role A trusts the Pod Identity service
/// for prod's namespace and ServiceAccount (session tags), role B accepts the session tags Pod
/// Identity passes along, and the README gives the association command for the same names.
#[test]
fn the_pod_identity_trust_and_association_name_the_shipped_service_account() {
    let r = Rendered::new("prod");
    let sa = r.one("ServiceAccount");
    let namespace = get_str(sa, "metadata.namespace").expect("prod's namespace");
    let sa_name = get_str(sa, "metadata.name").unwrap();
    let role_a = get(sa, "metadata.annotations")
        .and_then(|a| key_str(a, "eks.amazonaws.com/role-arn"))
        .expect("prod's role A");

    let trust = policy("role-a-pod-identity-trust.json");
    let s = trust
        .iter()
        .find(|s| s["Principal"]["Service"] == "pods.eks.amazonaws.com")
        .expect("role A trusts pods.eks.amazonaws.com");
    let actions = strings(&s["Action"]);
    for action in ["sts:AssumeRole", "sts:TagSession"] {
        assert!(
            actions.contains(&action),
            "Pod Identity needs {action} in role A's trust, got {actions:?}"
        );
    }
    let equals = &s["Condition"]["StringEquals"];
    assert_eq!(
        equals["aws:RequestTag/kubernetes-namespace"], namespace,
        "role A's Pod Identity trust must name the namespace the manifests use"
    );
    assert_eq!(
        equals["aws:RequestTag/kubernetes-service-account"], sa_name,
        "role A's Pod Identity trust must name the ServiceAccount the manifests create"
    );

    // Pod Identity's session tags are transitive: AssumeRole into role B carries them, which
    // role B's trust must allow with sts:TagSession.
    let trust_b = policy("role-b-trust.json");
    assert!(
        trust_b
            .iter()
            .any(|s| strings(&s["Action"]).contains(&"sts:TagSession")),
        "role B's trust must allow sts:TagSession for role A's Pod Identity sessions"
    );

    let readme = read("deploy/iam/README.md");
    let association = readme
        .lines()
        .skip_while(|l| !l.contains("aws eks create-pod-identity-association"))
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("```"))
        .collect::<Vec<_>>()
        .join(" ");
    for part in [
        format!("--namespace {namespace}"),
        format!("--service-account {sa_name}"),
        format!("--role-arn {role_a}"),
    ] {
        assert!(
            association.contains(&part),
            "deploy/iam/README.md: the association command should say `{part}`, got: {association}"
        );
    }
    assert!(
        readme.contains("role-a-pod-identity-trust.json"),
        "deploy/iam/README.md says when role A's Pod Identity trust policy is used"
    );
}
