"""The Function App's settings against what reads them: SETTINGS and HOST_SETTINGS in
src/config.rs (parsed at test time, so a new setting fails here until it is wired or excluded
with a reason) and the bindings of the function.json files."""

from __future__ import annotations

import re

from conftest import block, expr, rust_array, setting_names

# Settings the binary reads that must NOT become app settings, each with its reason.
NOT_APP_SETTINGS = {
    "FUNCTIONS_CUSTOMHANDLER_PORT": "set by the Functions host itself each time it starts the handler",
    "BIND_ADDRESS": "the host always calls 127.0.0.1, the binary's default; anything else breaks forwarding",
    "DATA_DIR": "embedded backend only (its SQLite files); in Azure the state is in Service Bus and Cosmos DB",
    "INGEST_WORKER": "embedded backend only; in Azure the ingest-consume trigger drains the subscription",
    "SERVICEBUS_ENDPOINT": "tests only: points the Service Bus client at a local peer instead of *.servicebus.windows.net",
    "INGEST_API_KEY": "the Functions host checks function keys itself (authLevel function) before it forwards a request",
}

# Settings the azurerm provider writes from typed arguments of azurerm_linux_function_app
# (writing them in app_settings too would show a change on every plan), and how to find them.
WRITTEN_BY_THE_PROVIDER = {
    "FUNCTIONS_WORKER_RUNTIME": lambda app: block(block(app, "site_config"), "application_stack").get("use_custom_runtime") is True,
    "APPLICATIONINSIGHTS_CONNECTION_STRING": lambda app: block(app, "site_config").get("application_insights_connection_string")
    == "${azurerm_application_insights.main.connection_string}",
    "AzureWebJobsStorage": lambda app: app.get("storage_account_access_key") == "${azurerm_storage_account.functions.primary_access_key}",
    "FUNCTIONS_EXTENSION_VERSION": lambda app: app.get("functions_extension_version") == "~4",
}

# Set only when cosmos_auth = "key" (an absent key means: use the managed identity).
CONDITIONAL = {"COSMOS_KEY"}

# Values that must come from the resource they describe, never a literal.
WIRED_TO = {
    "INGEST_BACKEND": '"azure"',
    "SERVICEBUS_CONNECTION_STRING": "azurerm_servicebus_topic_authorization_rule.api_send.primary_connection_string",
    "SERVICEBUS_LISTEN_CONNECTION": "azurerm_servicebus_topic_authorization_rule.trigger_listen.primary_connection_string",
    "SERVICEBUS_TOPIC": "azurerm_servicebus_topic.users.name",
    "SERVICEBUS_SUBSCRIPTION": "azurerm_servicebus_subscription.ingest_consume.name",
    "MAX_DELIVERY_COUNT": "tostring(azurerm_servicebus_subscription.ingest_consume.max_delivery_count)",
    "COSMOS_ENDPOINT": "azurerm_cosmosdb_account.main.endpoint",
    "COSMOS_DATABASE": "azurerm_cosmosdb_sql_database.main.name",
    "COSMOS_CONTAINER": "azurerm_cosmosdb_sql_container.users.name",
    "COSMOS_DEADLETTER_CONTAINER": "azurerm_cosmosdb_sql_container.deadletters.name",
    "COSMOS_IDEMPOTENCY_CONTAINER": "azurerm_cosmosdb_sql_container.idempotency.name",
    "COSMOS_CREATE_IF_MISSING": '"false"',
    "COSMOS_KEY": "azurerm_cosmosdb_account.main.primary_key",
}


def wired(tf) -> dict[str, str]:
    """Every app setting infra/ can give the app: always, or only with key auth."""
    return {**tf.locals["app_settings"], **tf.locals["app_settings_cosmos_key"]}


def _value(tf, name: str) -> str:
    value = wired(tf)[name]
    return f'"{value}"' if not value.startswith("${") else expr(value)


def unwired(tf, settings: list[str]) -> list[str]:
    """The settings in `settings` that infra/ neither wires nor excludes with a reason."""
    _, app = tf.only("azurerm_linux_function_app")
    missing = []
    for name in settings:
        if name in NOT_APP_SETTINGS:
            continue
        if name in WRITTEN_BY_THE_PROVIDER:
            if not WRITTEN_BY_THE_PROVIDER[name](app):
                missing.append(name)
            continue
        if name not in wired(tf):
            missing.append(name)
    return missing


def test_every_setting_the_binary_reads_is_wired_or_excluded_with_a_reason(tf, binary_settings):
    missing = unwired(tf, binary_settings)
    assert not missing, (
        f"src/config.rs reads {missing} but infra/functionapp.tf gives the app no such setting: add it to "
        "local.app_settings, or to NOT_APP_SETTINGS in tests/infra/test_app_settings.py with the reason"
    )


def test_a_setting_added_to_config_rs_fails_until_it_is_wired(tf):
    source = """
        pub const SETTINGS: &[Setting] = &[
            Setting { name: "MAX_RECORD_BYTES", default: "65536", description: "limit [bytes]; see {docs}" },
            Setting {
                name: "INGEST_API_KEYS",
                default: "",
                description: "a new setting, with ] and { in its text",
            },
        ];
        pub const HOST_SETTINGS: &[Setting] = &[Setting { name: "SERVICEBUS_SUBSCRIPTION", default: "", description: "" }];
    """
    settings = setting_names(rust_array(source, "SETTINGS"))
    assert settings == ["MAX_RECORD_BYTES", "INGEST_API_KEYS"]
    assert setting_names(rust_array(source, "HOST_SETTINGS")) == ["SERVICEBUS_SUBSCRIPTION"]
    assert unwired(tf, settings) == ["INGEST_API_KEYS"]


def test_every_setting_the_functions_host_reads_is_wired(tf, host_settings):
    _, app = tf.only("azurerm_linux_function_app")
    for name in host_settings:
        assert name not in NOT_APP_SETTINGS
        if name in WRITTEN_BY_THE_PROVIDER:
            assert WRITTEN_BY_THE_PROVIDER[name](app), f"{name}: the provider argument that writes it is not set"
        else:
            assert name in tf.locals["app_settings"], f"the Functions host reads {name}: add it to local.app_settings"


def test_every_exclusion_names_a_setting_the_binary_still_reads(binary_settings):
    stale = sorted(set(NOT_APP_SETTINGS) - set(binary_settings))
    assert not stale, f"NOT_APP_SETTINGS lists settings src/config.rs no longer reads: {stale}"


def test_excluded_settings_are_really_left_unset(tf):
    for name, reason in NOT_APP_SETTINGS.items():
        assert name not in wired(tf), f"{name} must not be an app setting: {reason}"


def test_every_app_setting_is_one_something_reads(tf, binary_settings, host_settings):
    """A typo (COSMOS_DATABSE) would leave the real setting at its default."""
    known = set(binary_settings) | set(host_settings)
    unknown = sorted(set(wired(tf)) - known)
    assert not unknown, f"app settings nothing reads (typo?): {unknown}"


def test_the_triggers_connection_and_names_are_app_settings(tf, function_bindings, binary_settings, host_settings):
    referenced = set()
    for function, bindings in function_bindings.items():
        for binding in bindings:
            if "connection" in binding:
                referenced.add(binding["connection"])
            for value in binding.values():
                if isinstance(value, str):
                    referenced.update(re.findall(r"%([A-Za-z0-9_]+)%", value))
    assert {"SERVICEBUS_LISTEN_CONNECTION", "SERVICEBUS_TOPIC", "SERVICEBUS_SUBSCRIPTION"} <= referenced
    for name in referenced:
        assert name in tf.locals["app_settings"], f"a function.json binding uses {name}: it must be an app setting"
        assert name in host_settings or name in binary_settings, f"{name} is missing from src/config.rs"


def test_the_trigger_listens_on_the_subscription_this_terraform_creates(function_bindings):
    (trigger,) = function_bindings["ingest-consume"]
    assert trigger["type"] == "serviceBusTrigger"
    assert trigger["topicName"] == "%SERVICEBUS_TOPIC%"
    assert trigger["subscriptionName"] == "%SERVICEBUS_SUBSCRIPTION%"
    assert trigger["connection"] == "SERVICEBUS_LISTEN_CONNECTION"


def test_settings_take_their_values_from_the_resources_they_describe(tf):
    for name, wanted in WIRED_TO.items():
        assert _value(tf, name) == wanted, f"{name} should be {wanted}, is {_value(tf, name)}"


def test_the_api_publishes_with_the_send_only_rule_and_the_trigger_listens_with_the_listen_only_one(tf):
    rules = tf.resources["azurerm_servicebus_topic_authorization_rule"]
    send_rule = _value(tf, "SERVICEBUS_CONNECTION_STRING").split(".")[1]
    listen_rule = _value(tf, "SERVICEBUS_LISTEN_CONNECTION").split(".")[1]
    assert (rules[send_rule]["send"], rules[send_rule]["listen"], rules[send_rule]["manage"]) == (True, False, False)
    assert (rules[listen_rule]["send"], rules[listen_rule]["listen"], rules[listen_rule]["manage"]) == (False, True, False)


def test_the_cosmos_key_is_set_only_when_key_auth_is_chosen(tf):
    assert set(tf.locals["app_settings_cosmos_key"]) == CONDITIONAL
    for name in CONDITIONAL:
        assert name not in tf.locals["app_settings"]
    _, app = tf.only("azurerm_linux_function_app")
    assert expr(app["app_settings"]) == (
        "merge(local.app_settings, {for name, value in local.app_settings_cosmos_key : name => value if !local.cosmos_keyless})"
    )


def test_the_apps_limits_follow_the_infrastructures(tf):
    settings = tf.locals["app_settings"]
    assert settings["MAX_RECORD_BYTES"] == "${tostring(var.max_record_bytes)}"
    # Service Bus Standard takes messages up to 256 KB including properties.
    for validation in tf.variables["max_record_bytes"]["validation"]:
        upper = re.search(r"var\.max_record_bytes <= (\d+)", validation["condition"])
        if upper:
            assert int(upper.group(1)) <= 200 * 1024
            break
    else:
        raise AssertionError("max_record_bytes needs an upper bound below Service Bus's message size")


# Terraform variables that set a setting the code also defaults: the same value unless a
# difference is meant (then say why here), so a changed default in the code is noticed.
VARIABLE_FOR_SETTING = {
    "MAX_RECORD_BYTES": "max_record_bytes",
    "MAX_DELIVERY_COUNT": "max_delivery_count",
    "RETRY_BACKOFF_MS": "retry_backoff_ms",
    "RETRY_BACKOFF_MAX_MS": "retry_backoff_max_ms",
    "SHUTDOWN_GRACE_SECS": "shutdown_grace_secs",
    "RUST_LOG": "log_level",
    "SERVICEBUS_TIMEOUT_MS": "servicebus_timeout_ms",
    "SERVICEBUS_MAX_ATTEMPTS": "servicebus_max_attempts",
    "COSMOS_TIMEOUT_MS": "cosmos_timeout_ms",
    "COSMOS_DATABASE": "cosmos_database_name",
    "COSMOS_CONTAINER": "cosmos_container_name",
    "COSMOS_DEADLETTER_CONTAINER": "cosmos_deadletter_container_name",
    "COSMOS_IDEMPOTENCY_CONTAINER": "cosmos_idempotency_container_name",
}
MEANT_TO_DIFFER: dict[str, str] = {}


def test_terraform_defaults_match_the_codes_defaults(tf, binary_defaults):
    for setting, variable in VARIABLE_FOR_SETTING.items():
        if setting in MEANT_TO_DIFFER or setting not in binary_defaults:
            continue
        default = tf.variables[variable]["default"]
        assert str(default) == binary_defaults[setting], (
            f"var.{variable} defaults to {default!r} but src/config.rs defaults {setting} to "
            f"{binary_defaults[setting]!r}: align them or add {setting} to MEANT_TO_DIFFER with the reason"
        )
