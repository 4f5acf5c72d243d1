# Telemetry sinks and where alerts go: a Log Analytics workspace, a workspace-based Application
# Insights that the Functions host and the binary's exporter write to (through
# APPLICATIONINSIGHTS_CONNECTION_STRING), Cosmos DB's request log, and the action group every
# alert notifies. The alerts are in alerts.tf, the SLOs in slo.tf, the dashboard in
# workbook.tf; docs/operations.md is the runbook. Retention is the workspace's
# (log_retention_days).

locals {
  # cloud_RoleName of the binary's own telemetry (its custom metrics), as opposed to the
  # Functions host's, whose role name is the app's name.
  app_role_name = "data-ingestion-api"

  # How often the binary exports its metrics (TELEMETRY_EXPORT_INTERVAL_MS). Not a variable:
  # the alert windows are built on it, and a slower export would leave the 5-minute windows
  # with one or two points.
  telemetry_export_interval_ms = 60000
}

resource "azurerm_log_analytics_workspace" "main" {
  name                = local.names.log_analytics
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  tags                = local.tags
}

resource "azurerm_application_insights" "main" {
  name                = local.names.application_insights
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  workspace_id        = azurerm_log_analytics_workspace.main.id
  application_type    = "web"
  tags                = local.tags
}

# One action group for every alert. Severity, not the receiver, tells a page (Sev1) from a
# ticket (Sev2/Sev3); routing Sev1 to a pager is an alert processing rule or a second receiver
# away (docs/operations.md). With alert_email empty the group has no receiver: the alerts still
# fire and are listed under Monitor > Alerts, which suits a throwaway environment, and setting
# the address later needs no change to any alert.
resource "azurerm_monitor_action_group" "main" {
  name                = "ag-${local.stem}"
  resource_group_name = azurerm_resource_group.main.name
  # Shown as the sender of emails and SMS; Azure allows 12 characters.
  short_name = substr(local.stem, 0, 12)
  enabled    = true

  dynamic "email_receiver" {
    for_each = var.alert_email == "" ? [] : [var.alert_email]
    content {
      name                    = "operators"
      email_address           = email_receiver.value
      use_common_alert_schema = true
    }
  }

  tags = local.tags
}

# Cosmos DB's per-request log, in the resource-specific table CDBDataPlaneRequests (not the
# legacy AzureDiagnostics), for the throttling-ratio alert: the platform metrics can count 429s
# but a metric alert cannot divide two series, and 429s only matter relative to the traffic.
# The rows also name the operation, container and RU charge of each throttled request, which
# is what an operator needs next. The cost is one row per request (docs/operations.md).
resource "azurerm_monitor_diagnostic_setting" "cosmos" {
  name                           = "to-${local.names.log_analytics}"
  target_resource_id             = azurerm_cosmosdb_account.main.id
  log_analytics_workspace_id     = azurerm_log_analytics_workspace.main.id
  log_analytics_destination_type = "Dedicated"

  enabled_log {
    category = "DataPlaneRequests"
  }
}
