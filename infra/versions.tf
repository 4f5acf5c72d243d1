terraform {
  # 1.9 is the first release whose variable validations may refer to other variables.
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # Minor and patch updates only: every resource and argument here is written for azurerm 4.x.
      # `terraform init` records the exact build in .terraform.lock.hcl; commit that file.
      version = "~> 4.14"
    }
  }

  # Remote state, configured at `terraform init` time (docs/deployment.md): the state holds the
  # Service Bus and storage connection strings, so it lives in a private, encrypted storage
  # account with Entra ID auth and blob leases for locking, never on a laptop or in git.
  backend "azurerm" {
    use_azuread_auth = true
  }
}
