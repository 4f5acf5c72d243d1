# Provider configuration, names, tags and the resource group. One file per concern beside it:
# servicebus.tf, cosmos.tf, monitoring.tf, functionapp.tf.

provider "azurerm" {
  # The subscription comes from ARM_SUBSCRIPTION_ID (or `az account set`), never from code.
  features {
    resource_group {
      # Refuse to delete a resource group that still holds resources Terraform did not create.
      prevent_deletion_if_contains_resources = true
    }
  }
}

data "azurerm_client_config" "current" {}

locals {
  # Globally unique names (storage, Service Bus, Cosmos DB, the app's hostname) need a suffix.
  # It is derived, not random: the same subscription, project and environment always give the
  # same names, so a re-apply never renames anything and no extra provider is needed.
  suffix = substr(sha256("${data.azurerm_client_config.current.subscription_id}/${var.project}/${var.environment}"), 0, 6)
  stem   = "${var.project}-${var.environment}"

  names = {
    resource_group       = "rg-${local.stem}"
    storage_account      = substr("st${var.project}${var.environment}${local.suffix}", 0, 24)
    servicebus_namespace = "sb-${local.stem}-${local.suffix}"
    cosmos_account       = "cosmos-${local.stem}-${local.suffix}"
    log_analytics        = "log-${local.stem}"
    application_insights = "appi-${local.stem}"
    service_plan         = "asp-${local.stem}"
    function_app         = "func-${local.stem}-${local.suffix}"
  }

  tags = merge(var.tags, {
    project     = var.project
    environment = var.environment
    managed-by  = "terraform"
    repository  = "data-ingestion-api"
  })
}

resource "azurerm_resource_group" "main" {
  name     = local.names.resource_group
  location = var.location
  tags     = local.tags
}
