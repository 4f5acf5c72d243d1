"""The GitHub workflows: actionlint clean, and every command they run exists in the repository
with the arguments and outputs the pipeline relies on."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, WORKFLOWS, tool

PACKAGE_TARGET = "x86_64-unknown-linux-musl"
PACKAGE_ZIP = "dist/data-ingestion-api.zip"


def jobs(workflows) -> dict[str, dict]:
    return {f"{file}:{name}": job for file, workflow in workflows.items() for name, job in workflow["jobs"].items()}


def job(workflows, name: str) -> dict:
    found = [j for key, j in jobs(workflows).items() if key.split(":")[1] == name]
    assert len(found) == 1, f"expected one job named {name}, found {len(found)}"
    return found[0]


def runs(job_body: dict) -> str:
    return "\n".join(step.get("run", "") for step in job_body.get("steps", []))


def uses(job_body: dict) -> list[dict]:
    return [step for step in job_body.get("steps", []) if "uses" in step]


def with_tool_path() -> dict[str, str]:
    """actionlint finds shellcheck (from the same virtualenv) on PATH and lints `run:` with it."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(tool('ACTIONLINT')).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_actionlint_finds_nothing(workflows):
    result = subprocess.run(
        [tool("ACTIONLINT"), "-color=false"], capture_output=True, text=True, timeout=120, cwd=ROOT, env=with_tool_path()
    )
    assert result.returncode == 0, f"actionlint:\n{result.stdout}{result.stderr}"


def test_actionlint_runs_shellcheck_on_run_scripts(tmp_path):
    """Without shellcheck actionlint silently skips the shell in `run:`; prove it is there."""
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".github" / "workflows" / "x.yml").write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo $UNQUOTED_VARIABLE\n"
    )
    result = subprocess.run(
        [tool("ACTIONLINT"), "-color=false"], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=with_tool_path()
    )
    assert result.returncode != 0 and "shellcheck" in result.stdout


def test_check_infra_itself_passes_shellcheck():
    shellcheck = Path(tool("ACTIONLINT")).parent / "shellcheck"
    result = subprocess.run([str(shellcheck), "scripts/check-infra"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stdout


def test_every_script_the_workflows_run_exists_and_is_executable(workflows):
    scripts = set()
    for file in workflows:
        scripts.update(re.findall(r"(?<![\w/.])(scripts/[A-Za-z0-9_.-]+)", (WORKFLOWS / file).read_text()))
    assert {"scripts/test", "scripts/package", "scripts/check-infra"} <= scripts
    for script in sorted(scripts):
        path = ROOT / script
        assert path.is_file(), f"the workflows run {script}, which does not exist"
        assert os.access(path, os.X_OK), f"{script} is not executable (git update-index --chmod=+x {script})"


def test_every_action_is_pinned_to_a_release(workflows):
    for key, body in jobs(workflows).items():
        for step in uses(body):
            ref = step["uses"]
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})", ref), f"{key}: pin {ref} to a release"


def test_every_workflow_grants_read_only_by_default(workflows):
    for file, workflow in workflows.items():
        assert workflow.get("permissions") == {"contents": "read"}, f"{file}: set top-level permissions: contents: read"
    for key, body in jobs(workflows).items():
        extra = {k: v for k, v in body.get("permissions", {}).items() if v == "write"}
        assert set(extra) <= {"id-token"}, f"{key} asks for write permissions {extra}"


def test_build_checks_tests_and_packages_the_musl_zip(workflows):
    build = job(workflows, "build")
    script = runs(build)
    assert "cargo fmt --all -- --check" in script
    assert re.search(r"cargo clippy .*-- -D warnings", script)
    assert re.search(r"^scripts/test$", script, re.MULTILINE)
    assert f"--target {PACKAGE_TARGET}" in script or '--target "$PACKAGE_TARGET"' in script
    assert workflows["pipeline.yml"]["env"]["PACKAGE_TARGET"] == PACKAGE_TARGET
    assert re.search(r"rustup .*--target \"\$PACKAGE_TARGET\"", script), "install the musl target"
    assert "musl-tools" in script, "the bundled C code (SQLite) needs musl-gcc"
    (upload,) = [s for s in uses(build) if s["uses"].startswith("actions/upload-artifact@")]
    assert upload["with"]["path"] == PACKAGE_ZIP and upload["with"]["if-no-files-found"] == "error"


def test_deploy_ships_the_built_zip_from_main_with_the_publish_profile(workflows):
    deploy = job(workflows, "deploy")
    assert "build" in deploy["needs"]
    assert "github.ref == 'refs/heads/main'" in deploy["if"] and "github.event_name == 'push'" in deploy["if"]
    assert "pull_request" not in deploy["if"], "a pull request must never deploy"
    (download,) = [s for s in uses(deploy) if s["uses"].startswith("actions/download-artifact@")]
    (upload,) = [s for s in uses(job(workflows, "build")) if s["uses"].startswith("actions/upload-artifact@")]
    assert download["with"]["name"] == upload["with"]["name"]
    (functions,) = [s for s in uses(deploy) if s["uses"].startswith("Azure/functions-action@")]
    assert functions["with"]["package"] == str(Path(download["with"]["path"]) / Path(PACKAGE_ZIP).name)
    assert re.fullmatch(r"\$\{\{ secrets\.[A-Z_]+ \}\}", functions["with"]["publish-profile"])
    assert functions["with"]["app-name"] == "${{ vars.AZURE_FUNCTIONAPP_NAME }}"


def test_integration_runs_the_local_api_suite_against_the_deployment(workflows):
    integration = job(workflows, "integration")
    assert integration["needs"] == ["deploy"]
    assert re.search(r"^cargo test --locked --test api$", runs(integration), re.MULTILINE)
    env = integration["env"]
    assert env["INGEST_BASE_URL"] == "https://${{ vars.AZURE_FUNCTIONAPP_NAME }}.azurewebsites.net"
    assert re.fullmatch(r"\$\{\{ secrets\.[A-Z_]+ \}\}", env["INGEST_API_KEY"])


def test_the_integration_suite_exists_and_reads_the_base_url():
    assert (ROOT / "tests" / "api.rs").is_file(), "tests/api.rs (the black-box API suite) is missing"
    readers = [
        path.relative_to(ROOT)
        for path in (ROOT / "tests").rglob("*.rs")
        if "INGEST_BASE_URL" in path.read_text(errors="replace")
    ]
    assert readers, "no file under tests/ reads INGEST_BASE_URL: the integration job would test a local server"


def test_deploy_and_plan_are_guarded_on_their_configuration_not_failed_without_it(workflows):
    """secrets.* cannot be used in a job's `if`: a job checks them and the guarded job reads its output."""
    for guarded, gate in (("deploy", "azure-config"), ("plan", "azure-credentials")):
        body = job(workflows, guarded)
        assert gate in body["needs"]
        assert f"needs.{gate}.outputs." in body["if"]
        assert "secrets." not in body["if"]


def test_infra_workflow_runs_fmt_checkov_and_a_guarded_plan(workflows):
    static = job(workflows, "static")
    script = runs(static)
    assert "terraform fmt -check -recursive" in script
    assert re.search(r"^scripts/check-infra$", script, re.MULTILINE)
    plan = job(workflows, "plan")
    plan_script = runs(plan)
    assert "terraform init" in plan_script and "terraform plan" in plan_script
    assert plan["permissions"]["id-token"] == "write", "the plan authenticates with OIDC, no client secret"
    assert plan["env"]["ARM_USE_OIDC"] == "true"
    assert "ARM_CLIENT_SECRET" not in plan["env"]


@pytest.mark.parametrize("name", ["pipeline.yml", "infra.yml"])
def test_workflow_has_a_timeout_on_every_job(workflows, name):
    for job_name, body in workflows[name]["jobs"].items():
        assert "timeout-minutes" in body, f"{name}:{job_name} needs timeout-minutes"


def test_the_deployment_guide_explains_every_secret_and_variable_the_workflows_use(workflows):
    guide = (ROOT / "docs" / "deployment.md").read_text()
    names = set()
    for file in workflows:
        names.update(re.findall(r"\b(?:secrets|vars)\.([A-Z][A-Z0-9_]+)", (WORKFLOWS / file).read_text()))
    assert names
    missing = sorted(name for name in names if name not in guide)
    assert not missing, f"docs/deployment.md does not say how to set {missing}"


def test_the_architecture_doc_has_a_mermaid_diagram():
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert re.search(r"^```mermaid\n(flowchart|graph) ", text, re.MULTILINE)
