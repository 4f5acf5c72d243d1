# The operators' dashboard, as code: an Application Insights workbook (listed under the
# Application Insights resource > Workbooks). It shows what the alerts watch, over a chosen time
# range: SLO attainment and error budget, processing time, queue depth, error rate and Cosmos
# DB request units. Each KQL query is a local below, so tests/infra checks the metric names it
# reads against src/telemetry/metrics.rs like the alerts' queries.

locals {
  # Workbook metric charts' aggregation codes.
  workbook_aggregation = { sum = 1, minimum = 2, maximum = 3, average = 4, count = 7 }

  workbook_queries = {
    # 30 days whatever the time range: that is the SLOs' period.
    slo_status = <<-KQL
      union
        (${local.slos.availability.events} | extend slo = "${local.slos.availability.title}", target = ${local.slos.availability.target}),
        (${local.slos.message_success.events} | extend slo = "${local.slos.message_success.title}", target = ${local.slos.message_success.target})
      | where timestamp > ago(${local.slo_period_days}d)
      | summarize bad = sum(bad), total = sum(total) by slo, target
      | extend error_ratio = iff(total > 0, bad / total, 0.0)
      | project slo, target, attained = 1.0 - error_ratio, budget_left = 1.0 - error_ratio / (1.0 - target), bad, total
    KQL

    processing_time = <<-KQL
      customMetrics
      | where cloud_RoleName == "${local.app_role_name}" and name == "message_processing_seconds"
      | summarize mean_seconds = sum(valueSum) / sum(valueCount), max_seconds = max(valueMax) by bin(timestamp, 5m)
    KQL

    # Gauges of the embedded backend only (local runs, CI): empty in Azure, where the Service
    # Bus charts above are the queue depth.
    embedded_queue = <<-KQL
      customMetrics
      | where cloud_RoleName == "${local.app_role_name}" and name in ("queue_depth", "dead_letters")
      | summarize value = max(value) by name, bin(timestamp, 5m)
    KQL

    # The binary's 5xx ratio (the alert's source) beside the Functions host's failed
    # invocations, which also count answers the binary never gave (a crash, a timeout).
    error_rate = <<-KQL
      let app = customMetrics
        | where cloud_RoleName == "${local.app_role_name}" and name == "http_requests_total"
        | extend status = toint(customDimensions.status)
        | summarize app_5xx_ratio = sumif(valueSum, status >= 500) / sum(valueSum) by timestamp = bin(timestamp, 5m);
      let host = requests
        | where cloud_RoleName =~ "${azurerm_linux_function_app.main.name}"
        | summarize host_failure_ratio = todouble(sumif(itemCount, success == false)) / sum(itemCount) by timestamp = bin(timestamp, 5m);
      app
      | join kind=fullouter host on timestamp
      | project timestamp = coalesce(timestamp, timestamp1), app_5xx_ratio, host_failure_ratio
      | order by timestamp asc
    KQL

    errors_by_route = <<-KQL
      customMetrics
      | where cloud_RoleName == "${local.app_role_name}" and name == "http_requests_total"
      | extend route = tostring(customDimensions.route), method = tostring(customDimensions.method), status = tostring(customDimensions.status)
      | where toint(status) >= 500
      | summarize answers = sum(valueSum) by route, method, status
      | order by answers desc
    KQL

    cosmos_request_units = <<-KQL
      customMetrics
      | where cloud_RoleName == "${local.app_role_name}" and name == "cosmos_request_charge_total"
      | summarize request_units = sum(valueSum) by op = tostring(customDimensions.op), bin(timestamp, 5m)
    KQL

    cosmos_throttling = <<-KQL
      CDBDataPlaneRequests
      | where _ResourceId =~ "${azurerm_cosmosdb_account.main.id}"
      | summarize throttle_ratio = todouble(countif(StatusCode == 429)) / count() by bin(TimeGenerated, 5m)
    KQL
  }

  workbook_app_insights = {
    queryType               = 0
    resourceType            = "microsoft.insights/components"
    crossComponentResources = [azurerm_application_insights.main.id]
  }

  workbook_items = [
    {
      type = 1
      name = "header"
      content = {
        json = join("\n", [
          "## ${local.stem}: data-ingestion-api operations",
          "What the alerts watch. Every alert and what to do about it: `${local.runbook}` in the repository.",
          "SLOs: availability ${local.slos.availability.target * 100} % of probes of GET /api/health, message success ${local.slos.message_success.target * 100} % of consumed messages, over ${local.slo_period_days} days.",
        ])
      }
    },
    {
      type = 9
      name = "parameters"
      content = {
        version = "KqlParameterItem/1.0"
        parameters = [{
          id      = "time-range"
          version = "KqlParameterItem/1.0"
          name    = "TimeRange"
          label   = "Time range"
          type    = 4
          value   = { durationMs = 86400000 }
          typeSettings = {
            selectableValues = [for hours in [1, 6, 24, 72, 168, 720] : { durationMs = hours * 3600000 }]
          }
        }]
      }
    },
    {
      type = 3
      name = "slo-status"
      content = merge(local.workbook_app_insights, {
        version       = "KqlItem/1.0"
        title         = "SLOs over the last ${local.slo_period_days} days: attainment and error budget left"
        query         = local.workbook_queries.slo_status
        timeContext   = { durationMs = local.slo_period_days * 86400000 }
        visualization = "table"
        size          = 4
      })
    },
    {
      type = 3
      name = "processing-time"
      content = merge(local.workbook_app_insights, {
        version                  = "KqlItem/1.0"
        title                    = "Message processing time, enqueue to stored (s): mean and max per 5 min (alert: mean > 5 s over 15 min)"
        query                    = local.workbook_queries.processing_time
        timeContextFromParameter = "TimeRange"
        visualization            = "timechart"
        size                     = 0
      })
    },
    {
      type = 10
      name = "servicebus-queue-depth"
      content = {
        version                  = "MetricsItem/2.0"
        title                    = "Queue depth: Service Bus active and dead-lettered messages of topic ${azurerm_servicebus_topic.users.name} (alerts: backlog floor > ${var.backlog_alert_threshold} for 15 min, dead letters > 0)"
        resourceType             = "microsoft.servicebus/namespaces"
        resourceIds              = [azurerm_servicebus_namespace.main.id]
        metricScope              = 0
        chartType                = 2
        size                     = 0
        timeContextFromParameter = "TimeRange"
        metrics = [
          for metric in ["ActiveMessages", "DeadletteredMessages"] : {
            namespace   = "microsoft.servicebus/namespaces"
            metric      = "microsoft.servicebus/namespaces--${metric}"
            aggregation = local.workbook_aggregation.maximum
          }
        ]
        filters = [{ id = "1", key = "EntityName", operator = 0, values = [azurerm_servicebus_topic.users.name] }]
      }
    },
    {
      type = 3
      name = "embedded-queue-depth"
      content = merge(local.workbook_app_insights, {
        version                  = "KqlItem/1.0"
        title                    = "Queue depth and dead letters reported by the binary (embedded backend only; empty in Azure)"
        query                    = local.workbook_queries.embedded_queue
        timeContextFromParameter = "TimeRange"
        visualization            = "timechart"
        size                     = 1
      })
    },
    {
      type = 3
      name = "error-rate"
      content = merge(local.workbook_app_insights, {
        version                  = "KqlItem/1.0"
        title                    = "Error rate per 5 min: the binary's 5xx ratio and the host's failed invocations (alert: 5xx > 1 % over 10 min)"
        query                    = local.workbook_queries.error_rate
        timeContextFromParameter = "TimeRange"
        visualization            = "timechart"
        size                     = 0
      })
    },
    {
      type = 3
      name = "errors-by-route"
      content = merge(local.workbook_app_insights, {
        version                  = "KqlItem/1.0"
        title                    = "5xx answers by route, method and status"
        query                    = local.workbook_queries.errors_by_route
        timeContextFromParameter = "TimeRange"
        visualization            = "table"
        size                     = 1
      })
    },
    {
      type = 3
      name = "cosmos-request-units-app"
      content = merge(local.workbook_app_insights, {
        version                  = "KqlItem/1.0"
        title                    = "Cosmos DB request units charged to the binary per 5 min, by operation"
        query                    = local.workbook_queries.cosmos_request_units
        timeContextFromParameter = "TimeRange"
        visualization            = "timechart"
        size                     = 0
      })
    },
    {
      type = 10
      name = "cosmos-request-units-platform"
      content = {
        version                  = "MetricsItem/2.0"
        title                    = "Cosmos DB request units by container, and requests by status code (429 = throttled)"
        resourceType             = "microsoft.documentdb/databaseaccounts"
        resourceIds              = [azurerm_cosmosdb_account.main.id]
        metricScope              = 0
        chartType                = 2
        size                     = 0
        timeContextFromParameter = "TimeRange"
        metrics = [
          {
            namespace   = "microsoft.documentdb/databaseaccounts"
            metric      = "microsoft.documentdb/databaseaccounts-Requests-TotalRequestUnits"
            aggregation = local.workbook_aggregation.sum
            splitBy     = "CollectionName"
          },
          {
            namespace   = "microsoft.documentdb/databaseaccounts"
            metric      = "microsoft.documentdb/databaseaccounts-Requests-TotalRequests"
            aggregation = local.workbook_aggregation.count
            splitBy     = "StatusCode"
          },
        ]
      }
    },
    {
      type = 3
      name = "cosmos-throttling"
      content = {
        version                  = "KqlItem/1.0"
        title                    = "Cosmos DB throttled (429) share of requests per 5 min (alert: > ${var.cosmos_throttle_ratio_threshold * 100} % over 15 min)"
        query                    = local.workbook_queries.cosmos_throttling
        queryType                = 0
        resourceType             = "microsoft.operationalinsights/workspaces"
        crossComponentResources  = [azurerm_log_analytics_workspace.main.id]
        timeContextFromParameter = "TimeRange"
        visualization            = "timechart"
        size                     = 0
      }
    },
  ]
}

resource "azurerm_application_insights_workbook" "operations" {
  # Workbook names are GUIDs; derived, like every other name, so re-applying never renames it.
  name                = uuidv5("url", "https://${local.names.function_app}.azurewebsites.net/workbooks/operations")
  display_name        = "${local.stem}: data-ingestion-api operations"
  description         = "SLOs, processing time, queue depth, error rate and Cosmos DB request units of data-ingestion-api (${var.environment})."
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  # Listed under the Application Insights resource; the provider wants the id in lower case.
  source_id = lower(azurerm_application_insights.main.id)
  category  = "workbook"

  data_json = jsonencode({
    version             = "Notebook/1.0"
    items               = local.workbook_items
    isLocked            = false
    fallbackResourceIds = [azurerm_application_insights.main.id]
  })

  tags = local.tags
}
