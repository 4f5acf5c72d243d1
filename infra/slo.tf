# Service level objectives as code, and their multiwindow, multi-burn-rate alerts (Google SRE
# workbook, "Alerting on SLOs"). docs/operations.md derives every number below from the
# targets; tests/infra/test_monitoring.py checks the arithmetic.
#
#   availability     share of availability probes of GET /api/health answered 200 (from
#                    several regions, every 5 minutes), target var.slo_availability_target
#   message success  share of consumed messages with a final outcome that were stored (or
#                    found stale: a newer version was already stored), not dead-lettered;
#                    "retried" is not final and is left out; target var.slo_message_success_target
#
# Error budget: (1 - target) of the events over 30 days. A burn rate is how many times faster
# than "exactly the budget in 30 days" the errors spend it; an alert fires when the error
# ratio exceeds burn_rate x (1 - target) over BOTH a long window (the budget really is being
# spent: 2 % of it in 1 h for the fast burn, 5 % in 6 h for the slow one) and a short window
# of 1/12 of it (it is still being spent now, so the alert resolves soon after the fix).

locals {
  slo_period_days = 30

  slos = {
    availability = {
      title   = "Availability"
      target  = var.slo_availability_target
      runbook = "slo-availability"
      # One row per probe result: bad = a probe that failed after its retry.
      events = <<-KQL
        availabilityResults
        | where name == "${azurerm_application_insights_standard_web_test.health.name}"
        | project timestamp, bad = iff(success == 0, 1.0, 0.0), total = 1.0
      KQL
    }
    message_success = {
      title   = "Message success"
      target  = var.slo_message_success_target
      runbook = "slo-message-success"
      # One row per export of messages_consumed_total by outcome (its increase over 60 s).
      events = <<-KQL
        customMetrics
        | where cloud_RoleName == "${local.app_role_name}" and name == "messages_consumed_total"
        | extend outcome = tostring(customDimensions.outcome)
        | where outcome in ("stored", "stale", "dead_lettered")
        | project timestamp, bad = iff(outcome == "dead_lettered", valueSum, 0.0), total = valueSum
      KQL
    }
  }

  # The workbook's recommended pair for a 30-day budget. Fast: 14.4 x over 1 h spends 2 % of
  # the budget, someone must act now (page). Slow: 6 x over 6 h spends 5 %, it will exhaust
  # the budget in 5 days (ticket). Short windows are 1/12 of the long ones.
  burn_rates = {
    fast = {
      burn_rate            = 14.4
      long_window_hours    = 1
      short_window_minutes = 5
      evaluation_frequency = "PT5M"
      severity             = 1
      response             = "page"
    }
    slow = {
      burn_rate            = 6
      long_window_hours    = 6
      short_window_minutes = 30
      evaluation_frequency = "PT15M"
      severity             = 2
      response             = "ticket"
    }
  }

  # A burn-rate alert needs at least this many bad events in its long window. At 60 probes an
  # hour one failed probe is already a 1.7 % error ratio, above the fast threshold; at night a
  # single poison message among a handful is a 10 % ratio. Three bad events tell an incident
  # from one unlucky probe or message (which the dead-letter alerts ticket anyway), and a real
  # outage produces them within one 5-minute probe round (one per location).
  slo_min_bad_events = 3

  slo_burn_alerts = {
    for pair in setproduct(keys(local.slos), keys(local.burn_rates)) : "${pair[0]}-${pair[1]}" => {
      slo                  = pair[0]
      title                = local.slos[pair[0]].title
      runbook              = local.slos[pair[0]].runbook
      target               = local.slos[pair[0]].target
      burn                 = pair[1]
      burn_rate            = local.burn_rates[pair[1]].burn_rate
      long_window_hours    = local.burn_rates[pair[1]].long_window_hours
      short_window_minutes = local.burn_rates[pair[1]].short_window_minutes
      evaluation_frequency = local.burn_rates[pair[1]].evaluation_frequency
      severity             = local.burn_rates[pair[1]].severity
      response             = local.burn_rates[pair[1]].response
      threshold            = local.burn_rates[pair[1]].burn_rate * (1 - local.slos[pair[0]].target)
      query                = <<-KQL
        ${local.slos[pair[0]].events}
        | where timestamp > ago(${local.burn_rates[pair[1]].long_window_hours}h)
        | summarize bad_long = sum(bad), total_long = sum(total),
                    bad_short = sumif(bad, timestamp > ago(${local.burn_rates[pair[1]].short_window_minutes}m)),
                    total_short = sumif(total, timestamp > ago(${local.burn_rates[pair[1]].short_window_minutes}m))
        | extend ratio_long = iff(total_long > 0, bad_long / total_long, 0.0),
                 ratio_short = iff(total_short > 0, bad_short / total_short, 0.0)
        | extend error_ratio = iff(bad_long >= ${local.slo_min_bad_events}, min_of(ratio_long, ratio_short), 0.0)
        | project error_ratio, ratio_long, ratio_short, bad_long, total_long
      KQL
    }
  }
}

# The availability SLI: GET /api/health from several regions every 5 minutes. The endpoint is
# anonymous and answers 503 when Service Bus or Cosmos DB is unreachable, so a 200 means the
# service can accept and serve records, not merely that the host is up. The probes also keep
# the consumption plan warm (about one request a minute, well inside the free grant).
resource "azurerm_application_insights_standard_web_test" "health" {
  name                    = "webtest-${local.stem}-health"
  description             = "Availability SLI: GET /api/health must answer 200. Runbook: ${local.runbook}#slo-availability"
  resource_group_name     = azurerm_resource_group.main.name
  location                = azurerm_application_insights.main.location
  application_insights_id = azurerm_application_insights.main.id
  geo_locations           = var.availability_test_locations

  # The provider sends false when enabled is left out.
  enabled   = true
  frequency = 300
  # A cold start of the consumption plan plus the backends' checks fits well within 30 s; a
  # slower answer is a failure as a client would see it.
  timeout = 30
  # A failed probe is retried at once (up to twice) before it counts: one dropped connection
  # on the probe's side is not an outage of the service.
  retry_enabled = true

  request {
    url       = "https://${azurerm_linux_function_app.main.default_hostname}/api/health"
    http_verb = "GET"
    # A redirect (to a login page, a parking page) is not the service answering.
    follow_redirects_enabled         = false
    parse_dependent_requests_enabled = false
  }

  validation_rules {
    expected_status_code = 200
    # The probe fails a week before the certificate expires, long before clients do.
    ssl_check_enabled           = true
    ssl_cert_remaining_lifetime = 7
  }

  tags = local.tags
}

resource "azurerm_monitor_scheduled_query_rules_alert_v2" "slo_burn" {
  for_each = local.slo_burn_alerts

  name                = "alert-${local.stem}-slo-${each.key}"
  display_name        = "${local.stem}: ${each.value.title} SLO ${each.value.burn} burn (${each.value.burn_rate}x, ${each.value.response})"
  description         = "${each.value.title} SLO (${each.value.target * 100} % over ${local.slo_period_days} days) burns its error budget at ${each.value.burn_rate}x or faster over ${each.value.long_window_hours} h and ${each.value.short_window_minutes} min. Runbook: ${local.runbook}#${each.value.runbook}"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_application_insights.main.location
  scopes              = [azurerm_application_insights.main.id]

  severity                = each.value.severity
  window_duration         = "PT${each.value.long_window_hours}H"
  evaluation_frequency    = each.value.evaluation_frequency
  auto_mitigation_enabled = true

  criteria {
    query                   = each.value.query
    time_aggregation_method = "Maximum"
    metric_measure_column   = "error_ratio"
    operator                = "GreaterThan"
    threshold               = each.value.threshold

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
