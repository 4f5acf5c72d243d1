# Every input: described, typed and validated, so a typo fails at `terraform plan`, not halfway
# through an apply. Defaults give a working development environment.

variable "project" {
  description = "Short project name used in every resource name (3-10 lower-case letters or digits, starting with a letter). Storage account names allow 24 characters in all."
  type        = string
  default     = "ingest"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{2,9}$", var.project))
    error_message = "project must be 3-10 lower-case letters or digits, starting with a letter."
  }
}

variable "environment" {
  description = "Environment name used in resource names and tags, e.g. dev, test, prod (2-6 lower-case letters or digits, starting with a letter)."
  type        = string
  default     = "dev"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,5}$", var.environment))
    error_message = "environment must be 2-6 lower-case letters or digits, starting with a letter."
  }
}

variable "location" {
  description = "Azure region for every resource, as its programmatic name (e.g. westeurope, eastus2; see `az account list-locations -o table`)."
  type        = string
  default     = "westeurope"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z]+[a-z0-9]*$", var.location)) && length(var.location) <= 30
    error_message = "location must be a region's programmatic name: lower-case letters and digits, no spaces (westeurope, not \"West Europe\")."
  }
}

variable "tags" {
  description = "Extra tags for every resource (owner, cost centre...). project, environment, managed-by and repository are always set."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    condition     = length(var.tags) <= 40
    error_message = "At most 40 extra tags: Azure allows 50 per resource and four are set here."
  }

  validation {
    condition = alltrue([
      for k, v in var.tags : length(k) >= 1 && length(k) <= 512 && length(v) <= 256 && !can(regex("[<>%&\\\\?/]", k))
    ])
    error_message = "Tag names must be 1-512 characters without < > % & \\ ? /, and values at most 256 characters."
  }
}

# --- Service Bus -------------------------------------------------------------------------------

variable "servicebus_topic_name" {
  description = "Name of the topic the API publishes accepted records to (SERVICEBUS_TOPIC)."
  type        = string
  default     = "users"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]{0,48}[a-z0-9]$", var.servicebus_topic_name))
    error_message = "servicebus_topic_name must be 2-50 lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit."
  }
}

variable "servicebus_subscription_name" {
  description = "Name of the topic subscription the ingest-consume trigger drains (SERVICEBUS_SUBSCRIPTION)."
  type        = string
  default     = "ingest-consume"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]{0,48}[a-z0-9]$", var.servicebus_subscription_name))
    error_message = "servicebus_subscription_name must be 2-50 lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit."
  }
}

variable "max_delivery_count" {
  description = "Deliveries of a message before Service Bus dead-letters it. Also given to the binary as MAX_DELIVERY_COUNT, so it parks a record in the deadletters container on the last attempt."
  type        = number
  default     = 10
  nullable    = false

  validation {
    condition     = var.max_delivery_count >= 1 && var.max_delivery_count <= 1000 && floor(var.max_delivery_count) == var.max_delivery_count
    error_message = "max_delivery_count must be a whole number from 1 to 1000 (the range the binary accepts)."
  }
}

variable "duplicate_detection_window" {
  description = "How long the topic remembers a MessageId to drop a duplicate publish (ISO 8601 duration, 20 seconds to 7 days). A client retry after a lost 202 within this window is not delivered twice."
  type        = string
  default     = "PT10M"
  nullable    = false

  validation {
    condition     = can(regex("^P(\\d+D)?(T(\\d+H)?(\\d+M)?(\\d+S)?)?$", var.duplicate_detection_window)) && var.duplicate_detection_window != "P" && var.duplicate_detection_window != "PT"
    error_message = "duplicate_detection_window must be an ISO 8601 duration such as PT10M or P1D."
  }
}

variable "message_ttl" {
  description = "How long an undelivered message lives on the topic and subscription before it expires into the dead-letter queue (ISO 8601 duration)."
  type        = string
  default     = "P14D"
  nullable    = false

  validation {
    condition     = can(regex("^P(\\d+D)?(T(\\d+H)?(\\d+M)?(\\d+S)?)?$", var.message_ttl)) && var.message_ttl != "P" && var.message_ttl != "PT"
    error_message = "message_ttl must be an ISO 8601 duration such as P14D."
  }
}

variable "servicebus_timeout_ms" {
  description = "SERVICEBUS_TIMEOUT_MS: how long the API waits for Service Bus to acknowledge one publish attempt before it retries or answers 503."
  type        = number
  default     = 5000
  nullable    = false

  validation {
    condition     = var.servicebus_timeout_ms >= 100 && var.servicebus_timeout_ms <= 60000 && floor(var.servicebus_timeout_ms) == var.servicebus_timeout_ms
    error_message = "servicebus_timeout_ms must be a whole number of milliseconds from 100 to 60000."
  }
}

variable "servicebus_max_attempts" {
  description = "SERVICEBUS_MAX_ATTEMPTS: publish attempts per request before the API answers 503 with Retry-After."
  type        = number
  default     = 3
  nullable    = false

  validation {
    condition     = var.servicebus_max_attempts >= 1 && var.servicebus_max_attempts <= 10 && floor(var.servicebus_max_attempts) == var.servicebus_max_attempts
    error_message = "servicebus_max_attempts must be a whole number from 1 to 10."
  }
}

# --- Cosmos DB ---------------------------------------------------------------------------------

variable "cosmos_timeout_ms" {
  description = "COSMOS_TIMEOUT_MS: the most one Cosmos DB operation may take, throttling retries included, before the request answers 503 or the message is retried."
  type        = number
  default     = 5000
  nullable    = false

  validation {
    condition     = var.cosmos_timeout_ms >= 1000 && var.cosmos_timeout_ms <= 60000 && floor(var.cosmos_timeout_ms) == var.cosmos_timeout_ms
    error_message = "cosmos_timeout_ms must be a whole number of milliseconds from 1000 to 60000 (the range the binary accepts)."
  }
}

variable "cosmos_auth" {
  description = "How the app authenticates to Cosmos DB: managed_identity (default: the app's system-assigned identity gets the Data Contributor role, account keys are disabled) or key (COSMOS_KEY app setting with the primary key)."
  type        = string
  default     = "managed_identity"
  nullable    = false

  validation {
    condition     = contains(["managed_identity", "key"], var.cosmos_auth)
    error_message = "cosmos_auth must be managed_identity or key."
  }
}

variable "cosmos_throughput_mode" {
  description = "serverless (default: pay per request, up to 5,000 RU/s) or autoscale (provisioned throughput shared by the database's containers, see cosmos_autoscale_max_throughput). Changing it on an existing account REPLACES the account and its data."
  type        = string
  default     = "serverless"
  nullable    = false

  validation {
    condition     = contains(["serverless", "autoscale"], var.cosmos_throughput_mode)
    error_message = "cosmos_throughput_mode must be serverless or autoscale."
  }
}

variable "cosmos_autoscale_max_throughput" {
  description = "Autoscale ceiling in RU/s for the database (used only when cosmos_throughput_mode is autoscale; it scales between 10% of this and this)."
  type        = number
  default     = 1000
  nullable    = false

  validation {
    condition     = var.cosmos_autoscale_max_throughput >= 1000 && var.cosmos_autoscale_max_throughput <= 1000000 && var.cosmos_autoscale_max_throughput % 1000 == 0
    error_message = "cosmos_autoscale_max_throughput must be a multiple of 1000 from 1000 to 1000000."
  }
}

variable "cosmos_database_name" {
  description = "Cosmos DB SQL database name (COSMOS_DATABASE)."
  type        = string
  default     = "ingestion"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$", var.cosmos_database_name))
    error_message = "cosmos_database_name must be 1-63 letters, digits, '_' or '-', starting with a letter or digit."
  }
}

variable "cosmos_container_name" {
  description = "Container of the user documents, partitioned on /id (COSMOS_CONTAINER)."
  type        = string
  default     = "users"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$", var.cosmos_container_name))
    error_message = "cosmos_container_name must be 1-63 letters, digits, '_' or '-', starting with a letter or digit."
  }
}

variable "cosmos_deadletter_container_name" {
  description = "Container of the messages that can never be stored, with their reason (COSMOS_DEADLETTER_CONTAINER)."
  type        = string
  default     = "deadletters"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$", var.cosmos_deadletter_container_name))
    error_message = "cosmos_deadletter_container_name must be 1-63 letters, digits, '_' or '-', starting with a letter or digit."
  }

  validation {
    condition     = var.cosmos_deadletter_container_name != var.cosmos_container_name
    error_message = "cosmos_deadletter_container_name must differ from cosmos_container_name."
  }
}

variable "cosmos_idempotency_container_name" {
  description = "Container where Idempotency-Keys are claimed, one document per key kept a day (COSMOS_IDEMPOTENCY_CONTAINER)."
  type        = string
  default     = "idempotency"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$", var.cosmos_idempotency_container_name))
    error_message = "cosmos_idempotency_container_name must be 1-63 letters, digits, '_' or '-', starting with a letter or digit."
  }

  validation {
    condition     = var.cosmos_idempotency_container_name != var.cosmos_container_name && var.cosmos_idempotency_container_name != var.cosmos_deadletter_container_name
    error_message = "cosmos_idempotency_container_name must differ from the users and dead-letter container names."
  }
}

# --- The Function App --------------------------------------------------------------------------

variable "max_record_bytes" {
  description = "MAX_RECORD_BYTES: largest accepted request body for one record; larger ones get 413. At most 192 KiB, so a record and its message properties fit Service Bus Standard's 256 KB message limit."
  type        = number
  default     = 65536
  nullable    = false

  validation {
    condition     = var.max_record_bytes >= 1024 && var.max_record_bytes <= 196608 && floor(var.max_record_bytes) == var.max_record_bytes
    error_message = "max_record_bytes must be a whole number from 1024 to 196608."
  }
}

variable "retry_backoff_ms" {
  description = "RETRY_BACKOFF_MS: first retry delay of a message that failed for a transient reason; doubles per attempt up to retry_backoff_max_ms."
  type        = number
  default     = 500
  nullable    = false

  validation {
    condition     = var.retry_backoff_ms >= 1 && var.retry_backoff_ms <= 600000 && floor(var.retry_backoff_ms) == var.retry_backoff_ms
    error_message = "retry_backoff_ms must be a whole number of milliseconds from 1 to 600000."
  }
}

variable "retry_backoff_max_ms" {
  description = "RETRY_BACKOFF_MAX_MS: longest retry delay of a failed message."
  type        = number
  default     = 60000
  nullable    = false

  validation {
    condition     = var.retry_backoff_max_ms >= var.retry_backoff_ms && var.retry_backoff_max_ms <= 3600000 && floor(var.retry_backoff_max_ms) == var.retry_backoff_max_ms
    error_message = "retry_backoff_max_ms must be a whole number of milliseconds, at least retry_backoff_ms and at most 3600000."
  }
}

variable "shutdown_grace_secs" {
  description = "SHUTDOWN_GRACE_SECS: how long in-flight requests may take when the host stops the handler (scale-in, restart, deploy)."
  type        = number
  default     = 10
  nullable    = false

  validation {
    condition     = var.shutdown_grace_secs >= 0 && var.shutdown_grace_secs <= 60 && floor(var.shutdown_grace_secs) == var.shutdown_grace_secs
    error_message = "shutdown_grace_secs must be a whole number of seconds from 0 to 60."
  }
}

variable "log_level" {
  description = "RUST_LOG: the binary's log filter in tracing EnvFilter syntax, e.g. info or info,data_ingestion_api=debug."
  type        = string
  default     = "info"
  nullable    = false

  validation {
    condition     = can(regex("^[A-Za-z0-9_:=,.\\-\\[\\]{}]{1,200}$", var.log_level))
    error_message = "log_level must be a tracing EnvFilter directive list such as info or warn,data_ingestion_api=debug."
  }
}

variable "publish_profile_enabled" {
  description = "Allow SCM (Kudu) basic-auth publishing credentials, which the deploy workflow's publish profile needs. Set false once deploys use OpenID Connect (azure/login) instead; FTP publishing is always off."
  type        = bool
  default     = true
  nullable    = false
}

# --- Storage and monitoring --------------------------------------------------------------------

variable "storage_replication_type" {
  description = "Replication of the Functions runtime's storage account (its leases, keys and deployment packages)."
  type        = string
  default     = "ZRS"
  nullable    = false

  validation {
    condition     = contains(["LRS", "ZRS", "GRS", "GZRS", "RAGRS", "RAGZRS"], var.storage_replication_type)
    error_message = "storage_replication_type must be one of LRS, ZRS, GRS, GZRS, RAGRS, RAGZRS (use LRS in a region without availability zones)."
  }
}

variable "log_retention_days" {
  description = "Days the Log Analytics workspace (and so Application Insights) keeps telemetry. The first 31 days are included in the ingestion price."
  type        = number
  default     = 30
  nullable    = false

  validation {
    condition     = var.log_retention_days >= 30 && var.log_retention_days <= 730 && floor(var.log_retention_days) == var.log_retention_days
    error_message = "log_retention_days must be a whole number from 30 to 730."
  }
}

# --- Alerts and SLOs (alerts.tf, slo.tf; docs/operations.md explains each) ---------------------

variable "alert_email" {
  description = "Address the action group emails every alert to. Empty (the default) creates the action group without a receiver: alerts still fire and show under Monitor > Alerts, but notify nobody until an address is set."
  type        = string
  default     = ""
  nullable    = false

  validation {
    condition     = can(regex("^$|^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", var.alert_email)) && length(var.alert_email) <= 254
    error_message = "alert_email must be empty or one email address such as ops@example.com (at most 254 characters)."
  }
}

variable "availability_test_locations" {
  description = "Application Insights availability test locations that probe GET /api/health (location ids such as emea-nl-ams-azr, us-va-ash-azr). Microsoft recommends at least five, so that one region's network trouble is not read as an outage."
  type        = list(string)
  default     = ["emea-nl-ams-azr", "emea-gb-db3-azr", "emea-fr-pra-edge", "us-va-ash-azr", "apac-sg-sin-azr"]
  nullable    = false

  validation {
    condition     = length(var.availability_test_locations) >= 5 && length(var.availability_test_locations) <= 16 && length(distinct(var.availability_test_locations)) == length(var.availability_test_locations)
    error_message = "availability_test_locations must list 5 to 16 distinct locations."
  }

  validation {
    condition     = alltrue([for id in var.availability_test_locations : can(regex("^[a-z]+-[a-z]{2}-[a-z0-9]{3}-(azr|edge)$", id))])
    error_message = "availability_test_locations must be location ids such as emea-nl-ams-azr or us-va-ash-azr, not region names."
  }
}

variable "slo_availability_target" {
  description = "Availability SLO over 30 days: the share of availability-test probes of GET /api/health that must answer 200 (0.999 = 99.9 %, an error budget of 43.2 minutes)."
  type        = number
  default     = 0.999
  nullable    = false

  validation {
    # Below 95 % the fast burn-rate threshold (14.4 x budget) would pass 72 % errors.
    condition     = var.slo_availability_target >= 0.95 && var.slo_availability_target <= 0.9999
    error_message = "slo_availability_target must be a ratio from 0.95 to 0.9999, e.g. 0.999 for 99.9 %."
  }
}

variable "slo_message_success_target" {
  description = "Message success SLO over 30 days: the share of consumed messages with a final outcome (stored or stale) that were not dead-lettered (0.999 = at most one in a thousand)."
  type        = number
  default     = 0.999
  nullable    = false

  validation {
    condition     = var.slo_message_success_target >= 0.95 && var.slo_message_success_target <= 0.9999
    error_message = "slo_message_success_target must be a ratio from 0.95 to 0.9999, e.g. 0.999 for 99.9 %."
  }
}

variable "backlog_alert_threshold" {
  description = "Active messages in the subscription that, if the backlog never drains below them for 15 minutes, raise the backlog alert. Depends on traffic: lower it where traffic is light so a stalled consumer is noticed sooner."
  type        = number
  default     = 500
  nullable    = false

  validation {
    condition     = var.backlog_alert_threshold >= 1 && var.backlog_alert_threshold <= 1000000 && floor(var.backlog_alert_threshold) == var.backlog_alert_threshold
    error_message = "backlog_alert_threshold must be a whole number of messages from 1 to 1000000."
  }
}

variable "cosmos_throttle_ratio_threshold" {
  description = "Share of Cosmos DB requests answered 429 (throttled) over 15 minutes above which the throttling alert fires. Microsoft calls 1-5 % healthy when latency is fine: the SDK retries them."
  type        = number
  default     = 0.05
  nullable    = false

  validation {
    condition     = var.cosmos_throttle_ratio_threshold > 0 && var.cosmos_throttle_ratio_threshold < 1
    error_message = "cosmos_throttle_ratio_threshold must be a ratio between 0 and 1, e.g. 0.05 for 5 %."
  }
}
