//! The monitoring artefacts under deploy/monitoring: the alert rules pass promtool and their unit
//! tests, say what to do and link to their runbook, use only metrics doka exports; the Grafana
//! dashboard has a query in every panel and a real Prometheus server parses each one.

mod manifests;
mod support;

use manifests::*;
use support::prometheus::Prometheus;

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value as Json;
use serde_json::Value as Yaml;

// ---------------------------------------------------------------------------------------------
// Monitoring

fn alert_rules() -> Vec<Yaml> {
    let rules: Yaml = serde_saphyr::from_str(&read("deploy/monitoring/alerts.yaml")).unwrap();
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
        "doka_oldest_undelivered_record_age_seconds",
        "up",
    ] {
        assert!(used.contains(metric), "no alert rule uses {metric}");
    }

    // The unit tests cover the alerts that matter most, firing and, where it counts, quiet.
    let tests: Yaml = serde_saphyr::from_str(&read("deploy/monitoring/alerts.test.yaml")).unwrap();
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
        "DokaDataStale",
    ] {
        assert!(
            firing.contains(alert),
            "alerts.test.yaml: no case where {alert} fires"
        );
    }
    for alert in ["DokaNothingDelivered", "DokaDataStale", "DokaTargetDown"] {
        assert!(
            quiet.contains(alert),
            "alerts.test.yaml: no case where {alert} stays quiet (delivering, fresh, another \
             container down)"
        );
    }
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
        "doka_record_age_seconds_bucket",
        "doka_oldest_undelivered_record_age_seconds",
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
