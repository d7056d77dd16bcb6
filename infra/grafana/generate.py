#!/usr/bin/env python3
"""Writes the Grafana dashboards under infra/grafana/dashboards/ from the panel lists below.

The dashboards are generated, not hand-edited, so that every query names metrics the
services really export: tests/e2e/test_monitoring.py queries a real Prometheus scraping a
`colony up --monitoring` cluster with every expression of the dashboards tagged
``colony-services`` and fails on an empty answer.  ``colony-infrastructure`` needs the
compose file's exporters (prometheus-nats-exporter, HAProxy) and is not part of that test.

Run ``python infra/grafana/generate.py`` after changing a panel; a unit test checks the JSON
files are what this script writes.  ``$role`` in an expression is the per-role dashboard's
variable (a regex over the job's role part).
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).parent / "dashboards"
DS = {"type": "prometheus", "uid": "colony-prometheus"}
SERVICES = "colony-services"  # tag of the dashboards the Prometheus test checks

# (title, kind, [(expr, legend)], unit, description); kind: "stat" or "timeseries".
# A title alone starts a row.
OVERVIEW = [
    "Cluster",
    ("Instances up per role", "stat", [('sum by (job) (up{job=~"colony-.*"})', "{{job}}")], "none",
     "Instances Prometheus reaches on their ops listener (/metrics)."),
    ("Instances by role and state", "timeseries", [('sum by (role, state) (colony_cluster_nodes)', "{{role}} {{state}}")],
     "none", "As the active controller sees the NODES bucket (only the active controller exports it)."),
    ("Controller epoch", "stat", [('max(colony_node_controller_epoch)', "epoch")], "none",
     "The controller lease's epoch as the instances last saw it; it grows at every election."),
    ("Active controller", "stat", [('max by (instance) (colony_cluster_controller_active)', "{{instance}}")], "none",
     "1 on the controller instance holding the lease."),
    ("Elections (1h)", "stat", [('sum(increase(colony_cluster_elections_total[1h]))', "elections")], "none",
     "Controller leases taken in the last hour (vacant, expired or taken over)."),
    ("Instances declared FAILED (1h)", "stat", [('sum(increase(colony_cluster_nodes_failed_total[1h]))', "failed")],
     "none", "Silent instances the controller declared FAILED."),
    ("Active work per instance", "timeseries", [('colony_node_active_work', "{{node}}")], "none",
     "Sessions, jobs or requests in progress; a draining instance is empty when this reaches 0."),
    "Admin API (RED)",
    ("Requests / s by route", "timeseries",
     [('sum by (route) (rate(colony_api_requests_total[5m]))', "{{route}}")], "reqps", "Rate."),
    ("Errors / s (5xx)", "timeseries",
     [('sum(rate(colony_api_requests_total{status=~"5.."}[5m])) or vector(0)', "5xx")], "reqps", "Errors."),
    ("Latency p95 by route", "timeseries",
     [('histogram_quantile(0.95, sum by (le, route) (rate(colony_api_request_duration_seconds_bucket[5m])))', "{{route}}")],
     "s", "Duration."),
    ("Requests in flight", "timeseries", [('sum(colony_api_requests_in_flight)', "in flight")], "none", ""),
    "Bus requests answered (RED): auth, directory, recipients",
    ("Requests / s by subject", "timeseries",
     [('sum by (subject) (rate(colony_bus_requests_total[5m]))', "{{subject}}")], "reqps", "Rate."),
    ("Refused or failed / s", "timeseries",
     [('sum by (subject, outcome) (rate(colony_bus_requests_total{outcome!="ok"}[5m])) or vector(0)', "{{subject}} {{outcome}}")],
     "reqps", "bad_request: did not parse; error: the handler raised."),
    ("Latency p95 by subject", "timeseries",
     [('histogram_quantile(0.95, sum by (le, subject) (rate(colony_bus_request_duration_seconds_bucket[5m])))', "{{subject}}")],
     "s", "Duration."),
    "Queue consumers (RED)",
    ("Jobs / s by queue and outcome", "timeseries",
     [('sum by (queue, outcome) (rate(colony_queue_jobs_total[5m]))', "{{queue}} {{outcome}}")], "none",
     "done, retry (back-off) or dead_letter."),
    ("Handler time p95", "timeseries",
     [('histogram_quantile(0.95, sum by (le, queue) (rate(colony_queue_job_seconds_bucket[5m])))', "{{queue}}")], "s", ""),
    ("Jobs in flight", "timeseries", [('sum by (queue) (colony_queue_jobs_in_flight)', "{{queue}}")], "none", ""),
    "Projections (RED): the read model, usage and audit",
    ("Events applied / s", "timeseries",
     [('sum by (projection) (rate(colony_projection_events_total[5m]))', "{{projection}}")], "none",
     "PROVISIONING, USAGE and AUDIT events the projectors applied."),
    ("Failed batches / s", "timeseries",
     [('sum by (projection) (rate(colony_projection_batch_failures_total[5m]))', "{{projection}}")], "none",
     "A failed batch restarts its projection from the checkpoint."),
    ("Batch time p95", "timeseries",
     [('histogram_quantile(0.95, sum by (le, projection) (rate(colony_projection_batch_seconds_bucket[5m])))',
       "{{projection}}")], "s", ""),
    ("Stream position", "timeseries", [('max by (projection) (colony_projection_position)', "{{projection}}")],
     "none", "Stream sequence each projection has applied (the highest among projectors)."),
    "Processes",
    ("Resident memory", "timeseries", [('process_resident_memory_bytes{job=~"colony-.*"}', "{{instance}} {{job}}")],
     "bytes", ""),
    ("CPU", "timeseries", [('rate(process_cpu_seconds_total{job=~"colony-.*"}[5m])', "{{instance}} {{job}}")],
     "percentunit", ""),
    ("Background tasks running", "timeseries", [('colony_tasks_running', "{{instance}} {{job}}")], "none",
     "Owned background tasks; a drop means a task ended (see task failures)."),
]

ROLES = [
    "Instances of the role",
    ("Up", "stat", [('up{job=~"colony-($role)"}', "{{instance}}")], "none", ""),
    ("State (1 = current)", "timeseries", [('colony_node_state{role=~"$role"} == 1', "{{node}} {{state}}")], "none",
     "Each instance's own state gauge."),
    ("Active work", "timeseries", [('colony_node_active_work{role=~"$role"}', "{{node}}")], "none", ""),
    ("Resident memory", "timeseries", [('process_resident_memory_bytes{job=~"colony-($role)"}', "{{instance}}")],
     "bytes", ""),
    ("CPU", "timeseries", [('rate(process_cpu_seconds_total{job=~"colony-($role)"}[5m])', "{{instance}}")],
     "percentunit", ""),
    ("Open file descriptors", "timeseries", [('process_open_fds{job=~"colony-($role)"}', "{{instance}}")], "none", ""),
    ("Uptime", "stat", [('time() - process_start_time_seconds{job=~"colony-($role)"}', "{{instance}}")], "s", ""),
]

MAIL_SIP = [
    "Mail: SMTP in (edge)",
    ("Connections / s", "timeseries", [('sum(rate(colony_smtp_connections_total[5m]))', "connections")], "cps", ""),
    ("Messages accepted / s", "timeseries", [('sum(rate(colony_smtp_accepted_messages_total[5m]))', "messages")],
     "none", ""),
    ("Bytes accepted / s", "timeseries", [('sum(rate(colony_smtp_accepted_bytes_total[5m]))', "bytes")], "Bps", ""),
    ("250 after DATA, p95", "timeseries",
     [('histogram_quantile(0.95, sum by (le) (rate(colony_smtp_ack_seconds_bucket[5m])))', "p95")], "s",
     "Time from the end of DATA to the 250 (the message is in the stream)."),
    ("Refusals / s by stage and reason", "timeseries",
     [('sum by (stage, reason) (rate(colony_smtp_rejected_total[5m]))', "{{stage}} {{reason}}")], "none",
     "SMTP answers that refused a command (unknown recipient, policy, size, ...)."),
    ("Submission AUTH / s by result", "timeseries",
     [('sum by (result) (rate(colony_submission_auth_total[5m]))', "{{result}}")], "none",
     "AUTH on the submission ports (587, 465), checked over the bus."),
    "Mail: SMTP out (edge)",
    ("Outbound recipients / s by result", "timeseries",
     [('sum by (result) (rate(colony_outbound_recipients_total[5m]))', "{{result}}")], "none",
     "delivered, deferred (retried on the back-off) or failed (bounced with a DSN)."),
    ("Outbound SMTP sessions / s", "timeseries",
     [('sum by (kind) (rate(colony_outbound_connections_total[5m]))', "{{kind}}")], "none",
     "new, reused (kept open from an earlier delivery) or stale (a kept one found dead)."),
    "Mail: IMAP and POP3 (edge)",
    ("Logins / s by protocol and outcome", "timeseries",
     [('sum by (protocol, outcome) (rate(colony_access_logins_total[5m]))', "{{protocol}} {{outcome}}")], "none",
     "Log-ins at the edge, which then proxies the session to the account's mail store."),
    ("Sessions open by protocol", "timeseries", [('sum by (protocol) (colony_sessions)', "{{protocol}}")], "none",
     "Connections open on the edges (SMTP, submission, IMAP, POP3) and SIP/TCP flows."),
    "Mail: mail stores",
    ("Messages stored / s", "timeseries", [('sum(rate(colony_mailstore_messages_stored_total[5m]))', "stored")],
     "none", ""),
    ("Open accounts", "timeseries", [('sum by (instance) (colony_mailstore_open_accounts)', "{{instance}}")], "none", ""),
    ("IMAP sessions", "timeseries", [('sum by (instance) (colony_mailstore_imap_sessions)', "{{instance}}")], "none", ""),
    ("Delivery p95", "timeseries",
     [('histogram_quantile(0.95, sum by (le) (rate(colony_mailstore_delivery_seconds_bucket[5m])))', "p95")], "s", ""),
    ("Duplicates, over quota, fenced / s", "timeseries", [
        ('sum(rate(colony_mailstore_duplicates_total[5m]))', "duplicates"),
        ('sum(rate(colony_mailstore_over_quota_total[5m]))', "over quota"),
        ('sum(rate(colony_mailstore_fenced_total[5m]))', "fenced")], "none", ""),
    "SIP (farm)",
    ("Registrations / s", "timeseries", [('sum(rate(colony_sip_registrations_total[5m]))', "registrations")], "none", ""),
    ("Relays / s", "timeseries", [('sum(rate(colony_sip_relays_total[5m]))', "relays")], "none", ""),
    ("Retransmissions / s", "timeseries", [('sum(rate(colony_sip_retransmissions_total[5m]))', "retransmissions")],
     "none", ""),
    ("Requests / s by method", "timeseries",
     [('sum by (method) (rate(colony_sip_requests_total[5m]))', "{{method}}")], "none", ""),
    ("Final answers / s by code", "timeseries",
     [('sum by (code) (rate(colony_sip_answers_total[5m]))', "{{code}}")], "none",
     "Answers a member made itself (401 challenges, 200 to REGISTER, 404, ...); proxied answers are not here."),
]

INFRASTRUCTURE = [
    "NATS",
    ("Client connections", "timeseries", [('gnatsd_varz_connections', "{{server}}")], "none", ""),
    ("Messages in / s", "timeseries", [('rate(gnatsd_varz_in_msgs[1m])', "{{server}}")], "none", ""),
    ("Routes", "stat", [('gnatsd_varz_routes', "{{server}}")], "none", ""),
    "Balancer (HAProxy)",
    ("Ready instances per backend", "stat", [('haproxy_backend_active_servers', "{{proxy}}")], "none", ""),
    ("Current sessions per frontend", "timeseries", [('haproxy_frontend_current_sessions', "{{proxy}}")], "none", ""),
    ("New connections / s", "timeseries", [('rate(haproxy_frontend_connections_total[1m])', "{{proxy}}")], "none", ""),
]

ROLE_VARIABLE = {
    "name": "role", "label": "Role", "type": "query", "datasource": DS, "multi": True, "includeAll": True,
    "allValue": ".*", "refresh": 2, "current": {"text": "All", "value": "$__all"},
    "query": {"query": 'label_values(colony_node_state, role)', "refId": "role"},
    "definition": "label_values(colony_node_state, role)",
}


def dashboard(uid: str, title: str, panels: list, tags: list[str], variables: list[dict] | None = None) -> dict:
    out, y, x, next_id = [], 0, 0, 1
    for item in panels:
        if isinstance(item, str):
            y += 8 if x else 0
            x = 0
            out.append({"id": next_id, "type": "row", "title": item, "collapsed": False,
                        "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
            y += 1
        else:
            name, kind, exprs, unit, description = item
            if x + 8 > 24:
                x, y = 0, y + 8
            out.append({
                "id": next_id, "type": kind, "title": name, "description": description, "datasource": DS,
                "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
                "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
                            for i, (expr, legend) in enumerate(exprs)],
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
                if kind == "stat" else {"legend": {"displayMode": "list", "placement": "bottom"}},
            })
            x += 8
        next_id += 1
    return {"uid": uid, "title": title, "tags": tags, "timezone": "utc", "schemaVersion": 39, "version": 1,
            "editable": False, "refresh": "30s", "time": {"from": "now-1h", "to": "now"},
            "templating": {"list": variables or []}, "annotations": {"list": []}, "panels": out}


def dashboards() -> dict[str, dict]:
    return {
        "colony-overview.json": dashboard("colony-overview", "Colony overview", OVERVIEW, ["colony", SERVICES]),
        "colony-roles.json": dashboard("colony-roles", "Colony per role", ROLES, ["colony", SERVICES], [ROLE_VARIABLE]),
        "colony-mail-sip.json": dashboard("colony-mail-sip", "Colony mail and SIP", MAIL_SIP, ["colony", SERVICES]),
        "colony-infrastructure.json": dashboard("colony-infrastructure", "Colony infrastructure (compose)",
                                                INFRASTRUCTURE, ["colony"]),
    }


def render(d: dict) -> str:
    return json.dumps(d, indent=2) + "\n"


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    for name, d in dashboards().items():
        (OUT / name).write_text(render(d))
        print("wrote", OUT / name)
