# The topic between acceptance and storage: POST /api/users publishes, the ingest-consume
# trigger drains the subscription. Access is by two topic-scoped SAS rules (the binary's
# Service Bus client and the Functions trigger both take connection strings): the API can only
# send, the trigger can only listen, and neither can manage.

resource "azurerm_servicebus_namespace" "main" {
  # checkov:skip=CKV_AZURE_201:Customer-managed keys need the Premium tier and a Key Vault; messages are encrypted at rest with Microsoft-managed keys and live at most message_ttl.
  # checkov:skip=CKV_AZURE_199:Double (infrastructure) encryption needs Premium with customer-managed keys; see CKV_AZURE_201.
  # checkov:skip=CKV_AZURE_204:A consumption-plan Function App has no VNet integration and so cannot reach a private endpoint; every request needs a SAS signed with a topic-scoped key over TLS 1.2.
  # checkov:skip=CKV_AZURE_202:A namespace identity serves only customer-managed-key encryption, which Standard does not offer; the app's own access is by scoped SAS rules.
  # checkov:skip=CKV_AZURE_203:Local (SAS) auth is how the design authenticates: the binary's Service Bus client (azure_messaging_servicebus) supports only shared access keys. The keys are topic-scoped and send-only or listen-only.
  name                = local.names.servicebus_namespace
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  # Topics need Standard or Premium; Premium (VNet, customer-managed keys) is a later decision.
  sku                           = "Standard"
  minimum_tls_version           = "1.2"
  local_auth_enabled            = true
  public_network_access_enabled = true

  tags = local.tags
}

resource "azurerm_servicebus_topic" "users" {
  name         = var.servicebus_topic_name
  namespace_id = azurerm_servicebus_namespace.main.id

  # A client that retries a POST whose 202 was lost publishes the same MessageId again; the
  # topic drops it within this window. The binary must never derive MessageId from the user id
  # alone, or a second update of the same user inside the window would vanish.
  requires_duplicate_detection            = true
  duplicate_detection_history_time_window = var.duplicate_detection_window

  default_message_ttl   = var.message_ttl
  max_size_in_megabytes = 1024
  partitioning_enabled  = false
}

resource "azurerm_servicebus_subscription" "ingest_consume" {
  name     = var.servicebus_subscription_name
  topic_id = azurerm_servicebus_topic.users.id

  # After max_delivery_count failed deliveries (a non-2xx answer from the handler) the message
  # moves to the subscription's dead-letter queue instead of being retried forever; the binary
  # receives the same count as MAX_DELIVERY_COUNT and parks the record with its reason in the
  # deadletters container on the last attempt.
  max_delivery_count = var.max_delivery_count

  # An expired message is dead-lettered, never silently dropped: a 202 promised it would be stored.
  dead_lettering_on_message_expiration      = true
  dead_lettering_on_filter_evaluation_error = true
  default_message_ttl                       = var.message_ttl

  # The host renews the lock while an invocation runs (host.json maxAutoLockRenewalDuration).
  lock_duration              = "PT1M"
  batched_operations_enabled = true
}

# Send-only, for POST /api/users (SERVICEBUS_CONNECTION_STRING).
resource "azurerm_servicebus_topic_authorization_rule" "api_send" {
  name     = "api-send"
  topic_id = azurerm_servicebus_topic.users.id
  send     = true
  listen   = false
  manage   = false
}

# Listen-only, for the ingest-consume trigger (SERVICEBUS_LISTEN_CONNECTION).
resource "azurerm_servicebus_topic_authorization_rule" "trigger_listen" {
  name     = "trigger-listen"
  topic_id = azurerm_servicebus_topic.users.id
  send     = false
  listen   = true
  manage   = false
}
