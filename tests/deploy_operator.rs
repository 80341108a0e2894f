//! The Prometheus Operator component (deploy/kubernetes/components/prometheus-operator): opted in
//! from every environment's overlay, it renders a PodMonitor that scrapes the rendered pods on
//! their named port, a PrometheusRule whose rules are alerts.yaml's and pass promtool (check and
//! the unit tests of alerts.test.yaml), and the Grafana dashboard as a sidecar-labelled
//! ConfigMap. PodMonitor and PrometheusRule are custom resources without a schema in
//! kubernetes-validate: the rest of the output is validated strictly, these two field by field.
//! Also here: every alert links to its runbook section of docs/OPERATIONS.md, and no alert
//! depends on a particular scrape job.

mod manifests;
mod support;

use manifests::*;

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value as Json;
use serde_json::Value as Yaml;

const COMPONENT: &str = "../../components/prometheus-operator";

/// Every environment's overlay with the component opted in, rendered from a copy of deploy/.
fn with_the_component() -> Vec<Rendered> {
    let copy = TempDeploy::new();
    ENVIRONMENTS
        .iter()
        .map(|env| {
            let dir = format!("deploy/kubernetes/overlays/{env}");
            copy.add_components(&dir, &[COMPONENT]);
            copy.render(env, &dir)
        })
        .collect()
}

fn alerts_yaml() -> Yaml {
    serde_saphyr::from_str(&read("deploy/monitoring/alerts.yaml")).expect("alerts.yaml parses")
}

#[test]
fn the_component_is_opt_in() {
    for env in overlays() {
        let r = Rendered::new(&env);
        assert!(
            !r.objects.iter().any(is_custom_resource),
            "overlay {env} renders custom resources without opting in: clusters without the \
             operator's CRDs could not apply it"
        );
    }
}

#[test]
fn the_pod_monitor_scrapes_the_rendered_pods_on_their_metrics_port() {
    for r in with_the_component() {
        let what = format!("overlay {} with the prometheus-operator component", r.env);
        validate_strictly(&what, &r);

        let monitor = r.one("PodMonitor");
        assert_eq!(
            get_str(monitor, "apiVersion"),
            Some("monitoring.coreos.com/v1"),
            "{what}"
        );
        assert_eq!(
            get_str(monitor, "metadata.namespace"),
            Some(r.namespace()),
            "{what}: the PodMonitor selects pods of its own namespace: it must be doka's"
        );
        assert!(
            get(monitor, "spec.namespaceSelector").is_none(),
            "{what}: no namespaceSelector: another environment's pods are not this monitor's"
        );
        assert!(
            r.selects_pods(monitor, "spec.selector.matchLabels"),
            "{what}: the PodMonitor's selector does not match the Deployment's pod labels"
        );
        let endpoints = seq(monitor, "spec.podMetricsEndpoints");
        assert_eq!(endpoints.len(), 1, "{what}: one endpoint");
        let port_name = get_str(&endpoints[0], "port").expect("a named port");
        assert_eq!(
            r.port_number(&Yaml::from(port_name)),
            r.http_port(),
            "{what}: the monitor's port {port_name} is not http.listen's"
        );
        assert_eq!(get_str(&endpoints[0], "path"), Some("/metrics"), "{what}");
        // The Service names the same port the same way, for scrapers of endpoints.
        let service = r.one("Service");
        assert!(
            seq(service, "spec.ports")
                .iter()
                .any(|p| get_str(p, "name") == Some(port_name)),
            "{what}: the Service has no port named {port_name}"
        );

        // The dashboard, for Grafana's sidecar.
        let dashboard = r.named("ConfigMap", "doka-dashboard");
        assert_eq!(
            get(dashboard, "metadata.labels").and_then(|l| key_str(l, "grafana_dashboard")),
            Some("1"),
            "{what}: the dashboard ConfigMap needs the sidecar's label grafana_dashboard: \"1\""
        );
        let json = get(dashboard, "data")
            .and_then(|d| key_str(d, "doka.json"))
            .expect("the dashboard's key doka.json");
        let shipped: Json =
            serde_json::from_str(&read("deploy/monitoring/dashboard.json")).unwrap();
        assert_eq!(
            serde_json::from_str::<Json>(json).expect("the dashboard parses"),
            shipped,
            "{what}: the ConfigMap carries deploy/monitoring/dashboard.json"
        );
    }
}

#[test]
fn the_prometheus_rule_carries_alerts_yaml_and_passes_promtool() {
    let promtool = tool("DOKA_TEST_PROMTOOL");
    let alerts = alerts_yaml();
    for r in with_the_component() {
        let what = format!("overlay {} with the prometheus-operator component", r.env);
        let rule = r.one("PrometheusRule");
        assert_eq!(
            get_str(rule, "metadata.namespace"),
            Some(r.namespace()),
            "{what}"
        );
        let spec = must(rule, "spec", &what);
        assert_eq!(
            get(spec, "groups"),
            get(&alerts, "groups"),
            "{what}: the PrometheusRule's rules are not alerts.yaml's: run \
             deploy/monitoring/prometheusrule.sh"
        );

        // The rules as the operator hands them to Prometheus, with the unit tests beside them.
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("alerts.yaml"),
            serde_saphyr::to_string(spec).expect("YAML"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("alerts.test.yaml"),
            read("deploy/monitoring/alerts.test.yaml"),
        )
        .unwrap();
        // (run_ok runs in the repository root: the paths are absolute.)
        let checked = run_ok(
            Command::new(&promtool)
                .args(["check", "rules"])
                .arg(dir.path().join("alerts.yaml")),
            None,
        );
        let count = seq(&alerts, "groups")
            .iter()
            .map(|g| seq(g, "rules").len())
            .sum::<usize>();
        assert!(
            checked.contains(&format!("SUCCESS: {count} rules found")),
            "{what}: promtool check rules:\n{checked}"
        );
        let tested = run_ok(
            Command::new(&promtool)
                .args(["test", "rules"])
                .arg(dir.path().join("alerts.test.yaml")),
            None,
        );
        assert!(
            tested.contains("SUCCESS"),
            "{what}: promtool test rules:\n{tested}"
        );
    }
}

#[test]
fn the_prometheus_rule_file_is_generated_from_alerts_yaml() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("prometheusrule.yaml");
    run_ok(
        Command::new("deploy/monitoring/prometheusrule.sh").arg(&out),
        None,
    );
    let generated = std::fs::read_to_string(&out).expect("generated file");
    assert!(
        generated == read("deploy/monitoring/prometheusrule.yaml"),
        "deploy/monitoring/prometheusrule.yaml is stale: run deploy/monitoring/prometheusrule.sh"
    );
    let parsed: Yaml = serde_saphyr::from_str(&generated).expect("the PrometheusRule parses");
    assert_eq!(get_str(&parsed, "kind"), Some("PrometheusRule"));
    assert_eq!(get(&parsed, "spec.groups"), get(&alerts_yaml(), "groups"));
}

/// GitHub's anchor for a Markdown heading: lower case, spaces to dashes, punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The sections of a Markdown file by anchor: each heading's text up to the next heading.
fn sections(markdown: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in markdown.lines() {
        if let Some(heading) = line.strip_prefix('#').map(|h| h.trim_start_matches('#')) {
            out.push((anchor(heading), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

#[test]
fn every_alert_links_to_its_runbook_and_needs_no_scrape_job() {
    let operations = read("docs/OPERATIONS.md");
    let sections = sections(&operations);
    let rules: Vec<Yaml> = seq(&alerts_yaml(), "groups")
        .iter()
        .flat_map(|g| seq(g, "rules").to_vec())
        .collect();
    let mut anchors = BTreeSet::new();
    for rule in &rules {
        let name = get_str(rule, "alert").expect("an alerting rule");
        let url = get(rule, "annotations")
            .and_then(|a| key_str(a, "runbook_url"))
            .unwrap_or_else(|| panic!("{name}: no runbook_url"));
        let (page, fragment) = url
            .split_once('#')
            .unwrap_or_else(|| panic!("{name}: {url} points to no section"));
        assert!(
            page.ends_with("/docs/OPERATIONS.md"),
            "{name}: {url} is not docs/OPERATIONS.md"
        );
        let body = sections
            .iter()
            .find(|(a, _)| a == fragment)
            .map(|(_, body)| body)
            .unwrap_or_else(|| panic!("{name}: docs/OPERATIONS.md has no section #{fragment}"));
        assert!(
            body.contains("doka check")
                && body.lines().filter(|l| !l.trim().is_empty()).count() >= 3,
            "{name}: its runbook section #{fragment} should say what to do, from `doka check` on"
        );
        assert!(
            anchors.insert(fragment.to_owned()),
            "{name}: a runbook shared with another alert"
        );

        // No scrape job is assumed: the operator's PodMonitor names jobs <namespace>/doka.
        let expr = get_str(rule, "expr").expect("expr");
        assert!(
            !expr.contains("job="),
            "{name}: `{expr}` depends on a hand-written scrape job's name"
        );
    }
}

#[test]
fn github_anchors_are_computed_like_github() {
    assert_eq!(anchor(" DokaNothingDelivered"), "dokanothingdelivered");
    assert_eq!(
        anchor("PodDisruptionBudget: why `AlwaysAllow`"),
        "poddisruptionbudget-why-alwaysallow"
    );
}
