"""terraform fmt and checkov over infra/, and the rules for checkov's inline skips."""

from __future__ import annotations

import json
import re
import subprocess
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from conftest import CHECKOV_REPORT, INFRA, ROOT, tool

SKIP_COMMENT = re.compile(r"checkov:skip", re.IGNORECASE)
# `# checkov:skip=CKV_AZURE_1:why` (or `//`): an id, a colon and a reason worth reading.
WELL_FORMED_SKIP = re.compile(
    r"^\s*(?:#|//)\s*checkov:skip=(?P<id>CKV2?_[A-Z0-9]+_\d+):(?P<reason>.*\S)\s*$"
)
MIN_REASON_WORDS = 6


def skip_problems(text: str, filename: str) -> list[str]:
    """Every inline skip in `text` that lacks a check id or a real reason."""
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        if not SKIP_COMMENT.search(line):
            continue
        match = WELL_FORMED_SKIP.match(line)
        if not match:
            problems.append(f"{filename}:{number}: not `# checkov:skip=CKV_…:reason`: {line.strip()}")
            continue
        reason = match.group("reason").strip()
        if len(re.findall(r"[A-Za-z]{2,}", reason)) < MIN_REASON_WORDS:
            problems.append(f"{filename}:{number}: {match.group('id')} needs a reason (a sentence): {line.strip()}")
    return problems


def inline_skips() -> list[tuple[str, str, str]]:
    """(resource address, check id, reason) of every inline skip in infra/."""
    found = []
    for path in sorted(INFRA.rglob("*.tf")):
        resource = None
        for line in path.read_text().splitlines():
            header = re.match(r'^(?:resource|data)\s+"([\w-]+)"\s+"([\w-]+)"', line)
            if header:
                resource = f"{header.group(1)}.{header.group(2)}"
            match = WELL_FORMED_SKIP.match(line)
            if match:
                found.append((f"{path.name}: {resource}", match.group("id"), match.group("reason").strip()))
    return found


def terraform_fmt_check(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("TERRAFORM"), "fmt", "-check", "-recursive", "-diff", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_terraform_fmt_finds_nothing_to_change():
    result = terraform_fmt_check(INFRA)
    assert result.returncode == 0, f"terraform fmt -check -recursive infra failed:\n{result.stdout}{result.stderr}"


def test_terraform_fmt_catches_a_misformatted_file_so_the_check_above_means_something(tmp_path):
    (tmp_path / "bad.tf").write_text('resource "x" "y" {\nname="z"\n    tags = {}\n}\n')
    result = terraform_fmt_check(tmp_path)
    assert result.returncode != 0 and "bad.tf" in result.stdout + result.stderr


@pytest.fixture(scope="module")
def checkov_results() -> dict:
    # checkov exits 0 on a file it cannot parse: make sure terraform can parse everything first.
    fmt = terraform_fmt_check(INFRA)
    assert fmt.returncode == 0, f"fix `terraform fmt` first (checkov ignores files it cannot parse):\n{fmt.stdout}{fmt.stderr}"
    result = subprocess.run(
        [tool("CHECKOV"), "--directory", str(INFRA), "--framework", "terraform", "--skip-download", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.stdout.strip(), f"checkov printed nothing (exit {result.returncode}):\n{result.stderr}"
    report = json.loads(result.stdout)
    if isinstance(report, list):  # one report per framework
        (report,) = [r for r in report if r.get("check_type") == "terraform"]
    results = report.get("results", {})
    CHECKOV_REPORT["summary"] = report["summary"]
    CHECKOV_REPORT["failed"] = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}" for c in results.get("failed_checks", [])
    ]
    CHECKOV_REPORT["skipped"] = [
        f"{c['check_id']} {c['resource']}: {(c.get('check_result') or {}).get('suppress_comment', '')}"
        for c in results.get("skipped_checks", [])
    ]
    report["exit_code"] = result.returncode
    return report


def test_checkov_parses_every_resource(checkov_results, tf):
    summary = checkov_results["summary"]
    assert summary["parsing_errors"] == 0, f"checkov could not parse: {checkov_results['results'].get('parsing_errors')}"
    assert summary["resource_count"] == len(tf.all_resources()), "checkov saw a different number of resources than infra/ declares"


def test_checkov_reports_no_failed_check(checkov_results):
    failed = CHECKOV_REPORT["failed"]
    assert not failed and checkov_results["summary"]["failed"] == 0, "checkov failed checks:\n" + "\n".join(failed)
    assert checkov_results["exit_code"] == 0
    assert checkov_results["summary"]["passed"] > 0


def test_every_inline_skip_names_a_check_and_gives_a_reason():
    problems = []
    for path in sorted(INFRA.rglob("*.tf")):
        problems += skip_problems(path.read_text(), path.name)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "line",
    [
        "  # checkov:skip=CKV_AZURE_33",
        "  # checkov:skip=CKV_AZURE_33:",
        "  # checkov:skip=CKV_AZURE_33: not needed",
        "  #checkov:skip=CKV_AZURE_33 because reasons are given here in words",
        "  # checkov:skip=: a reason without any check id to say what is skipped",
    ],
)
def test_a_skip_without_an_id_or_a_reason_is_refused(line):
    assert skip_problems(line, "example.tf")


def test_a_skip_with_an_id_and_a_reason_is_accepted():
    line = "  # checkov:skip=CKV_AZURE_33:No queues are used; the trigger is Service Bus, not storage queues."
    assert skip_problems(line, "example.tf") == []


def test_every_inline_skip_is_one_checkov_actually_applied(checkov_results):
    """A skip of a check that does not apply (a typo, a check that changed) is dead text that
    makes a reviewer believe something was considered."""
    applied = {(c["resource"], c["check_id"]) for c in checkov_results["results"].get("skipped_checks", [])}
    stale = [
        f"{where}: {check_id}"
        for where, check_id, _ in inline_skips()
        if (where.split(": ", 1)[1], check_id) not in applied
    ]
    assert inline_skips(), "expected the inline skips documented in infra/"
    assert not stale, "inline skips checkov did not use (remove them):\n" + "\n".join(stale)


def test_no_check_is_skipped_outside_the_code():
    """Skips live next to the resource with their reason, not in a config file or a flag."""
    for name in (".checkov.yaml", ".checkov.yml"):
        for directory in (ROOT, INFRA):
            assert not (directory / name).exists(), f"{directory / name}: skip checks inline, with a reason"
    script = (ROOT / "scripts" / "check-infra").read_text()
    assert "--skip-check" not in script and "--soft-fail" not in script


def test_the_pinned_checkov_is_the_one_that_runs():
    requirements = (Path(__file__).parent / "requirements-checkov.txt").read_text()
    pinned = re.search(r"^checkov==(\S+)$", requirements, re.MULTILINE)
    assert pinned, "tests/infra/requirements-checkov.txt must pin checkov==VERSION"
    version = subprocess.run([tool("CHECKOV"), "--version"], capture_output=True, text=True, timeout=120)
    assert version.stdout.strip() == pinned.group(1)


def test_python_hcl2_here_is_the_upstream_package_not_checkovs_fork():
    """checkov installs its own fork of python-hcl2 as `hcl2`; these tests need the upstream one."""
    assert packages_distributions().get("hcl2") == ["python-hcl2"]
