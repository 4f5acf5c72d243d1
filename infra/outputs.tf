# What the deploy, the integration tests and an operator need. No secrets: keys and connection
# strings stay in the state and the app's settings (see docs/deployment.md to fetch them).

output "resource_group_name" {
  description = "Resource group holding every resource of this environment."
  value       = azurerm_resource_group.main.name
}

output "function_app_name" {
  description = "Name of the Function App: the deploy workflow's AZURE_FUNCTIONAPP_NAME variable."
  value       = azurerm_linux_function_app.main.name
}

output "function_app_hostname" {
  description = "Default hostname of the Function App."
  value       = azurerm_linux_function_app.main.default_hostname
}

output "function_base_url" {
  description = "Base URL of the deployed API (INGEST_BASE_URL for the integration tests); routes are under /api."
  value       = "https://${azurerm_linux_function_app.main.default_hostname}"
}

output "function_app_principal_id" {
  description = "Object id of the Function App's system-assigned managed identity."
  value       = azurerm_linux_function_app.main.identity[0].principal_id
}

output "servicebus_namespace_name" {
  description = "Service Bus namespace (for the dead-letter queue: topic/subscriptions/NAME/$DeadLetterQueue)."
  value       = azurerm_servicebus_namespace.main.name
}

output "servicebus_topic_name" {
  description = "Topic the API publishes to."
  value       = azurerm_servicebus_topic.users.name
}

output "servicebus_subscription_name" {
  description = "Subscription the ingest-consume trigger drains."
  value       = azurerm_servicebus_subscription.ingest_consume.name
}

output "cosmos_endpoint" {
  description = "Cosmos DB account endpoint (COSMOS_ENDPOINT)."
  value       = azurerm_cosmosdb_account.main.endpoint
}

output "cosmos_account_name" {
  description = "Cosmos DB account name (for az cosmosdb and az monitor metrics commands in docs/operations.md)."
  value       = azurerm_cosmosdb_account.main.name
}

output "cosmos_database_name" {
  description = "Cosmos DB SQL database."
  value       = azurerm_cosmosdb_sql_database.main.name
}

output "cosmos_containers" {
  description = "Containers of the user documents, the dead letters and the Idempotency-Keys."
  value = {
    users       = azurerm_cosmosdb_sql_container.users.name
    deadletters = azurerm_cosmosdb_sql_container.deadletters.name
    idempotency = azurerm_cosmosdb_sql_container.idempotency.name
  }
}

output "application_insights_name" {
  description = "Application Insights resource the host and the binary send telemetry to."
  value       = azurerm_application_insights.main.name
}

output "log_analytics_workspace_id" {
  description = "Resource id of the Log Analytics workspace behind Application Insights."
  value       = azurerm_log_analytics_workspace.main.id
}

output "log_analytics_workspace_guid" {
  description = "Workspace (customer) id of the Log Analytics workspace, which `az monitor log-analytics query -w` takes."
  value       = azurerm_log_analytics_workspace.main.workspace_id
}

output "action_group_id" {
  description = "Action group every alert notifies (add receivers, or route Sev1 to a pager, here)."
  value       = azurerm_monitor_action_group.main.id
}

output "availability_test_name" {
  description = "Availability test behind the availability SLO (availabilityResults name)."
  value       = azurerm_application_insights_standard_web_test.health.name
}

output "operations_workbook_id" {
  description = "Resource id of the operations workbook (Application Insights > Workbooks)."
  value       = azurerm_application_insights_workbook.operations.id
}
