# Symptom and cause alerts. Every rule notifies azurerm_monitor_action_group.main, resolves by
# itself once its condition clears (stateful: one notification per incident, one when it ends),
# and links its runbook section in docs/operations.md.
#
# Severity scale (docs/operations.md): Sev1 pages (the SLO fast burns in slo.tf); Sev2 is a
# ticket for today: the user-visible symptoms below, including every dead letter; Sev3 is a
# cause worth a look (throttling), whose user-visible effects have alerts of their own.
#
# Log alerts read the binary's custom metrics (customMetrics, cloud role data-ingestion-api,
# exported every 60 s). A counter row's valueSum is its increase over the export interval; a
# histogram row's valueSum / valueCount are the sum and number of observations.

locals {
  # Below these counts in a window a ratio says more about one unlucky request than about the
  # service: three 500s out of four requests at night are three bugs to read in a ticket the
  # next morning, not a rate.
  error_rate_min_failed_requests = 3
  cosmos_throttle_min_requests   = 100

  runbook = "docs/operations.md"
}

# --- Function error rate ------------------------------------------------------------------------

# 5xx answers over all answers, 10 minutes at a time, seen from both sides: the binary's own
# count (http_requests_total), and the Functions host's invocations (requests, success ==
# false), which also count the answers the binary never gave: a crash, a hang past the
# function timeout, a handler that would not start. The worse of the two ratios is the
# alert's. 4xx are the client's errors; a 5xx on /ingest-consume is a failed Service Bus
# invocation (redelivered later). Health is left out: its callers are the availability probes,
# measured by the availability SLO, and at night they would dilute the ratio of real traffic.
resource "azurerm_monitor_scheduled_query_rules_alert_v2" "error_rate" {
  name                = "alert-${local.stem}-error-rate"
  display_name        = "${local.stem}: function error rate above 1 %"
  description         = "More than 1 % of the API's answers were 5xx over 10 minutes. Runbook: ${local.runbook}#function-error-rate"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_application_insights.main.location
  scopes              = [azurerm_application_insights.main.id]

  # 1 % is ten times the 0.1 % error budget of the SLOs: worth a ticket at once, although
  # only the SLO burn-rate alerts page. Evaluating every 5 minutes over a 10-minute window
  # sees every request twice, so a spike straddling two evaluations is not missed.
  severity                = 2
  window_duration         = "PT10M"
  evaluation_frequency    = "PT5M"
  auto_mitigation_enabled = true

  criteria {
    query                   = <<-KQL
      let binary = customMetrics
        | where cloud_RoleName == "${local.app_role_name}" and name == "http_requests_total"
        | where tostring(customDimensions.route) != "/api/health"
        | extend status = toint(customDimensions.status)
        | summarize requests = sum(valueSum), failed = sumif(valueSum, status >= 500);
      let host = requests
        | where cloud_RoleName =~ "${azurerm_linux_function_app.main.name}" and operation_Name != "health"
        | summarize requests = todouble(sum(itemCount)), failed = todouble(sumif(itemCount, success == false));
      union binary, host
      | extend error_ratio = iff(failed >= ${local.error_rate_min_failed_requests}, failed / requests, 0.0)
      | summarize error_ratio = max(error_ratio), failed = max(failed), requests = max(requests)
      | project error_ratio, failed, requests
    KQL
    time_aggregation_method = "Maximum"
    metric_measure_column   = "error_ratio"
    operator                = "GreaterThan"
    threshold               = 0.01

    failing_periods {
      minimum_failing_periods_to_trigger_alert = 1
      number_of_evaluation_periods             = 1
    }
  }

  action {
    action_groups = [azurerm_monitor_action_group.main.id]
  }

  tags = local.tags
}

# --- Message processing time ------------------------------------------------------------------

# The SLOWEST message from enqueue to its document stored (message_processing_seconds; each
# export row's valueMax is the slowest of its minute). Healthy processing takes tens of
# milliseconds. A mean would hide a tail: a tenth of the messages taking a minute barely moves
# it. So the alert is on the maximum, and fires when some message took more than 5 s in EVERY
# 5-minute slice of the last 10 minutes (the query bins them itself, and needs at least two):
# a slow path that persists (a store throttled or down, a consumer behind), not one message
# retried once after a transient error. A consumer that stores nothing at all leaves no
# samples: the backlog alert covers that.
resource "azurerm_monitor_scheduled_query_rules_alert_v2" "processing_time" {
  name                = "alert-${local.stem}-processing-time"
  display_name        = "${local.stem}: message processing time above 5 s"
  description         = "Messages took more than 5 s from enqueue to stored, in every 5 minutes of the last 10. Runbook: ${local.runbook}#message-processing-time"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_application_insights.main.location
  scopes              = [azurerm_application_insights.main.id]

  severity                = 2
  window_duration         = "PT10M"
  evaluation_frequency    = "PT5M"
  auto_mitigation_enabled = true

  criteria {
    query                   = <<-KQL
      customMetrics
      | where cloud_RoleName == "${local.app_role_name}" and name == "message_processing_seconds"
      | summarize slowest = max(valueMax), messages = sum(valueCount) by slice = bin(timestamp, 5m)
      | summarize slowest_seconds = min(slowest), slices = count(), messages = sum(messages)
      | extend slowest_seconds = iff(slices >= 2, slowest_seconds, 0.0)
      | project slowest_seconds, slices, messages
    KQL
    time_aggregation_method = "Maximum"
    metric_measure_column   = "slowest_seconds"
    operator                = "GreaterThan"
    threshold               = 5

    failing_periods {
      minimum_failing_periods_to_trigger_alert = 1
      number_of_evaluation_periods             = 1
    }
  }

  action {
    action_groups = [azurerm_monitor_action_group.main.id]
  }

  tags = local.tags
}

# --- Dead letters ------------------------------------------------------------------------------

# Service Bus's dead-letter queue of the subscription, counted on the topic: a message lands
# there after max_delivery_count failed deliveries or on expiry. Each one is a 202 the service
# has not kept yet, so ANY is a ticket; the alert stays active until the queue is emptied
# (replayed or purged), which is exactly the operator's to-do.
resource "azurerm_monitor_metric_alert" "servicebus_dead_letters" {
  name                = "alert-${local.stem}-servicebus-dead-letters"
  description         = "The subscription's Service Bus dead-letter queue holds messages. Runbook: ${local.runbook}#service-bus-dead-letters"
  resource_group_name = azurerm_resource_group.main.name
  scopes              = [azurerm_servicebus_namespace.main.id]

  # A gauge: Maximum over 5 minutes catches a single message; nothing is gained by waiting.
  severity      = 2
  frequency     = "PT5M"
  window_size   = "PT5M"
  auto_mitigate = true

  criteria {
    metric_namespace = "Microsoft.ServiceBus/namespaces"
    metric_name      = "DeadletteredMessages"
    aggregation      = "Maximum"
    operator         = "GreaterThan"
    threshold        = 0

    dimension {
      name     = "EntityName"
      operator = "Include"
      values   = [azurerm_servicebus_topic.users.name]
    }
  }

  action {
    action_group_id = azurerm_monitor_action_group.main.id
  }

  tags = local.tags
}

# The binary's own dead letters: messages it parks in the Cosmos deadletters container (a
# payload that can never be stored, or the last delivery of a failing one) and completes, so
# Service Bus never sees them. Any new one in the last 15 minutes fires; the window overlaps
# the 5-minute evaluations so telemetry that arrives late is still counted.
resource "azurerm_monitor_scheduled_query_rules_alert_v2" "app_dead_letters" {
  name                = "alert-${local.stem}-app-dead-letters"
  display_name        = "${local.stem}: messages parked in the deadletters container"
  description         = "The consumer parked messages in the Cosmos DB deadletters container. Runbook: ${local.runbook}#app-dead-letters"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_application_insights.main.location
  scopes              = [azurerm_application_insights.main.id]

  severity                = 2
  window_duration         = "PT15M"
  evaluation_frequency    = "PT5M"
  auto_mitigation_enabled = true

  criteria {
    query                   = <<-KQL
      customMetrics
      | where cloud_RoleName == "${local.app_role_name}" and name == "messages_consumed_total"
      | where tostring(customDimensions.outcome) == "dead_lettered"
      | summarize dead_lettered = sum(valueSum)
    KQL
    time_aggregation_method = "Maximum"
    metric_measure_column   = "dead_lettered"
    operator                = "GreaterThan"
    threshold               = 0

    failing_periods {
      minimum_failing_periods_to_trigger_alert = 1
      number_of_evaluation_periods             = 1
    }
  }

  action {
    action_groups = [azurerm_monitor_action_group.main.id]
  }

  tags = local.tags
}

# --- Subscription backlog ----------------------------------------------------------------------

# "Growing" as: the backlog never fell below backlog_alert_threshold for 15 minutes (the
# MINIMUM over the window is above it). A healthy consumer drains a burst within seconds, so
# a high minimum means it is stalled or slower than the producers, whatever the load; a burst
# that drains does not fire. It is also the only alert that sees a consumer that stopped
# entirely: nothing is stored then, so processing time and the message SLO fall silent.
# Dynamic thresholds were rejected: they learn from days of history what "normal" is, and the
# normal backlog here is zero, so they would either fire on every burst or learn to accept a
# stall; a static floor is explainable and testable.
resource "azurerm_monitor_metric_alert" "backlog" {
  name                = "alert-${local.stem}-subscription-backlog"
  description         = "The subscription's backlog stayed above ${var.backlog_alert_threshold} active messages for 15 minutes. Runbook: ${local.runbook}#subscription-backlog"
  resource_group_name = azurerm_resource_group.main.name
  scopes              = [azurerm_servicebus_namespace.main.id]

  severity      = 2
  frequency     = "PT5M"
  window_size   = "PT15M"
  auto_mitigate = true

  criteria {
    metric_namespace = "Microsoft.ServiceBus/namespaces"
    metric_name      = "ActiveMessages"
    aggregation      = "Minimum"
    operator         = "GreaterThan"
    threshold        = var.backlog_alert_threshold

    # Service Bus reports a topic's counts, summed over its subscriptions, under the topic's
    # name; the topic has one subscription.
    dimension {
      name     = "EntityName"
      operator = "Include"
      values   = [azurerm_servicebus_topic.users.name]
    }
  }

  action {
    action_group_id = azurerm_monitor_action_group.main.id
  }

  tags = local.tags
}

# --- Cosmos DB throttling ----------------------------------------------------------------------

# Share of Cosmos DB requests answered 429 over 15 minutes, from the request log that
# monitoring.tf sends to the workspace. The SDK retries a 429 after x-ms-retry-after-ms, so a
# few per cent only cost latency (Microsoft calls 1-5 % healthy); beyond
# cosmos_throttle_ratio_threshold (5 %) retries start to exhaust COSMOS_TIMEOUT_MS and turn
# into 503s and redeliveries. Sev3: it is a cause, and its user-visible effects (error rate,
# processing time, SLO burn) alert on their own; the action is capacity (autoscale, or more
# RU/s), not firefighting.
resource "azurerm_monitor_scheduled_query_rules_alert_v2" "cosmos_throttling" {
  name                = "alert-${local.stem}-cosmos-throttling"
  display_name        = "${local.stem}: Cosmos DB throttling (429) ratio high"
  description         = "Over 15 minutes more than ${var.cosmos_throttle_ratio_threshold * 100} % of Cosmos DB requests were throttled (429). Runbook: ${local.runbook}#cosmos-db-throttling"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_log_analytics_workspace.main.location
  scopes              = [azurerm_log_analytics_workspace.main.id]

  severity                = 3
  window_duration         = "PT15M"
  evaluation_frequency    = "PT5M"
  auto_mitigation_enabled = true
  # CDBDataPlaneRequests appears in the workspace with the account's first logged request;
  # validating the query before then would fail the apply.
  skip_query_validation = true

  criteria {
    query                   = <<-KQL
      CDBDataPlaneRequests
      | where _ResourceId =~ "${azurerm_cosmosdb_account.main.id}"
      | summarize requests = count(), throttled = countif(StatusCode == 429)
      | extend throttle_ratio = iff(requests >= ${local.cosmos_throttle_min_requests}, todouble(throttled) / requests, 0.0)
      | project throttle_ratio, throttled, requests
    KQL
    time_aggregation_method = "Maximum"
    metric_measure_column   = "throttle_ratio"
    operator                = "GreaterThan"
    threshold               = var.cosmos_throttle_ratio_threshold

    failing_periods {
      minimum_failing_periods_to_trigger_alert = 1
      number_of_evaluation_periods             = 1
    }
  }

  action {
    action_groups = [azurerm_monitor_action_group.main.id]
  }

  tags = local.tags

  depends_on = [azurerm_monitor_diagnostic_setting.cosmos]
}
