"""Alerts, SLOs and the dashboard (infra/monitoring.tf, alerts.tf, slo.tf, workbook.tf) against
what they are meant to be: thresholds, windows, severities and routing; the SLO burn-rate
arithmetic; the availability probe; and every metric name and label their KQL reads against
what the binary emits (src/telemetry/metrics.rs, parsed at test time, so a renamed metric fails
here before it silences an alert). docs/operations.md, the runbook, must cover every alert and
state the same arithmetic."""

from __future__ import annotations

import re
import textwrap
from fractions import Fraction
from typing import Any

import pytest

from conftest import ROOT, block, expr

METRICS_RS = ROOT / "src" / "telemetry" / "metrics.rs"
OPERATIONS_MD = ROOT / "docs" / "operations.md"
ACTION_GROUP = "${azurerm_monitor_action_group.main.id}"
APP_INSIGHTS = "${azurerm_application_insights.main.id}"
APP_ROLE = "data-ingestion-api"
LOG_ALERT = "azurerm_monitor_scheduled_query_rules_alert_v2"
METRIC_ALERT = "azurerm_monitor_metric_alert"
SLO_PERIOD_HOURS = 30 * 24


# --------------------------------------------------------------------------------------------
# Helpers: heredocs, interpolation of locals and variables' defaults, ISO 8601 durations.
# --------------------------------------------------------------------------------------------


def heredoc(text: str) -> str:
    """The body of a `<<-KQL ... KQL` string as python-hcl2 keeps it, dedented like Terraform."""
    match = re.fullmatch(r"<<-?(\w+)\n(.*)\n\s*\1", text, re.DOTALL)
    return textwrap.dedent(match.group(2)) if match else text


def _lookup(tf, path: str) -> Any:
    """local.a.b / var.x (its default), or None when the expression is anything else."""
    match = re.fullmatch(r"(local|var)\.([\w.]+)", path.strip())
    if not match:
        return None
    kind, dotted = match.groups()
    parts = dotted.split(".")
    if kind == "var":
        value = tf.variables[parts[0]].get("default")
    else:
        value = tf.locals
        for part in parts:
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
    return value


def render(tf, text: str, depth: int = 0) -> str:
    """`text` with every ${local...} and ${var...} replaced by its value (variables by their
    default), recursively; resource attributes and function calls stay as they are."""
    assert depth < 10, "interpolation nests too deep"
    text = heredoc(text)

    def substitute(match: re.Match) -> str:
        value = _lookup(tf, match.group(1))
        if value is None:
            return match.group(0)
        if isinstance(value, str):
            whole = re.fullmatch(r"\$\{([^{}]+)\}", value)
            if whole and _lookup(tf, whole.group(1)) is not None:
                return render(tf, whole.group(0), depth + 1)
            return render(tf, value, depth + 1)
        return str(value)

    return re.sub(r"\$\{([^{}]+)\}", substitute, text)


def value_of(tf, value: Any) -> Any:
    """A literal, or the value of a ${local.x} / ${var.x} expression."""
    if isinstance(value, str) and value.startswith("${"):
        found = _lookup(tf, expr(value))
        assert found is not None, f"cannot resolve {value}"
        return value_of(tf, found)
    return value


def minutes(duration: str) -> int:
    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?", duration)
    assert match and any(match.groups()), f"not an ISO 8601 duration in hours/minutes: {duration}"
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def log_alerts(tf) -> dict[str, dict]:
    return tf.resources.get(LOG_ALERT, {})


def metric_alerts(tf) -> dict[str, dict]:
    return tf.resources.get(METRIC_ALERT, {})


def criteria(body: dict) -> dict:
    return block(body, "criteria")


# The SLO burn-rate alerts: one resource, for_each over local.slo_burn_alerts, a for expression
# over setproduct(slos, burn_rates). Rebuilt here from the two maps and the query template.


def slo_query_template(tf) -> str:
    source = tf.locals["slo_burn_alerts"]
    match = re.search(r'query = "(<<-KQL\n.*?\n\s*KQL)"', source, re.DOTALL)
    assert match, "local.slo_burn_alerts must build `query` from a <<-KQL heredoc"
    return match.group(1)


def slo_burn_alerts(tf) -> dict[str, dict]:
    alerts = {}
    for slo_name, slo in tf.locals["slos"].items():
        for burn_name, burn in tf.locals["burn_rates"].items():
            template = slo_query_template(tf).replace("[pair[0]]", f".{slo_name}").replace("[pair[1]]", f".{burn_name}")
            target = Fraction(str(value_of(tf, slo["target"])))
            alerts[f"{slo_name}-{burn_name}"] = {
                "slo": slo_name,
                "burn": burn_name,
                "target": target,
                "burn_rate": Fraction(str(burn["burn_rate"])),
                "threshold": Fraction(str(burn["burn_rate"])) * (1 - target),
                "long_window_hours": burn["long_window_hours"],
                "short_window_minutes": burn["short_window_minutes"],
                "evaluation_frequency": burn["evaluation_frequency"],
                "severity": burn["severity"],
                "response": burn["response"],
                "query": render(tf, template),
            }
    return alerts


# --------------------------------------------------------------------------------------------
# What the binary emits: src/telemetry/metrics.rs.
# --------------------------------------------------------------------------------------------


def emitted_metric_names(source: str) -> set[str]:
    return set(re.findall(r'name: "([a-z_]+)"', source))


def emitted_metric_labels(source: str) -> dict[str, set[str]]:
    """name -> label names, from each `Def { ... name: "...", ... labels: &[...] ... }`."""
    labels = {}
    for body in re.findall(r"\bDef\s*\{(.*?)\}\s*;", source, re.DOTALL):
        name = re.search(r'name: "([a-z_]+)"', body)
        declared = re.search(r"labels:\s*&\[([^\]]*)\]", body)
        if name and declared:
            labels[name.group(1)] = set(re.findall(r'"([^"]+)"', declared.group(1)))
    return labels


@pytest.fixture(scope="session")
def metrics_rs() -> str:
    assert METRICS_RS.is_file(), (
        "src/telemetry/metrics.rs is missing: the alerts' metric names are checked against the "
        '`name: "..."` definitions in it'
    )
    return METRICS_RS.read_text()


@pytest.fixture(scope="session")
def emitted(metrics_rs) -> set[str]:
    names = emitted_metric_names(metrics_rs)
    assert names, 'found no `name: "..."` metric definitions in src/telemetry/metrics.rs'
    return names


# --------------------------------------------------------------------------------------------
# Every KQL text in infra/, rendered.
# --------------------------------------------------------------------------------------------


def kql_texts(tf) -> dict[str, str]:
    texts = {}
    for name, body in log_alerts(tf).items():
        if "for_each" in body:
            continue
        texts[f"alert {name}"] = render(tf, criteria(body)["query"])
    for key, alert in slo_burn_alerts(tf).items():
        texts[f"slo alert {key}"] = alert["query"]
    for key, slo in tf.locals["slos"].items():
        texts[f"slo events {key}"] = render(tf, slo["events"])
    for key, query in tf.locals["workbook_queries"].items():
        texts[f"workbook {key}"] = render(tf, query)
    return texts


def metric_names_in(kql: str) -> set[str]:
    """The metric names a query filters customMetrics on (name == "x", name in ("x", "y"))."""
    names = set(re.findall(r'\bname\s*(?:==|=~)\s*"([^"$]+)"', kql))
    for group in re.findall(r"\bname\s+in\s*\(([^)]*)\)", kql):
        names.update(re.findall(r'"([^"$]+)"', group))
    return names


def dimensions_in(kql: str) -> set[str]:
    return set(re.findall(r"customDimensions\.(\w+)", kql)) | set(re.findall(r"customDimensions\[\"(\w+)\"\]", kql))


def custom_metric_queries(tf) -> dict[str, str]:
    return {key: text for key, text in kql_texts(tf).items() if "customMetrics" in text}


def test_the_queries_read_custom_metrics_at_all(tf):
    """Guards the tests below against finding nothing to check."""
    queries = custom_metric_queries(tf)
    assert len(queries) >= 8, sorted(queries)
    assert {"alert error_rate", "alert processing_time", "alert app_dead_letters", "slo events message_success"} <= set(queries)


def test_every_metric_name_the_alerts_slos_and_workbook_read_is_one_the_binary_emits(tf, emitted):
    unknown = {}
    for key, kql in custom_metric_queries(tf).items():
        names = metric_names_in(kql)
        assert names, f"{key} reads customMetrics without filtering on a metric name:\n{kql}"
        missing = names - emitted
        if missing:
            unknown[key] = sorted(missing)
    assert not unknown, (
        f"these queries read metrics that src/telemetry/metrics.rs does not define: {unknown}; "
        f"it defines {sorted(emitted)}"
    )


def test_every_custom_dimension_the_queries_read_is_a_label_of_their_metrics(tf, metrics_rs, emitted):
    labels = emitted_metric_labels(metrics_rs)
    assert set(labels) == emitted, "could not read `labels: &[...]` for every metric in src/telemetry/metrics.rs"
    wrong = {}
    for key, kql in custom_metric_queries(tf).items():
        allowed = set().union(*(labels.get(name, set()) for name in metric_names_in(kql)))
        extra = dimensions_in(kql) - allowed
        if extra:
            wrong[key] = sorted(extra)
    assert not wrong, f"customDimensions keys that are not labels of the metrics queried: {wrong}"


def test_every_custom_metrics_query_reads_the_binarys_telemetry_only(tf):
    for key, kql in custom_metric_queries(tf).items():
        assert f'cloud_RoleName == "{APP_ROLE}"' in kql, f"{key}: filter on the binary's cloud role name"
    assert tf.locals["app_role_name"] == APP_ROLE


def test_the_metric_checks_catch_a_renamed_metric_or_label(metrics_rs, emitted):
    kql = 'customMetrics | where name == "messages_consumed_totl" | where tostring(customDimensions.result) == "x"'
    assert metric_names_in(kql) - emitted == {"messages_consumed_totl"}
    assert dimensions_in(kql) - emitted_metric_labels(metrics_rs)["messages_consumed_total"] == {"result"}
    assert metric_names_in('customMetrics | where name in ("queue_depth", "dead_letters")') == {"queue_depth", "dead_letters"}


def test_the_label_values_the_queries_rely_on_exist_in_the_code():
    sources = "\n".join(path.read_text() for path in (ROOT / "src").rglob("*.rs"))
    for value in ("stored", "stale", "retried", "dead_lettered", "/api/health"):
        assert f'"{value}"' in sources, f"no string literal {value!r} in src/: the queries filter on it"


# --------------------------------------------------------------------------------------------
# The action group and the wiring of every alert.
# --------------------------------------------------------------------------------------------


def test_the_action_group_emails_alert_email_and_has_no_receiver_without_one(tf):
    name, group = tf.only("azurerm_monitor_action_group")
    assert name == "main"
    assert group["enabled"] is True
    assert "email_receiver" not in group, "the receiver must depend on alert_email (a dynamic block)"
    receiver = next(entry["email_receiver"] for entry in group["dynamic"] if "email_receiver" in entry)
    assert expr(receiver["for_each"]) == 'var.alert_email == "" ? [] : [var.alert_email]'
    content = receiver["content"][0]
    assert content["email_address"] == "${email_receiver.value}"
    assert content["use_common_alert_schema"] is True
    assert expr(group["short_name"]) == "substr(local.stem, 0, 12)", "Azure allows 12 characters"


def test_alert_email_has_no_default_address_and_is_validated_as_an_email(tf):
    spec = tf.variables["alert_email"]
    assert spec["default"] == "" and spec["type"] == "string"
    (pattern,) = re.findall(r'regex\("((?:[^"\\]|\\.)+)", var\.alert_email\)', spec["validation"][0]["condition"])
    pattern = pattern.encode().decode("unicode_escape")
    for good in ("", "ops@example.com", "on-call+ingest@team.example.co.uk"):
        assert re.search(pattern, good), good
    for bad in ("ops", "ops@", "@example.com", "ops@example", "a b@example.com", "ops@example.com, dev@example.com"):
        assert not re.search(pattern, bad), bad


def all_alerts(tf) -> list[tuple[str, str, dict]]:
    return [(LOG_ALERT, n, b) for n, b in log_alerts(tf).items()] + [(METRIC_ALERT, n, b) for n, b in metric_alerts(tf).items()]


def test_the_expected_alerts_exist(tf):
    assert set(log_alerts(tf)) == {"error_rate", "processing_time", "app_dead_letters", "cosmos_throttling", "slo_burn"}
    assert set(metric_alerts(tf)) == {"servicebus_dead_letters", "backlog"}
    assert set(slo_burn_alerts(tf)) == {"availability-fast", "availability-slow", "message_success-fast", "message_success-slow"}


def test_every_alert_notifies_the_action_group_resolves_itself_and_is_enabled(tf):
    for rtype, name, body in all_alerts(tf):
        (action,) = body["action"]
        if rtype == LOG_ALERT:
            assert action["action_groups"] == [ACTION_GROUP], name
            assert body["auto_mitigation_enabled"] is True, f"{name}: stateful, resolves by itself"
            assert "mute_actions_after_alert_duration" not in body
        else:
            assert action["action_group_id"] == ACTION_GROUP, name
            assert body["auto_mitigate"] is True, name
        assert body.get("enabled", True) is True, name


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors."""
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        found.add(slug)
    return found


def test_every_alert_links_a_runbook_section_that_exists(tf):
    doc = OPERATIONS_MD.read_text()
    sections = anchors(doc)
    links = []
    for _, name, body in all_alerts(tf):
        description = render(tf, body["description"])
        match = re.search(r"Runbook: docs/operations\.md#(\$\{each\.value\.runbook\}|[\w-]+)", description)
        assert match, f"{name}: the description must end with its runbook link"
        links.append(match.group(1))
    links = [link for link in links if not link.startswith("${")]
    links += [slo["runbook"] for slo in tf.locals["slos"].values()]
    missing = sorted(set(links) - sections)
    assert not missing, f"docs/operations.md has no section for {missing}"
    web_test = render(tf, tf.resource("azurerm_application_insights_standard_web_test.health")["description"])
    assert "docs/operations.md#slo-availability" in web_test


# --------------------------------------------------------------------------------------------
# Thresholds, windows, frequencies and severities of the symptom and cause alerts.
# --------------------------------------------------------------------------------------------


def test_log_alerts_query_one_row_so_one_evaluation_period(tf):
    for name, body in log_alerts(tf).items():
        crit = criteria(body)
        assert block(crit, "failing_periods") == {
            "minimum_failing_periods_to_trigger_alert": 1,
            "number_of_evaluation_periods": 1,
        }, name
        assert crit["time_aggregation_method"] == "Maximum" and crit["operator"] == "GreaterThan", name
        assert crit["metric_measure_column"], name


def test_evaluation_is_at_least_as_frequent_as_the_window(tf):
    for name, body in log_alerts(tf).items():
        if "for_each" in body:
            continue
        assert minutes(body["evaluation_frequency"]) <= minutes(body["window_duration"]), name
    for alert in slo_burn_alerts(tf).values():
        assert minutes(alert["evaluation_frequency"]) <= alert["long_window_hours"] * 60
    for name, body in metric_alerts(tf).items():
        assert minutes(body["frequency"]) <= minutes(body["window_size"]), name


def test_the_error_rate_counts_the_hosts_failed_invocations_too(tf):
    """A crash or a hang past the function timeout never reaches http_requests_total."""
    kql = render(tf, criteria(log_alerts(tf)["error_rate"])["query"])
    assert re.search(r"\brequests\s*\|\s*where cloud_RoleName =~ \"\$\{azurerm_linux_function_app\.main\.name\}\"", kql), kql
    assert "success == false" in kql and 'operation_Name != "health"' in kql
    assert "union binary, host" in kql and "error_ratio = max(error_ratio)" in kql


def test_function_error_rate_is_5xx_above_1_percent_over_10_minutes(tf):
    alert = log_alerts(tf)["error_rate"]
    crit = criteria(alert)
    kql = render(tf, crit["query"])
    assert crit["threshold"] == 0.01 and crit["metric_measure_column"] == "error_ratio"
    assert alert["window_duration"] == "PT10M" and alert["evaluation_frequency"] == "PT5M"
    assert alert["severity"] == 2
    assert alert["scopes"] == [APP_INSIGHTS]
    assert metric_names_in(kql) == {"http_requests_total"}
    assert "status >= 500" in kql and "toint(customDimensions.status)" in kql
    assert "sum(valueSum)" in kql, "a counter row's increase is valueSum"
    assert re.search(r'customDimensions\.route\) != "/api/health"', kql), "probes are the availability SLO's"
    assert f"failed >= {tf.locals['error_rate_min_failed_requests']}" in kql
    assert tf.locals["error_rate_min_failed_requests"] == 3


def test_message_processing_time_fires_on_the_slowest_message_above_5_seconds_in_every_slice(tf):
    """The maximum, not a mean that a slow tenth of the traffic would barely move; in every
    5-minute slice of 10 minutes (at least two), so one retried message cannot fire it."""
    alert = log_alerts(tf)["processing_time"]
    crit = criteria(alert)
    kql = render(tf, crit["query"])
    assert crit["threshold"] == 5 and crit["metric_measure_column"] == "slowest_seconds"
    assert crit["operator"] == "GreaterThan" and crit["time_aggregation_method"] == "Maximum"
    assert alert["window_duration"] == "PT10M" and alert["evaluation_frequency"] == "PT5M"
    assert alert["severity"] == 2
    assert metric_names_in(kql) == {"message_processing_seconds"}
    assert "slowest = max(valueMax)" in kql and "by slice = bin(timestamp, 5m)" in kql
    assert "slowest_seconds = min(slowest)" in kql and "iff(slices >= 2, slowest_seconds, 0.0)" in kql


def test_service_bus_dead_letters_alert_on_any_message_in_the_topics_dead_letter_queue(tf):
    alert = metric_alerts(tf)["servicebus_dead_letters"]
    crit = criteria(alert)
    assert alert["scopes"] == ["${azurerm_servicebus_namespace.main.id}"]
    assert crit["metric_namespace"] == "Microsoft.ServiceBus/namespaces"
    assert crit["metric_name"] == "DeadletteredMessages"
    assert (crit["aggregation"], crit["operator"], crit["threshold"]) == ("Maximum", "GreaterThan", 0)
    assert block(crit, "dimension") == {"name": "EntityName", "operator": "Include", "values": ["${azurerm_servicebus_topic.users.name}"]}
    assert alert["severity"] == 2
    assert alert["window_size"] == "PT5M" and alert["frequency"] == "PT5M"


def test_the_apps_own_dead_letters_alert_on_any_new_one(tf):
    alert = log_alerts(tf)["app_dead_letters"]
    crit = criteria(alert)
    kql = render(tf, crit["query"])
    assert metric_names_in(kql) == {"messages_consumed_total"}
    assert 'tostring(customDimensions.outcome) == "dead_lettered"' in kql
    assert "sum(valueSum)" in kql
    assert crit["threshold"] == 0 and crit["operator"] == "GreaterThan"
    assert alert["window_duration"] == "PT15M" and alert["evaluation_frequency"] == "PT5M"
    assert alert["severity"] == 2


def test_a_growing_backlog_is_a_floor_above_the_threshold_for_15_minutes(tf):
    alert = metric_alerts(tf)["backlog"]
    crit = criteria(alert)
    assert crit["metric_name"] == "ActiveMessages" and crit["metric_namespace"] == "Microsoft.ServiceBus/namespaces"
    assert crit["aggregation"] == "Minimum", "the minimum over the window: a burst that drains must not fire"
    assert crit["operator"] == "GreaterThan" and crit["threshold"] == "${var.backlog_alert_threshold}"
    assert tf.variables["backlog_alert_threshold"]["default"] == 500
    assert block(crit, "dimension")["values"] == ["${azurerm_servicebus_topic.users.name}"]
    assert alert["window_size"] == "PT15M" and alert["frequency"] == "PT5M"
    assert alert["severity"] == 2
    assert "dynamic_criteria" not in alert


def test_cosmos_throttling_is_the_429_ratio_of_the_request_log(tf):
    _, setting = tf.only("azurerm_monitor_diagnostic_setting")
    assert setting["target_resource_id"] == "${azurerm_cosmosdb_account.main.id}"
    assert setting["log_analytics_workspace_id"] == "${azurerm_log_analytics_workspace.main.id}"
    assert setting["log_analytics_destination_type"] == "Dedicated", "resource-specific CDBDataPlaneRequests, not AzureDiagnostics"
    assert [log["category"] for log in setting["enabled_log"]] == ["DataPlaneRequests"]

    alert = log_alerts(tf)["cosmos_throttling"]
    crit = criteria(alert)
    kql = render(tf, crit["query"])
    assert alert["scopes"] == ["${azurerm_log_analytics_workspace.main.id}"]
    assert kql.startswith("CDBDataPlaneRequests")
    assert "countif(StatusCode == 429)" in kql and "count()" in kql and "todouble(throttled) / requests" in kql
    assert "requests >= 100" in kql
    assert crit["threshold"] == "${var.cosmos_throttle_ratio_threshold}"
    assert tf.variables["cosmos_throttle_ratio_threshold"]["default"] == 0.05
    assert alert["window_duration"] == "PT15M" and alert["evaluation_frequency"] == "PT5M"
    assert alert["severity"] == 3, "a cause: its user-visible effects alert at Sev2"
    assert "${azurerm_monitor_diagnostic_setting.cosmos}" in alert["depends_on"]


def test_severities_page_only_on_fast_burn(tf):
    symptoms = {"error_rate", "processing_time", "app_dead_letters"}
    for name in symptoms:
        assert log_alerts(tf)[name]["severity"] == 2, name
    for name, body in metric_alerts(tf).items():
        assert body["severity"] == 2, name
    severities = {key: alert["severity"] for key, alert in slo_burn_alerts(tf).items()}
    for slo in tf.locals["slos"]:
        assert severities[f"{slo}-fast"] < severities[f"{slo}-slow"], "a fast burn is more severe than a slow one"
    burn = tf.locals["burn_rates"]
    assert (burn["fast"]["severity"], burn["fast"]["response"]) == (1, "page")
    assert (burn["slow"]["severity"], burn["slow"]["response"]) == (2, "ticket")
    assert log_alerts(tf)["slo_burn"]["severity"] == "${each.value.severity}"
    everything = [b["severity"] for _, _, b in all_alerts(tf) if isinstance(b["severity"], int)]
    assert 1 not in everything, "only the SLO fast burns page"


# --------------------------------------------------------------------------------------------
# The SLOs and their burn-rate alerts.
# --------------------------------------------------------------------------------------------


def test_slo_targets_are_99_9_percent_over_30_days(tf):
    assert tf.locals["slo_period_days"] == 30
    slos = tf.locals["slos"]
    assert set(slos) == {"availability", "message_success"}
    assert slos["availability"]["target"] == "${var.slo_availability_target}"
    assert slos["message_success"]["target"] == "${var.slo_message_success_target}"
    for name in ("slo_availability_target", "slo_message_success_target"):
        assert tf.variables[name]["default"] == 0.999


def test_burn_rates_are_the_sre_workbooks_pair(tf):
    burn = tf.locals["burn_rates"]
    assert (burn["fast"]["burn_rate"], burn["fast"]["long_window_hours"], burn["fast"]["short_window_minutes"]) == (14.4, 1, 5)
    assert (burn["slow"]["burn_rate"], burn["slow"]["long_window_hours"], burn["slow"]["short_window_minutes"]) == (6, 6, 30)
    assert burn["fast"]["evaluation_frequency"] == "PT5M" and burn["slow"]["evaluation_frequency"] == "PT15M"
    for name, spec in burn.items():
        assert spec["short_window_minutes"] * 12 == spec["long_window_hours"] * 60, f"{name}: short window = long / 12"


@pytest.mark.parametrize("burn, budget_share", [("fast", Fraction(2, 100)), ("slow", Fraction(5, 100))])
def test_a_burn_alert_spends_2_or_5_percent_of_the_budget_in_its_long_window(tf, burn, budget_share):
    spec = tf.locals["burn_rates"][burn]
    spent = Fraction(str(spec["burn_rate"])) * spec["long_window_hours"] / SLO_PERIOD_HOURS
    assert spent == budget_share


def test_each_threshold_is_the_burn_rate_times_the_error_budget(tf):
    template = tf.locals["slo_burn_alerts"]
    assert "threshold = local.burn_rates[pair[1]].burn_rate * (1 - local.slos[pair[0]].target)" in template
    assert "setproduct(keys(local.slos), keys(local.burn_rates))" in template
    crit = criteria(log_alerts(tf)["slo_burn"])
    assert crit["threshold"] == "${each.value.threshold}"
    assert crit["metric_measure_column"] == "error_ratio"
    alerts = slo_burn_alerts(tf)
    for slo in ("availability", "message_success"):
        assert alerts[f"{slo}-fast"]["threshold"] == Fraction("0.0144"), "14.4 x 0.1 % = 1.44 %"
        assert alerts[f"{slo}-slow"]["threshold"] == Fraction("0.006"), "6 x 0.1 % = 0.6 %"


def test_burn_alerts_need_both_windows_and_a_minimum_of_bad_events(tf):
    body = log_alerts(tf)["slo_burn"]
    assert body["for_each"] == "${local.slo_burn_alerts}"
    assert body["window_duration"] == "PT${each.value.long_window_hours}H"
    assert body["evaluation_frequency"] == "${each.value.evaluation_frequency}"
    assert body["scopes"] == [APP_INSIGHTS]
    assert tf.locals["slo_min_bad_events"] == 3
    for key, alert in slo_burn_alerts(tf).items():
        kql = alert["query"]
        assert f"timestamp > ago({alert['long_window_hours']}h)" in kql, key
        assert kql.count(f"timestamp > ago({alert['short_window_minutes']}m)") == 2, key
        assert "min_of(ratio_long, ratio_short)" in kql, f"{key}: BOTH windows must be above the threshold"
        assert "bad_long >= 3" in kql, key
        assert "${" not in kql.replace("${azurerm_application_insights_standard_web_test.health.name}", ""), kql


def test_the_availability_sli_counts_failed_probes_of_the_health_test(tf):
    events = render(tf, tf.locals["slos"]["availability"]["events"])
    assert events.startswith("availabilityResults")
    assert 'name == "${azurerm_application_insights_standard_web_test.health.name}"' in events
    assert "iff(success == 0, 1.0, 0.0)" in events and "total = 1.0" in events


def test_the_message_sli_counts_stored_and_stale_as_good_dead_lettered_as_bad_and_ignores_retried(tf):
    events = render(tf, tf.locals["slos"]["message_success"]["events"])
    assert metric_names_in(events) == {"messages_consumed_total"}
    assert 'where outcome in ("stored", "stale", "dead_lettered")' in events
    assert "retried" not in events, "retried is not a final outcome"
    assert 'bad = iff(outcome == "dead_lettered", valueSum, 0.0)' in events and "total = valueSum" in events


def test_slo_targets_are_validated_so_a_threshold_stays_an_alert(tf):
    for name in ("slo_availability_target", "slo_message_success_target"):
        (validation,) = tf.variables[name]["validation"]
        assert f"var.{name} >= 0.95" in validation["condition"] and f"var.{name} <= 0.9999" in validation["condition"]
    assert 14.4 * (1 - 0.95) < 1


# --------------------------------------------------------------------------------------------
# The availability probe.
# --------------------------------------------------------------------------------------------


def test_the_web_test_gets_api_health_over_https_from_several_locations_and_expects_200(tf):
    name, test = tf.only("azurerm_application_insights_standard_web_test")
    request = block(test, "request")
    assert request["url"] == "https://${azurerm_linux_function_app.main.default_hostname}/api/health"
    assert request["http_verb"] == "GET"
    assert request["follow_redirects_enabled"] is False
    rules = block(test, "validation_rules")
    assert rules["expected_status_code"] == 200
    assert rules["ssl_check_enabled"] is True and rules["ssl_cert_remaining_lifetime"] >= 7
    assert test["enabled"] is True, "the provider sends false when enabled is left out"
    assert test["frequency"] == 300 and test["timeout"] == 30 and test["retry_enabled"] is True
    assert test["application_insights_id"] == APP_INSIGHTS
    assert test["geo_locations"] == "${var.availability_test_locations}"
    locations = tf.variables["availability_test_locations"]["default"]
    assert len(locations) >= 5 and len(set(locations)) == len(locations)


def test_the_health_function_is_anonymous_so_the_probe_needs_no_key(function_bindings):
    (trigger,) = [b for b in function_bindings["health"] if b["type"] == "httpTrigger"]
    assert trigger["authLevel"] == "anonymous" and trigger["route"] == "health"


def test_a_full_outage_clears_the_minimum_within_one_probe_round(tf):
    locations = len(tf.variables["availability_test_locations"]["default"])
    assert locations >= tf.locals["slo_min_bad_events"]
    probes_per_hour = locations * 3600 // tf.resource("azurerm_application_insights_standard_web_test.health")["frequency"]
    assert probes_per_hour == 60
    # One failed probe in an hour already exceeds the fast threshold: the guard is what keeps
    # a single probe from paging.
    assert Fraction(1, probes_per_hour) > Fraction("0.0144")


# --------------------------------------------------------------------------------------------
# Telemetry export, which the windows assume.
# --------------------------------------------------------------------------------------------


def test_the_export_interval_gives_every_window_several_points(tf):
    interval_ms = tf.locals["telemetry_export_interval_ms"]
    assert tf.locals["app_settings"]["TELEMETRY_EXPORT_INTERVAL_MS"] == "${tostring(local.telemetry_export_interval_ms)}"
    shortest = min(alert["short_window_minutes"] for alert in slo_burn_alerts(tf).values())
    for _, body in log_alerts(tf).items():
        if "for_each" not in body:
            shortest = min(shortest, minutes(body["window_duration"]))
    assert shortest * 60_000 >= 5 * interval_ms


# --------------------------------------------------------------------------------------------
# The workbook.
# --------------------------------------------------------------------------------------------


def workbook_text(tf) -> str:
    return str(tf.locals["workbook_items"])


def test_the_workbook_is_built_with_jsonencode_and_a_stable_guid_name(tf):
    _, workbook = tf.only("azurerm_application_insights_workbook")
    assert expr(workbook["data_json"]).startswith("jsonencode(")
    assert "items = local.workbook_items" in workbook["data_json"]
    assert expr(workbook["name"]).startswith("uuidv5("), "a GUID derived from names, so re-applying never renames it"
    assert workbook["source_id"] == "${lower(azurerm_application_insights.main.id)}"


def test_every_workbook_query_is_shown(tf):
    shown = set(re.findall(r"\blocal\.workbook_queries\.(\w+)", workbook_text(tf)))
    assert shown == set(tf.locals["workbook_queries"])


def test_the_workbook_shows_processing_time_queue_depth_error_rate_and_request_units(tf):
    queries = {key: render(tf, text) for key, text in tf.locals["workbook_queries"].items()}
    processing = queries["processing_time"]
    assert metric_names_in(processing) == {"message_processing_seconds"}
    assert "sum(valueSum) / sum(valueCount)" in processing and "max(valueMax)" in processing
    assert metric_names_in(queries["embedded_queue"]) == {"queue_depth", "dead_letters"}
    assert "http_requests_total" in queries["error_rate"] and "status >= 500" in queries["error_rate"]
    assert "requests" in queries["error_rate"] and "success == false" in queries["error_rate"], "the host's view beside"
    assert metric_names_in(queries["cosmos_request_units"]) == {"cosmos_request_charge_total"}
    assert "StatusCode == 429" in queries["cosmos_throttling"]
    text = workbook_text(tf)
    assert "ActiveMessages" in text and "DeadletteredMessages" in text and "microsoft.servicebus/namespaces--" in text
    assert "microsoft.documentdb/databaseaccounts-Requests-TotalRequestUnits" in text
    assert '"key": "EntityName"' in text.replace("'", '"')


def test_the_workbooks_slo_table_uses_the_slos_own_events(tf):
    query = tf.locals["workbook_queries"]["slo_status"]
    for slo in tf.locals["slos"]:
        assert f"${{local.slos.{slo}.events}}" in query and f"${{local.slos.{slo}.target}}" in query
    assert "budget_left = 1.0 - error_ratio / (1.0 - target)" in query


# --------------------------------------------------------------------------------------------
# The runbook.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def operations() -> str:
    assert OPERATIONS_MD.is_file(), "docs/operations.md (the runbook) is missing"
    return OPERATIONS_MD.read_text()


RUNBOOK_SECTIONS = [
    "slo-availability",
    "slo-message-success",
    "function-error-rate",
    "message-processing-time",
    "service-bus-dead-letters",
    "app-dead-letters",
    "subscription-backlog",
    "cosmos-db-throttling",
]


def section(markdown: str, anchor: str) -> str:
    parts = re.split(r"^(#{2,3} .+)$", markdown, flags=re.MULTILINE)
    for i in range(1, len(parts), 2):
        if anchor in anchors(parts[i]):
            return parts[i + 1]
    raise AssertionError(f"docs/operations.md has no section #{anchor}")


@pytest.mark.parametrize("anchor", RUNBOOK_SECTIONS)
def test_the_runbook_says_what_each_alert_means_and_the_first_three_checks(operations, anchor):
    text = section(operations, anchor)
    assert "**Means**" in text
    assert "First three checks" in text
    numbered = re.findall(r"^(\d)\. ", text, re.MULTILINE)
    assert numbered[:3] == ["1", "2", "3"], f"#{anchor}: three numbered checks"
    assert re.search(r"`(kql|az|curl|data-ingestion-api) ", text) or "Service Bus Explorer" in text, (
        f"#{anchor}: a check must be concrete (a query, a command, a portal blade)"
    )


def test_the_runbook_lists_every_alert_with_its_thresholds(tf, operations):
    for name in ("error-rate", "processing-time", "servicebus-dead-letters", "app-dead-letters", "subscription-backlog", "cosmos-throttling"):
        assert f"`alert-<stem>-{name}`" in operations, name
    for key in slo_burn_alerts(tf):
        assert f"`alert-<stem>-slo-{key}`" in operations, key
    for value in ("**1 %**", "**5 s**", "**0**", "**500**", "**5 %**", "**1.44 %**", "**0.6 %**"):
        assert value in operations, value


def percent(ratio: Fraction) -> str:
    text = f"{float(ratio * 100):.4f}".rstrip("0").rstrip(".")
    return f"{text} %"


def test_the_runbook_states_the_error_budget_arithmetic(tf, operations):
    target = Fraction(str(tf.variables["slo_availability_target"]["default"]))
    budget_minutes = (1 - target) * SLO_PERIOD_HOURS * 60
    assert budget_minutes == Fraction("43.2")
    assert "**43.2 minutes**" in operations and "**0.1 % of messages**" in operations
    for key, alert in slo_burn_alerts(tf).items():
        threshold = percent(alert["threshold"])
        burn = f"{float(alert['burn_rate']):g}"
        assert f"{burn} × 0.1 % = **{threshold}**" in operations, f"{key}: {burn} × 0.1 % = {threshold}"
        spent = percent(alert["burn_rate"] * alert["long_window_hours"] / SLO_PERIOD_HOURS)
        assert f"{burn} × {alert['long_window_hours']} h / 720 h = **{spent}**" in operations, key


def test_the_runbook_explains_replaying_dead_letters(operations):
    replay = section(operations, "replaying-dead-letters")
    assert "data-ingestion-api deadletters list|show|replay|purge" in replay
    for command in ("`list`", "`show <id>`", "`replay`", "`purge`"):
        assert command in replay
    assert "--edit" in replay, "how to repair a body before replaying it"
    assert "Service Bus Explorer" in replay and "Dead-letter" in replay
    assert "duplicate detection" in replay, "a re-send within the window is dropped silently"


def test_the_runbook_says_what_an_empty_alert_email_means(operations):
    prose = " ".join(operations.split())
    assert "When `alert_email` is empty (the default) the action group has no receiver" in prose


def test_the_runbooks_own_queries_read_metrics_and_labels_the_binary_emits(operations, metrics_rs, emitted):
    labels = emitted_metric_labels(metrics_rs)
    queries = [q for q in re.findall(r"`kql '([^']+)'", operations) if "customMetrics" in q]
    assert len(queries) >= 5, "expected the runbook's customMetrics queries"
    for query in queries:
        names = metric_names_in(query)
        assert names and names <= emitted, f"docs/operations.md queries unknown metrics {names - emitted}: {query}"
        allowed = set().union(*(labels[name] for name in names))
        assert dimensions_in(query) <= allowed, f"docs/operations.md reads labels {dimensions_in(query) - allowed}: {query}"
        assert f'cloud_RoleName == "{APP_ROLE}"' in query, query
