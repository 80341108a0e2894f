#!/usr/bin/env bash
# Writes prometheusrule.yaml: alerts.yaml (the one source of the rules) wrapped in a PrometheusRule
# for the Prometheus Operator, comments and all. Run it after every edit of alerts.yaml:
#   deploy/monitoring/prometheusrule.sh            # writes deploy/monitoring/prometheusrule.yaml
#   deploy/monitoring/prometheusrule.sh OUT.yaml   # writes elsewhere (the tests compare)
# tests/deploy_operator.rs fails while prometheusrule.yaml and alerts.yaml disagree.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/prometheusrule.yaml}
{
  cat <<'HEADER'
# GENERATED from alerts.yaml by prometheusrule.sh: edit alerts.yaml, then run
# deploy/monitoring/prometheusrule.sh. Shipped by the Kustomize component
# deploy/kubernetes/components/prometheus-operator. A Prometheus picks PrometheusRules by its
# ruleSelector (kube-prometheus-stack: `release: <its release name>` unless
# ruleSelectorNilUsesHelmValues is false): add that label in the overlay when yours does.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: doka
spec:
HEADER
  # Blank lines stay blank: no trailing spaces inside block scalars.
  sed -e 's/^\(.\)/  \1/' "$here/alerts.yaml"
} >"$out.tmp"
mv "$out.tmp" "$out"
