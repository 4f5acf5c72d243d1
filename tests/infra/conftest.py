"""Shared fixtures of the offline infrastructure checks: the parsed Terraform, the settings the
binary reads (from src/config.rs), the function.json bindings and the workflows.

Run through scripts/check-infra, which installs the tools and sets TERRAFORM, CHECKOV and
ACTIONLINT. A test whose tool is missing fails and says so; nothing is skipped silently.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
WORKFLOWS = ROOT / ".github" / "workflows"
CONFIG_RS = ROOT / "src" / "config.rs"
FUNCTION_DIRS = ("ingest-post", "ingest-consume", "get-user", "health")

# --------------------------------------------------------------------------------------------
# Terraform, parsed with python-hcl2 and normalised: block labels and string literals lose the
# quotes python-hcl2 keeps ("\"users\"" -> "users"), expressions stay as "${...}", and the
# parser's bookkeeping keys (__is_block__, __comments__) are dropped.
# --------------------------------------------------------------------------------------------

_QUOTED = re.compile(r'^"(.*)"$', re.DOTALL)


def _unquote(text: str) -> str:
    match = _QUOTED.match(text)
    return match.group(1).replace('\\"', '"') if match else text


def normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            _unquote(k): normalise(v)
            for k, v in value.items()
            if not (k.startswith("__") and k.endswith("__"))
        }
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, str):
        return _unquote(value)
    return value


class Terraform:
    """The configuration in infra/, merged over its files."""

    def __init__(self, directory: Path):
        self.files = sorted(directory.glob("*.tf"))
        self.text = {path.name: path.read_text() for path in self.files}
        self.resources: dict[str, dict[str, dict]] = {}
        self.resource_file: dict[str, str] = {}
        self.variables: dict[str, dict] = {}
        self.outputs: dict[str, dict] = {}
        self.locals: dict[str, Any] = {}
        self.data: dict[str, dict[str, dict]] = {}
        self.terraform_blocks: list[dict] = []
        self.providers: dict[str, dict] = {}
        for path in self.files:
            with path.open() as handle:
                parsed = normalise(hcl2.load(handle))
            for block in parsed.get("resource", []):
                for rtype, by_name in block.items():
                    for name, body in by_name.items():
                        self.resources.setdefault(rtype, {})[name] = body
                        self.resource_file[f"{rtype}.{name}"] = path.name
            for block in parsed.get("data", []):
                for dtype, by_name in block.items():
                    self.data.setdefault(dtype, {}).update(by_name)
            for block in parsed.get("variable", []):
                self.variables.update(block)
            for block in parsed.get("output", []):
                self.outputs.update(block)
            for block in parsed.get("locals", []):
                self.locals.update(block)
            for block in parsed.get("provider", []):
                self.providers.update(block)
            self.terraform_blocks.extend(parsed.get("terraform", []))

    def resource(self, address: str) -> dict:
        rtype, name = address.split(".", 1)
        assert name in self.resources.get(rtype, {}), f"infra/ declares no resource {address}"
        return self.resources[rtype][name]

    def only(self, rtype: str) -> tuple[str, dict]:
        found = self.resources.get(rtype, {})
        assert len(found) == 1, f"expected exactly one {rtype}, found {sorted(found)}"
        return next(iter(found.items()))

    def all_resources(self) -> list[tuple[str, str, dict]]:
        return [(t, n, body) for t, by_name in self.resources.items() for n, body in by_name.items()]


def block(body: dict, name: str) -> dict:
    """The single nested block `name` of a resource body (python-hcl2 gives a list of them)."""
    blocks = body.get(name)
    assert isinstance(blocks, list) and len(blocks) == 1, f"expected one {name} block, got {blocks!r}"
    return blocks[0]


def dynamic_block(body: dict, name: str) -> dict:
    for entry in body.get("dynamic", []):
        if name in entry:
            return entry[name]
    raise AssertionError(f"expected a dynamic {name} block")


def expr(value: Any) -> str:
    """An expression without its ${ } wrapper."""
    assert isinstance(value, str), f"expected an expression, got {value!r}"
    return value[2:-1] if value.startswith("${") and value.endswith("}") else value


@pytest.fixture(scope="session")
def tf() -> Terraform:
    assert INFRA.is_dir(), "infra/ is missing"
    return Terraform(INFRA)


# --------------------------------------------------------------------------------------------
# The settings the binary reads, straight from src/config.rs, so the list cannot drift.
# --------------------------------------------------------------------------------------------


def rust_array(source: str, const_name: str) -> str | None:
    """The text between the brackets of `const NAME: ... = &[ ... ];`, or None if absent."""
    match = re.search(rf"\bconst\s+{const_name}\s*:[^=]*=\s*&\[", source)
    if not match:
        return None
    depth, i, in_string = 1, match.end(), False
    while i < len(source):
        c = source[i]
        if in_string:
            if c == "\\":
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth == 0:
                return source[match.end() : i]
        i += 1
    raise AssertionError(f"unterminated {const_name} array in src/config.rs")


def setting_names(array_text: str) -> list[str]:
    return re.findall(r'\bname\s*:\s*"([^"]+)"', array_text)


def setting_defaults(array_text: str) -> dict[str, str]:
    return dict(re.findall(r'\bname\s*:\s*"([^"]+)",\s*default\s*:\s*"([^"]*)"', array_text))


@pytest.fixture(scope="session")
def config_rs() -> str:
    assert CONFIG_RS.is_file(), "src/config.rs is missing"
    return CONFIG_RS.read_text()


@pytest.fixture(scope="session")
def binary_settings(config_rs: str) -> list[str]:
    """SETTINGS: every environment variable the binary reads."""
    text = rust_array(config_rs, "SETTINGS")
    assert text is not None, "src/config.rs has no `const SETTINGS: &[Setting] = &[...]`"
    names = setting_names(text)
    assert names, "found no `name: \"...\"` entries in SETTINGS of src/config.rs"
    return names


@pytest.fixture(scope="session")
def binary_defaults(config_rs: str) -> dict[str, str]:
    """SETTINGS' defaults, by name."""
    return setting_defaults(rust_array(config_rs, "SETTINGS") or "")


@pytest.fixture(scope="session")
def host_settings(config_rs: str) -> list[str]:
    """HOST_SETTINGS: the settings the Functions host reads on the binary's behalf."""
    text = rust_array(config_rs, "HOST_SETTINGS")
    assert text is not None, (
        "src/config.rs has no `const HOST_SETTINGS: &[Setting] = &[...]` listing the settings the "
        "Functions host reads (the trigger's connection, %SERVICEBUS_SUBSCRIPTION%, FUNCTIONS_WORKER_RUNTIME)"
    )
    names = setting_names(text)
    assert names, "found no `name: \"...\"` entries in HOST_SETTINGS of src/config.rs"
    return names


# --------------------------------------------------------------------------------------------
# Functions host files and workflows.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def function_bindings() -> dict[str, list[dict]]:
    bindings = {}
    for name in FUNCTION_DIRS:
        path = ROOT / name / "function.json"
        assert path.is_file(), f"{name}/function.json is missing"
        bindings[name] = json.loads(path.read_text())["bindings"]
    return bindings


@pytest.fixture(scope="session")
def workflows() -> dict[str, dict]:
    files = sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))
    assert files, ".github/workflows/ holds no workflow"
    loaded = {}
    for path in files:
        document = yaml.safe_load(path.read_text())
        # YAML 1.1 reads the bare key `on` as True.
        if True in document:
            document["on"] = document.pop(True)
        loaded[path.name] = document
    return loaded


def tool(variable: str) -> str:
    """A tool's path from the environment scripts/check-infra sets up, or a failure saying so."""
    path = os.environ.get(variable)
    assert path and Path(path).is_file(), (
        f"${variable} is not set to an installed tool: run the infra checks through scripts/check-infra"
    )
    return path


# --------------------------------------------------------------------------------------------
# checkov's summary, printed above pytest's closing line.
# --------------------------------------------------------------------------------------------

CHECKOV_REPORT: dict[str, Any] = {}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not CHECKOV_REPORT:
        return
    summary = CHECKOV_REPORT["summary"]
    terminalreporter.section("checkov")
    terminalreporter.write_line(
        f"checkov {summary.get('checkov_version', '?')}: {summary['passed']} passed, "
        f"{summary['failed']} failed, {summary['skipped']} skipped, "
        f"{summary['parsing_errors']} parsing errors, {summary['resource_count']} resources"
    )
    for check in CHECKOV_REPORT["failed"]:
        terminalreporter.write_line(f"  FAILED  {check}")
    for check in CHECKOV_REPORT["skipped"]:
        terminalreporter.write_line(f"  skipped {check}")
