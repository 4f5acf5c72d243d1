# Telemetry sinks: a Log Analytics workspace and a workspace-based Application Insights that
# the Functions host (and, later, the binary's OpenTelemetry exporter) write to through
# APPLICATIONINSIGHTS_CONNECTION_STRING. Alerts, SLOs and workbooks belong in this file too,
# in a later change. Retention is the workspace's (log_retention_days).

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
