# The store: Cosmos DB for NoSQL. GET /api/users/{id} is a point read (partition key = id,
# ~1 RU), the consumer upserts by id, export walks the read feed: nothing queries by a field.

locals {
  cosmos_serverless = var.cosmos_throughput_mode == "serverless"
  cosmos_keyless    = var.cosmos_auth == "managed_identity"

  # Cosmos DB's built-in "Cosmos DB Built-in Data Contributor" data-plane role: read, write and
  # query items. It grants no control-plane or key access.
  cosmos_data_contributor_role_id = "00000000-0000-0000-0000-000000000002"
}

resource "azurerm_cosmosdb_account" "main" {
  # checkov:skip=CKV_AZURE_99:A consumption-plan Function App has no fixed outbound addresses or VNet integration to filter on; access needs an Entra ID token for the app's identity (account keys are off by default).
  # checkov:skip=CKV_AZURE_101:Public network access is how a consumption-plan Function App reaches the account (no VNet integration); see CKV_AZURE_99.
  # checkov:skip=CKV_AZURE_100:Customer-managed keys need a Key Vault and an extra identity; data is encrypted at rest with Microsoft-managed keys.
  name                = local.names.cosmos_account
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  offer_type          = "Standard"
  kind                = "GlobalDocumentDB"

  # With managed identity (the default) account keys are disabled: only Entra ID principals with
  # a data-plane role assignment can read or write.
  local_authentication_disabled = local.cosmos_keyless
  # Keys, when enabled, cannot be used to change the account's settings.
  access_key_metadata_writes_enabled = false
  minimal_tls_version                = "Tls12"
  public_network_access_enabled      = true
  automatic_failover_enabled         = false
  free_tier_enabled                  = false

  consistency_policy {
    # Read-your-writes for one client session, the cheapest level that a GET after a consume
    # needs in a single region.
    consistency_level = "Session"
  }

  geo_location {
    location          = azurerm_resource_group.main.location
    failover_priority = 0
  }

  dynamic "capabilities" {
    for_each = local.cosmos_serverless ? ["EnableServerless"] : []
    content {
      name = capabilities.value
    }
  }

  backup {
    type                = "Periodic"
    interval_in_minutes = 240
    retention_in_hours  = 8
    storage_redundancy  = "Geo"
  }

  tags = local.tags
}

resource "azurerm_cosmosdb_sql_database" "main" {
  name                = var.cosmos_database_name
  resource_group_name = azurerm_resource_group.main.name
  account_name        = azurerm_cosmosdb_account.main.name

  # Serverless accounts take no throughput; with autoscale the database's RU/s are shared by
  # both containers, so the rarely written deadletters container costs nothing extra.
  dynamic "autoscale_settings" {
    for_each = local.cosmos_serverless ? [] : [var.cosmos_autoscale_max_throughput]
    content {
      max_throughput = autoscale_settings.value
    }
  }
}

resource "azurerm_cosmosdb_sql_container" "users" {
  name                = var.cosmos_container_name
  resource_group_name = azurerm_resource_group.main.name
  account_name        = azurerm_cosmosdb_account.main.name
  database_name       = azurerm_cosmosdb_sql_database.main.name

  # Partition key = id: a GET is a point read (id + partition key, ~1 RU) and every user is its
  # own logical partition, so writes spread evenly and no partition can grow past its 20 GB cap.
  partition_key_paths   = ["/id"]
  partition_key_version = 2

  # Index nothing. GET is a point read and export uses the read feed; neither touches the index,
  # and every indexed path adds RU to each write. The service still indexes id and _ts, which is
  # enough for an operator's "what changed since T" query (use _ts rather than ingestedAt).
  # A future query by field adds its path here, with the write cost measured.
  indexing_policy {
    indexing_mode = "consistent"

    excluded_path {
      path = "/*"
    }
  }
}

resource "azurerm_cosmosdb_sql_container" "deadletters" {
  name                = var.cosmos_deadletter_container_name
  resource_group_name = azurerm_resource_group.main.name
  account_name        = azurerm_cosmosdb_account.main.name
  database_name       = azurerm_cosmosdb_sql_database.main.name

  partition_key_paths   = ["/id"]
  partition_key_version = 2

  # Dead letters are read by id or listed through the read feed by an operator: no index.
  indexing_policy {
    indexing_mode = "consistent"

    excluded_path {
      path = "/*"
    }
  }
}

# Idempotency-Keys: one document per key, claimed with a create (409 when the key is taken),
# each with a `ttl` of one day that the app sets; default_ttl = -1 turns per-item TTL on
# without expiring anything that has none. Point reads and creates only: no index.
resource "azurerm_cosmosdb_sql_container" "idempotency" {
  name                = var.cosmos_idempotency_container_name
  resource_group_name = azurerm_resource_group.main.name
  account_name        = azurerm_cosmosdb_account.main.name
  database_name       = azurerm_cosmosdb_sql_database.main.name

  partition_key_paths   = ["/id"]
  partition_key_version = 2
  default_ttl           = -1

  indexing_policy {
    indexing_mode = "consistent"

    excluded_path {
      path = "/*"
    }
  }
}

# The app's identity may read and write items in this database only (not other databases of
# the account, not the account's settings or keys).
resource "azurerm_cosmosdb_sql_role_assignment" "function_app_data_contributor" {
  count = local.cosmos_keyless ? 1 : 0

  resource_group_name = azurerm_resource_group.main.name
  account_name        = azurerm_cosmosdb_account.main.name
  role_definition_id  = "${azurerm_cosmosdb_account.main.id}/sqlRoleDefinitions/${local.cosmos_data_contributor_role_id}"
  principal_id        = azurerm_linux_function_app.main.identity[0].principal_id
  scope               = "${azurerm_cosmosdb_account.main.id}/dbs/${azurerm_cosmosdb_sql_database.main.name}"
}
