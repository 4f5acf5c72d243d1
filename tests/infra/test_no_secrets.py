"""No secret value in the infrastructure code or the workflows: keys and connection strings
come from resource attributes at apply time and from GitHub secrets at run time."""

from __future__ import annotations

import re

import pytest

from conftest import INFRA, WORKFLOWS

SECRET_PATTERNS = {
    "a storage or Cosmos key": re.compile(r"AccountKey\s*=\s*[A-Za-z0-9+/]"),
    "a SAS key": re.compile(r"SharedAccessKey\s*=\s*[A-Za-z0-9+/]"),
    "a SAS signature": re.compile(r"[?&]sig=[A-Za-z0-9%+/]{10,}"),
    "an Application Insights key": re.compile(r"InstrumentationKey\s*=\s*[0-9a-f]{8}-", re.IGNORECASE),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "a publish profile": re.compile(r"<publishData|userPWD\s*=", re.IGNORECASE),
    "a long base64 value (a key?)": re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{40,}={0,2}(?![A-Za-z0-9+/])"),
    "a password literal": re.compile(r"(?i)\b(password|secret|client_secret)\b\s*[=:]\s*\"[^\"$\s][^\"]*\""),
}
# Ids that identify something rather than grant access: the built-in Cosmos DB data role.
ALLOWED_GUIDS = {"00000000-0000-0000-0000-000000000002"}
GUID = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")


def files():
    return sorted(INFRA.rglob("*.tf")) + sorted(INFRA.rglob("*.tfvars")) + sorted(WORKFLOWS.glob("*.y*ml"))


def findings(text: str) -> list[str]:
    found = [f"{what}: {m.group(0)[:40]}" for what, pattern in SECRET_PATTERNS.items() for m in pattern.finditer(text)]
    found += [f"a literal id (subscription, tenant?): {g}" for g in GUID.findall(text) if g.lower() not in ALLOWED_GUIDS]
    return found


@pytest.mark.parametrize("path", files(), ids=lambda p: p.name)
def test_no_secret_or_account_id_is_written_in(path):
    assert not findings(path.read_text()), f"{path}: {findings(path.read_text())}"


@pytest.mark.parametrize(
    "text",
    [
        'COSMOS_KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="',
        'SERVICEBUS_CONNECTION_STRING = "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=a;SharedAccessKey=abc"',
        'subscription_id = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"',
        'password = "hunter2hunter2"',
    ],
)
def test_the_detector_finds_a_planted_secret(text):
    assert findings(text)


def test_no_state_file_is_kept_next_to_the_code():
    """State holds every connection string in clear: it belongs in the remote backend only."""
    for pattern in ("*.tfstate", "*.tfstate.*", "tfplan", "*.tfplan"):
        assert not list(INFRA.rglob(pattern)), f"infra/ must not hold {pattern}: it carries secrets"


def test_secrets_reach_the_app_from_resource_attributes(tf):
    for name in ("SERVICEBUS_CONNECTION_STRING", "SERVICEBUS_LISTEN_CONNECTION"):
        value = tf.locals["app_settings"][name]
        assert re.fullmatch(r"\$\{azurerm_servicebus_topic_authorization_rule\.\w+\.primary_connection_string\}", value)
    assert tf.locals["app_settings_cosmos_key"]["COSMOS_KEY"] == "${azurerm_cosmosdb_account.main.primary_key}"


def test_workflows_take_credentials_only_from_github_secrets(workflows):
    for name, workflow in workflows.items():
        text = (WORKFLOWS / name).read_text()
        for key in ("publish-profile", "INGEST_API_KEY", "ARM_CLIENT_SECRET", "client-secret"):
            for value in re.findall(rf"{key}\s*:\s*(.+)", text):
                assert re.fullmatch(r"\$\{\{\s*secrets\.[A-Z0-9_]+\s*\}\}", value.strip()), f"{name}: {key} must come from secrets"
