"""What matters in infra/, asserted on the parsed Terraform: versions, inputs and outputs,
tags and names, the Service Bus topology, the Cosmos DB layout and access, the Function App's
hardening and monitoring."""

from __future__ import annotations

import re

import pytest

from conftest import block, dynamic_block, expr

COSMOS_DATA_CONTRIBUTOR = "00000000-0000-0000-0000-000000000002"

# Resource types that take tags, and those that cannot (sub-resources). A new type must be put in
# one of the two, so nothing is left untagged by accident.
TAGGABLE = {
    "azurerm_resource_group",
    "azurerm_storage_account",
    "azurerm_service_plan",
    "azurerm_linux_function_app",
    "azurerm_servicebus_namespace",
    "azurerm_cosmosdb_account",
    "azurerm_log_analytics_workspace",
    "azurerm_application_insights",
    "azurerm_monitor_action_group",
    "azurerm_monitor_metric_alert",
    "azurerm_monitor_scheduled_query_rules_alert_v2",
    "azurerm_application_insights_standard_web_test",
    "azurerm_application_insights_workbook",
}
UNTAGGABLE = {
    "azurerm_servicebus_topic",
    "azurerm_servicebus_subscription",
    "azurerm_servicebus_topic_authorization_rule",
    "azurerm_cosmosdb_sql_database",
    "azurerm_cosmosdb_sql_container",
    "azurerm_cosmosdb_sql_role_assignment",
    "azurerm_monitor_diagnostic_setting",
}


# --- versions and provider -------------------------------------------------------------------


def test_terraform_and_the_azurerm_provider_are_pinned_to_a_major_version(tf):
    (settings,) = tf.terraform_blocks
    assert re.search(r">=\s*1\.\d+", settings["required_version"]) and "< 2" in settings["required_version"]
    (providers,) = settings["required_providers"]
    azurerm = providers["azurerm"]
    assert azurerm["source"] == "hashicorp/azurerm"
    assert re.fullmatch(r"~>\s*4\.\d+(\.\d+)?", azurerm["version"]), f"azurerm must be pinned to 4.x, got {azurerm['version']}"
    assert set(providers) == {"azurerm"}, "every provider must be pinned in versions.tf"


def test_state_is_remote_and_uses_entra_id_rather_than_a_storage_key(tf):
    (settings,) = tf.terraform_blocks
    backend = settings["backend"][0]["azurerm"]
    assert backend.get("use_azuread_auth") is True


def test_the_provider_takes_no_subscription_or_credential_from_the_code(tf):
    provider = tf.providers["azurerm"]
    for key in ("subscription_id", "tenant_id", "client_id", "client_secret", "client_certificate_password"):
        assert key not in provider, f"provider azurerm sets {key}: take it from the environment (ARM_*)"


# --- inputs and outputs ----------------------------------------------------------------------


def test_every_variable_is_typed_described_and_validated(tf):
    assert tf.variables
    for name, spec in tf.variables.items():
        assert "type" in spec, f"variable {name} has no type"
        assert len(spec.get("description", "")) >= 20, f"variable {name} needs a description"
        assert spec.get("nullable") is False, f"variable {name} must be nullable = false"
        if spec["type"] == "bool":
            continue  # the type already allows only true or false
        validations = spec.get("validation", [])
        assert validations, f"variable {name} has no validation block"
        for validation in validations:
            assert f"var.{name}" in validation["condition"], f"a validation of {name} does not test var.{name}"
            assert len(validation["error_message"]) >= 20


def test_every_string_default_passes_its_own_validations(tf):
    """regex() and contains() validations, checked against the defaults here rather than at
    the first plan. Every string variable must have one of them."""
    for name, spec in tf.variables.items():
        default = spec.get("default")
        if not isinstance(default, str):
            continue
        checked = 0
        for validation in spec.get("validation", []):
            condition = validation["condition"]
            for pattern in re.findall(r'can\(regex\("((?:[^"\\]|\\.)+)", var\.' + name + r"\)\)", condition):
                pattern = pattern.encode().decode("unicode_escape")
                assert re.search(pattern, default), f"default {default!r} of {name} fails its validation {pattern}"
                checked += 1
            for options in re.findall(r"contains\(\[([^\]]*)\], var\." + name + r"\)", condition):
                assert f'"{default}"' in options, f"default {default!r} of {name} is not one of {options}"
                checked += 1
        assert checked, f"variable {name} has no regex() or contains() validation to check its values"


def test_every_output_is_described_and_none_leaks_a_secret(tf):
    secret_attributes = re.compile(r"(primary|secondary)_(key|access_key|connection_string)|connection_string|instrumentation_key")
    for name, spec in tf.outputs.items():
        assert len(spec.get("description", "")) >= 10, f"output {name} needs a description"
        value = str(spec["value"])
        if secret_attributes.search(value):
            assert spec.get("sensitive") is True, f"output {name} exposes a secret without sensitive = true"


def test_outputs_give_the_function_base_url_and_what_the_deploy_needs(tf):
    base_url = tf.outputs["function_base_url"]["value"]
    assert base_url == "https://${azurerm_linux_function_app.main.default_hostname}"
    for name in ("function_app_name", "resource_group_name", "cosmos_endpoint", "servicebus_namespace_name"):
        assert name in tf.outputs, f"output {name} is missing"


# --- tags and names --------------------------------------------------------------------------


def test_every_taggable_resource_carries_the_common_tags(tf):
    for rtype, name, body in tf.all_resources():
        assert rtype in TAGGABLE | UNTAGGABLE, f"{rtype}: add it to TAGGABLE or UNTAGGABLE in this test"
        if rtype in TAGGABLE:
            assert body.get("tags") == "${local.tags}", f"{rtype}.{name} must set tags = local.tags"
    tags = expr(tf.locals["tags"])
    for key in ("project", "environment", "managed-by"):
        assert re.search(rf"\b{key}\s*=", tags), f"local.tags lacks {key}"


def _max_length(tf, variable: str) -> int:
    """The longest value the variable's `^[a-z][a-z0-9]{m,n}$` validation allows."""
    for validation in tf.variables[variable]["validation"]:
        match = re.search(r"\^\[a-z\]\[a-z0-9\]\{\d+,(\d+)\}\$", validation["condition"])
        if match:
            return 1 + int(match.group(1))
    raise AssertionError(f"variable {variable} has no length-bounding regex validation")


# name -> (longest allowed, pattern Azure enforces)
NAME_RULES = {
    "storage_account": (24, r"[a-z0-9]{3,24}"),
    "servicebus_namespace": (50, r"[a-zA-Z][a-zA-Z0-9-]{4,48}[a-zA-Z0-9]"),
    "cosmos_account": (44, r"[a-z0-9][a-z0-9-]{1,42}[a-z0-9]"),
    # The Functions host id is the first 32 characters of the app's name: keep names within it.
    "function_app": (32, r"[a-z0-9][a-z0-9-]{0,30}[a-z0-9]"),
    "resource_group": (90, r"[-\w._()]{1,90}"),
    "log_analytics": (63, r"[a-zA-Z0-9][a-zA-Z0-9-]{2,61}[a-zA-Z0-9]"),
    "application_insights": (255, r"[^%&\\?/]{1,255}"),
    "service_plan": (60, r"[a-zA-Z0-9-]{1,60}"),
}


def test_resource_names_fit_azures_limits_for_the_longest_allowed_inputs(tf):
    project = "p" * _max_length(tf, "project")
    environment = "e" * _max_length(tf, "environment")
    suffix = "abc123"
    stem = f"{project}-{environment}"
    names = tf.locals["names"]
    assert set(NAME_RULES) == set(names), "a name was added or removed: update NAME_RULES"
    for key, template in names.items():
        text = expr(template)
        substr = re.fullmatch(r'substr\("(.*)", 0, (\d+)\)', text)
        limit = None
        if substr:
            text, limit = substr.group(1), int(substr.group(2))
        name = (
            text.replace("${var.project}", project)
            .replace("${var.environment}", environment)
            .replace("${local.suffix}", suffix)
            .replace("${local.stem}", stem)
        )
        if limit:
            name = name[:limit]
        assert "${" not in name, f"names.{key}: unexpected interpolation in {template}"
        longest, pattern = NAME_RULES[key]
        assert len(name) <= longest and re.fullmatch(pattern, name), f"names.{key} = {name!r} breaks Azure's rule"


def test_the_name_suffix_is_deterministic_so_reapplying_never_renames(tf):
    suffix = expr(tf.locals["suffix"])
    assert "sha256(" in suffix and "random" not in suffix and "timestamp" not in suffix and "uuid" not in suffix
    assert not tf.resources.get("random_string") and not tf.resources.get("random_id")


# --- Service Bus -----------------------------------------------------------------------------


def test_service_bus_namespace_requires_tls_1_2_and_keeps_sas_for_the_design(tf):
    _, namespace = tf.only("azurerm_servicebus_namespace")
    assert namespace["sku"] in ("Standard", "Premium"), "topics need Standard or Premium"
    assert namespace["minimum_tls_version"] == "1.2"
    # The binary's Service Bus client and the trigger authenticate with SAS connection strings.
    assert namespace["local_auth_enabled"] is True


def test_the_topic_drops_duplicate_message_ids(tf):
    _, topic = tf.only("azurerm_servicebus_topic")
    assert topic["requires_duplicate_detection"] is True
    assert topic["duplicate_detection_history_time_window"] == "${var.duplicate_detection_window}"
    assert tf.variables["duplicate_detection_window"]["default"] == "PT10M"


def test_the_subscription_bounds_deliveries_and_dead_letters_expired_messages(tf):
    name, subscription = tf.only("azurerm_servicebus_subscription")
    assert subscription["topic_id"] == "${azurerm_servicebus_topic.users.id}"
    assert subscription["max_delivery_count"] == "${var.max_delivery_count}"
    assert tf.variables["max_delivery_count"]["default"] == 10
    assert subscription["dead_lettering_on_message_expiration"] is True
    assert subscription["name"] == "${var.servicebus_subscription_name}"


def test_authorization_rules_are_topic_scoped_send_only_and_listen_only(tf):
    rules = tf.resources["azurerm_servicebus_topic_authorization_rule"]
    rights = {name: (r["send"], r["listen"], r["manage"]) for name, r in rules.items()}
    assert rights == {"api_send": (True, False, False), "trigger_listen": (False, True, False)}
    for rule in rules.values():
        assert rule["topic_id"] == "${azurerm_servicebus_topic.users.id}"
    assert "azurerm_servicebus_namespace_authorization_rule" not in tf.resources
    everything = "\n".join(tf.text.values())
    assert "default_primary_connection_string" not in everything, "never use the namespace's root (manage) key"
    assert "default_primary_key" not in everything


# --- Cosmos DB -------------------------------------------------------------------------------


@pytest.mark.parametrize("container", ["users", "deadletters", "idempotency"])
def test_containers_are_partitioned_on_id(tf, container):
    body = tf.resource(f"azurerm_cosmosdb_sql_container.{container}")
    assert body["partition_key_paths"] == ["/id"]
    assert body["database_name"] == "${azurerm_cosmosdb_sql_database.main.name}"


def test_container_names_default_to_users_and_deadletters(tf):
    assert tf.resource("azurerm_cosmosdb_sql_container.users")["name"] == "${var.cosmos_container_name}"
    assert tf.resource("azurerm_cosmosdb_sql_container.deadletters")["name"] == "${var.cosmos_deadletter_container_name}"
    assert tf.variables["cosmos_container_name"]["default"] == "users"
    assert tf.variables["cosmos_deadletter_container_name"]["default"] == "deadletters"
    assert tf.resource("azurerm_cosmosdb_sql_container.idempotency")["name"] == "${var.cosmos_idempotency_container_name}"
    assert tf.variables["cosmos_idempotency_container_name"]["default"] == "idempotency"


def test_idempotency_keys_expire_through_per_item_ttl(tf):
    """The app gives each key document a `ttl` of a day; -1 turns per-item TTL on."""
    assert tf.resource("azurerm_cosmosdb_sql_container.idempotency")["default_ttl"] == -1


@pytest.mark.parametrize("container", ["users", "deadletters", "idempotency"])
def test_containers_index_nothing_the_api_does_not_query(tf, container):
    """GET is a point read and export uses the read feed: an indexed path only adds write RUs."""
    policy = block(tf.resource(f"azurerm_cosmosdb_sql_container.{container}"), "indexing_policy")
    assert policy["indexing_mode"] == "consistent"
    assert [p["path"] for p in policy.get("excluded_path", [])] == ["/*"]
    included = [p["path"] for p in policy.get("included_path", [])]
    assert set(included) <= {"/ingestedAt/?"}, f"indexed paths need a query that uses them: {included}"
    for kind in ("composite_index", "spatial_index"):
        assert not policy.get(kind)


def test_cosmos_is_serverless_by_default_with_autoscale_as_an_option(tf):
    assert tf.variables["cosmos_throughput_mode"]["default"] == "serverless"
    assert expr(tf.locals["cosmos_serverless"]) == 'var.cosmos_throughput_mode == "serverless"'
    capabilities = dynamic_block(tf.resource("azurerm_cosmosdb_account.main"), "capabilities")
    assert expr(capabilities["for_each"]) == 'local.cosmos_serverless ? ["EnableServerless"] : []'
    autoscale = dynamic_block(tf.resource("azurerm_cosmosdb_sql_database.main"), "autoscale_settings")
    assert expr(autoscale["for_each"]) == "local.cosmos_serverless ? [] : [var.cosmos_autoscale_max_throughput]"
    for container in tf.resources["azurerm_cosmosdb_sql_container"].values():
        assert "throughput" not in container and "autoscale_settings" not in container and "dynamic" not in container


def test_cosmos_account_disables_keys_when_managed_identity_is_chosen(tf):
    account = tf.resource("azurerm_cosmosdb_account.main")
    assert tf.variables["cosmos_auth"]["default"] == "managed_identity"
    assert expr(tf.locals["cosmos_keyless"]) == 'var.cosmos_auth == "managed_identity"'
    assert account["local_authentication_disabled"] == "${local.cosmos_keyless}"
    assert account["access_key_metadata_writes_enabled"] is False
    assert account["minimal_tls_version"] == "Tls12"


def test_the_apps_identity_gets_the_data_contributor_role_on_the_database_only(tf):
    (name, assignment), *rest = tf.resources["azurerm_cosmosdb_sql_role_assignment"].items()
    assert not rest
    assert expr(assignment["count"]) == "local.cosmos_keyless ? 1 : 0"
    assert assignment["principal_id"] == "${azurerm_linux_function_app.main.identity[0].principal_id}"
    assert tf.locals["cosmos_data_contributor_role_id"] == COSMOS_DATA_CONTRIBUTOR
    assert assignment["role_definition_id"] == (
        "${azurerm_cosmosdb_account.main.id}/sqlRoleDefinitions/${local.cosmos_data_contributor_role_id}"
    )
    assert assignment["scope"] == "${azurerm_cosmosdb_account.main.id}/dbs/${azurerm_cosmosdb_sql_database.main.name}"


# --- the Function App ------------------------------------------------------------------------


def test_the_function_app_runs_the_custom_handler_on_a_linux_consumption_plan(tf):
    _, plan = tf.only("azurerm_service_plan")
    assert plan["os_type"] == "Linux" and plan["sku_name"] == "Y1"
    _, app = tf.only("azurerm_linux_function_app")
    assert app["service_plan_id"] == "${azurerm_service_plan.main.id}"
    assert app["functions_extension_version"] == "~4"
    stack = block(block(app, "site_config"), "application_stack")
    assert stack == {"use_custom_runtime": True}, "FUNCTIONS_WORKER_RUNTIME=custom comes from use_custom_runtime"


def test_the_function_app_is_https_only_tls_1_2_and_ftp_off_with_a_system_identity(tf):
    _, app = tf.only("azurerm_linux_function_app")
    site = block(app, "site_config")
    assert app["https_only"] is True
    assert site["minimum_tls_version"] == "1.2" and site["scm_minimum_tls_version"] == "1.2"
    assert site["ftps_state"] == "Disabled"
    assert app["ftp_publish_basic_authentication_enabled"] is False
    assert app["webdeploy_publish_basic_authentication_enabled"] == "${var.publish_profile_enabled}"
    assert block(app, "identity") == {"type": "SystemAssigned"}


def test_reapplying_does_not_fight_the_code_deployment(tf):
    _, app = tf.only("azurerm_linux_function_app")
    ignored = block(app, "lifecycle")["ignore_changes"]
    for setting in ("WEBSITE_RUN_FROM_PACKAGE", "SCM_DO_BUILD_DURING_DEPLOYMENT", "ENABLE_ORYX_BUILD"):
        assert f'${{app_settings["{setting}"]}}' in ignored, f"the deploy writes {setting}: ignore it"
    settings = tf.locals["app_settings"]
    assert "WEBSITE_RUN_FROM_PACKAGE" not in settings, "the deploy owns WEBSITE_RUN_FROM_PACKAGE"
    # The provider moves these into typed arguments when it reads the app back: setting them in
    # app_settings would show a change on every plan.
    for setting in ("APPLICATIONINSIGHTS_CONNECTION_STRING", "FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsStorage", "FUNCTIONS_EXTENSION_VERSION"):
        assert setting not in settings and setting not in tf.locals["app_settings_cosmos_key"]


def test_the_runtime_storage_account_is_private_to_its_key_and_tls_1_2(tf):
    _, storage = tf.only("azurerm_storage_account")
    assert storage["min_tls_version"] == "TLS1_2"
    assert storage["https_traffic_only_enabled"] is True
    assert storage["allow_nested_items_to_be_public"] is False
    _, app = tf.only("azurerm_linux_function_app")
    assert app["storage_account_name"] == "${azurerm_storage_account.functions.name}"
    assert app["storage_account_access_key"] == "${azurerm_storage_account.functions.primary_access_key}"


def test_application_insights_is_workspace_based_and_wired_to_the_app(tf):
    _, insights = tf.only("azurerm_application_insights")
    _, workspace = tf.only("azurerm_log_analytics_workspace")
    assert insights["workspace_id"] == "${azurerm_log_analytics_workspace.main.id}"
    assert workspace["retention_in_days"] == "${var.log_retention_days}"
    _, app = tf.only("azurerm_linux_function_app")
    site = block(app, "site_config")
    assert site["application_insights_connection_string"] == "${azurerm_application_insights.main.connection_string}"


def test_each_concern_lives_in_its_own_file(tf):
    expected = {
        "azurerm_resource_group": "main.tf",
        "azurerm_servicebus_namespace": "servicebus.tf",
        "azurerm_servicebus_topic": "servicebus.tf",
        "azurerm_servicebus_subscription": "servicebus.tf",
        "azurerm_servicebus_topic_authorization_rule": "servicebus.tf",
        "azurerm_cosmosdb_account": "cosmos.tf",
        "azurerm_cosmosdb_sql_database": "cosmos.tf",
        "azurerm_cosmosdb_sql_container": "cosmos.tf",
        "azurerm_cosmosdb_sql_role_assignment": "cosmos.tf",
        "azurerm_log_analytics_workspace": "monitoring.tf",
        "azurerm_application_insights": "monitoring.tf",
        "azurerm_monitor_action_group": "monitoring.tf",
        "azurerm_monitor_diagnostic_setting": "monitoring.tf",
        "azurerm_monitor_metric_alert": "alerts.tf",
        "azurerm_application_insights_standard_web_test": "slo.tf",
        "azurerm_application_insights_workbook": "workbook.tf",
        "azurerm_storage_account": "functionapp.tf",
        "azurerm_service_plan": "functionapp.tf",
        "azurerm_linux_function_app": "functionapp.tf",
    }
    # Log alerts: the symptom and cause alerts in alerts.tf, the SLO burn-rate alerts in slo.tf.
    by_name = {
        "azurerm_monitor_scheduled_query_rules_alert_v2.slo_burn": "slo.tf",
    }
    for address, filename in tf.resource_file.items():
        rtype = address.split(".")[0]
        if rtype == "azurerm_monitor_scheduled_query_rules_alert_v2":
            wanted = by_name.get(address, "alerts.tf")
        else:
            wanted = expected.get(rtype)
        assert wanted == filename, f"{address} is in {filename}; expected {wanted}"
    for name in ("versions.tf", "variables.tf", "outputs.tf"):
        assert name in tf.text
