# The Function App: one Rust binary as the custom handler (host.json), on a Linux consumption
# plan. Its storage account holds only the Functions runtime's state (leases, host keys) and the
# deployment package.

resource "azurerm_storage_account" "functions" {
  # checkov:skip=CKV_AZURE_33:No queues are used: the trigger is Service Bus; the runtime's queue service logs would only record its own lease traffic.
  # checkov:skip=CKV_AZURE_59:A consumption-plan Function App reaches its storage over the public endpoint (no VNet integration); access needs the account key over HTTPS with TLS 1.2.
  # checkov:skip=CKV_AZURE_35:Default-deny network rules would lock out the consumption plan's runtime, which has no fixed outbound addresses; see CKV_AZURE_59.
  # checkov:skip=CKV2_AZURE_33:Private endpoints are unreachable from a consumption-plan Function App; see CKV_AZURE_59.
  # checkov:skip=CKV2_AZURE_1:Customer-managed keys need a Key Vault; the account holds only runtime state and the deployment package, encrypted with Microsoft-managed keys.
  # checkov:skip=CKV_AZURE_206:Zone-redundant (ZRS) by default; geo-replication buys nothing here: the account holds only runtime state and the deployment package, which a redeploy recreates.
  # checkov:skip=CKV2_AZURE_40:The Linux consumption plan's runtime and zip deploy authenticate to AzureWebJobsStorage with the account key (identity-based storage is not supported for its content and packages).
  name                     = local.names.storage_account
  resource_group_name      = azurerm_resource_group.main.name
  location                 = azurerm_resource_group.main.location
  account_kind             = "StorageV2"
  account_tier             = "Standard"
  account_replication_type = var.storage_replication_type

  min_tls_version                   = "TLS1_2"
  https_traffic_only_enabled        = true
  allow_nested_items_to_be_public   = false
  shared_access_key_enabled         = true
  public_network_access_enabled     = true
  local_user_enabled                = false
  infrastructure_encryption_enabled = true
  cross_tenant_replication_enabled  = false

  # SAS tokens are only minted by the platform (for the deployment package); log any that
  # outlive a week rather than block them.
  sas_policy {
    expiration_period = "7.00:00:00"
    expiration_action = "Log"
  }

  blob_properties {
    delete_retention_policy {
      days = 7
    }
    container_delete_retention_policy {
      days = 7
    }
  }

  tags = local.tags
}

resource "azurerm_service_plan" "main" {
  # checkov:skip=CKV_AZURE_211:The design is a consumption (Y1) plan: pay per execution, scale to zero. A dedicated plan is a cost decision, not a security one.
  # checkov:skip=CKV_AZURE_212:A consumption plan has no fixed instance count; the platform scales out on demand.
  # checkov:skip=CKV_AZURE_225:Zone redundancy is not offered on the consumption plan.
  name                = local.names.service_plan
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  os_type             = "Linux"
  sku_name            = "Y1"
  tags                = local.tags
}

locals {
  # Every setting the binary reads that has a meaning in Azure (tests/infra checks this list
  # against SETTINGS and HOST_SETTINGS in src/config.rs). Values come from the resources above,
  # so a renamed topic or container cannot leave the app pointing at the old one.
  app_settings = {
    # The binary: which adapters, and its limits.
    INGEST_BACKEND   = "azure"
    MAX_RECORD_BYTES = tostring(var.max_record_bytes)
    # A batch must fit the Functions host's request limit (100 MB) by far, and its messages
    # are sent to Service Bus in batch sends of at most 256 KB each.
    MAX_BATCH_BYTES   = "1048576"
    MAX_BATCH_RECORDS = "500"
    # The host is the only client (over loopback), but its concurrency is not ours to trust:
    # the caps still bound memory, and slow bodies from the internet reach us through it.
    MAX_CONNECTIONS      = "1024"
    MAX_IN_FLIGHT        = "512"
    HEADER_TIMEOUT_MS    = "10000"
    BODY_TIMEOUT_MS      = "30000"
    MAX_DELIVERY_COUNT   = tostring(azurerm_servicebus_subscription.ingest_consume.max_delivery_count)
    RETRY_BACKOFF_MS     = tostring(var.retry_backoff_ms)
    RETRY_BACKOFF_MAX_MS = tostring(var.retry_backoff_max_ms)
    SHUTDOWN_GRACE_SECS  = tostring(var.shutdown_grace_secs)
    # A store outage is waited out inside an invocation this long before the host redelivers:
    # with 10 deliveries, Cosmos DB may be away ~5 minutes before anything is dead-lettered.
    # Well inside the Service Bus lock (auto-renewed by the host) and the function timeout.
    CONSUME_RETRY_BUDGET_MS = "30000"
    RUST_LOG                = var.log_level

    # Telemetry: metrics reach Application Insights once a minute, which the alert and SLO
    # windows in alerts.tf and slo.tf assume (the shortest, 5 minutes, sees five exports).
    TELEMETRY_EXPORT_INTERVAL_MS = tostring(local.telemetry_export_interval_ms)

    # Publishing: the send-only rule (no listen, no manage).
    SERVICEBUS_CONNECTION_STRING = azurerm_servicebus_topic_authorization_rule.api_send.primary_connection_string
    SERVICEBUS_TOPIC             = azurerm_servicebus_topic.users.name
    SERVICEBUS_TIMEOUT_MS        = tostring(var.servicebus_timeout_ms)
    SERVICEBUS_MAX_ATTEMPTS      = tostring(var.servicebus_max_attempts)

    # The ingest-consume trigger (read by the Functions host, ingest-consume/function.json): the
    # listen-only rule, and the subscription named as %SERVICEBUS_SUBSCRIPTION%.
    SERVICEBUS_LISTEN_CONNECTION = azurerm_servicebus_topic_authorization_rule.trigger_listen.primary_connection_string
    SERVICEBUS_SUBSCRIPTION      = azurerm_servicebus_subscription.ingest_consume.name

    # The store. cosmos.tf creates the database and containers (a data-plane role could not),
    # so the binary must not try.
    COSMOS_ENDPOINT              = azurerm_cosmosdb_account.main.endpoint
    COSMOS_DATABASE              = azurerm_cosmosdb_sql_database.main.name
    COSMOS_CONTAINER             = azurerm_cosmosdb_sql_container.users.name
    COSMOS_DEADLETTER_CONTAINER  = azurerm_cosmosdb_sql_container.deadletters.name
    COSMOS_IDEMPOTENCY_CONTAINER = azurerm_cosmosdb_sql_container.idempotency.name
    COSMOS_CREATE_IF_MISSING     = "false"
    COSMOS_TIMEOUT_MS            = tostring(var.cosmos_timeout_ms)
  }

  # Only with cosmos_auth = "key": an absent COSMOS_KEY makes the binary use the app's managed
  # identity, and account keys are disabled then.
  app_settings_cosmos_key = {
    COSMOS_KEY = azurerm_cosmosdb_account.main.primary_key
  }
}

resource "azurerm_linux_function_app" "main" {
  # checkov:skip=CKV_AZURE_221:A consumption-plan app cannot use private endpoints; callers authenticate with function keys over HTTPS only.
  name                        = local.names.function_app
  resource_group_name         = azurerm_resource_group.main.name
  location                    = azurerm_resource_group.main.location
  service_plan_id             = azurerm_service_plan.main.id
  storage_account_name        = azurerm_storage_account.functions.name
  storage_account_access_key  = azurerm_storage_account.functions.primary_access_key
  functions_extension_version = "~4"

  https_only                    = true
  public_network_access_enabled = true
  builtin_logging_enabled       = false

  # FTP never; SCM basic auth only while deploys use a publish profile (publish_profile_enabled).
  ftp_publish_basic_authentication_enabled       = false
  webdeploy_publish_basic_authentication_enabled = var.publish_profile_enabled

  identity {
    type = "SystemAssigned"
  }

  site_config {
    minimum_tls_version     = "1.2"
    scm_minimum_tls_version = "1.2"
    ftps_state              = "Disabled"
    http2_enabled           = true

    # Written by the provider as the APPLICATIONINSIGHTS_CONNECTION_STRING app setting (putting
    # it in app_settings instead makes every plan show a change).
    application_insights_connection_string = azurerm_application_insights.main.connection_string

    # FUNCTIONS_WORKER_RUNTIME=custom: the host starts the binary named in host.json.
    application_stack {
      use_custom_runtime = true
    }
  }

  app_settings = merge(
    local.app_settings,
    { for name, value in local.app_settings_cosmos_key : name => value if !local.cosmos_keyless },
  )

  tags = local.tags

  lifecycle {
    # The deploy (Azure/functions-action, zip deploy) writes these; Terraform must not undo a
    # deploy on the next apply, nor a deploy undo Terraform. Application Insights adds the
    # hidden-link tag when the portal links the resources.
    ignore_changes = [
      app_settings["WEBSITE_RUN_FROM_PACKAGE"],
      app_settings["SCM_DO_BUILD_DURING_DEPLOYMENT"],
      app_settings["ENABLE_ORYX_BUILD"],
      app_settings["WEBSITE_ENABLE_SYNC_UPDATE_SITE"],
      tags["hidden-link: /app-insights-resource-id"],
      tags["hidden-link: /app-insights-instrumentation-key"],
      tags["hidden-link: /app-insights-conn-string"],
    ]
  }
}
