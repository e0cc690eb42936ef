"""The shipped .github/workflows/staging.yml: actionlint (really run) and the
properties the staging pipeline promises, read from the file itself."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.labrun import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "staging.yml"
CONFIG = ROOT / ".github" / "actionlint.yaml"


ACTIONLINT_DIR = Path(os.environ.get("AGENTCTL_ACTIONLINT_DIR", "/var/cache/agentctl/actionlint"))
LINT = Path(__file__).parent / "actionlint" / "lint.cjs"


def actionlint(*paths: Path) -> list[dict]:
    """actionlint's errors for the files (rhysd/actionlint as WebAssembly, installed from
    npm by ./dev setup), minus the unknown-label errors for the self-hosted runner labels
    .github/actionlint.yaml declares: the WebAssembly build reads no config file."""
    modules = ACTIONLINT_DIR / "node_modules"
    assert (modules / "@tktco" / "node-actionlint").is_dir(), f"actionlint is not installed in {ACTIONLINT_DIR}: ./dev setup"
    proc = subprocess.run(["node", str(LINT), *map(str, paths)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, NODE_PATH=str(modules)))
    assert proc.returncode == 0, proc.stderr
    labels = (yaml.safe_load(CONFIG.read_text()).get("self-hosted-runner") or {}).get("labels") or []
    return [e for e in json.loads(proc.stdout)
            if not (e["kind"] == "runner-label" and any(e["message"].startswith(f'label "{lb}" is unknown')
                                                        for lb in labels))]


def test_actionlint_passes():
    errors = actionlint(WORKFLOW)
    assert errors == [], "\n".join(f"{e['line']}:{e['column']} {e['message']} [{e['kind']}]" for e in errors)


def test_actionlint_fails_a_broken_workflow(tmp_path):
    """The linter really runs: a copy with a misspelt key and a non-numeric timeout fails, naming both."""
    broken = tmp_path / "staging.yml"
    text = WORKFLOW.read_text()
    assert "    runs-on: ubuntu-24.04\n    timeout-minutes: 60\n" in text
    broken.write_text(text.replace("    runs-on: ubuntu-24.04\n    timeout-minutes: 60\n",
                                   "    runs-onn: ubuntu-24.04\n    timeout-minutes: sixty\n", 1))
    errors = actionlint(broken)
    line = text.splitlines().index("    runs-on: ubuntu-24.04") + 1
    said = {(e["line"], e["kind"], e["message"].partition(". ")[0]) for e in errors}
    assert (line, "syntax-check", 'unexpected key "runs-onn" for "job" section') in said, said
    assert (line + 1, "syntax-check", "expecting a single ${{...}} expression or float number literal, "
                                      "but found plain text node") in said, said


def test_an_undeclared_runner_label_is_still_an_error(tmp_path):
    other = tmp_path / "staging.yml"
    other.write_text(WORKFLOW.read_text().replace("agentctl-lab]", "agentctl-lab-typo]"))
    assert [e["kind"] for e in actionlint(other)] == ["runner-label"]


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


@pytest.mark.parametrize("job", ["aws", "hcloud"])
def test_the_admin_key_comes_from_the_secret_store_before_stage_runs(wf, job):
    """stage verify logs in over the admin path with the key AGENTCTL_SSH_KEY names."""
    steps = wf["jobs"][job]["steps"]
    key = next(i for i, s in enumerate(steps) if "AGENTCTL_SSH_KEY=" in s.get("run", ""))
    run = next(i for i, s in enumerate(steps) if "stage run" in s.get("run", ""))
    assert key < run and steps[key]["env"]["KEY"] == "${{ secrets.STAGING_ADMIN_SSH_KEY }}"
    assert "umask 077" in steps[key]["run"]


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
    network = next(s for s in perms["Statement"] if s["Sid"] == "Network")["Action"]
    # stage verify: the admin path (EC2 Instance Connect Endpoint), host keys from the console, flow-log rejects.
    assert {"ec2-instance-connect:OpenTunnel", "ec2:GetConsoleOutput", "logs:*"} <= set(network)
