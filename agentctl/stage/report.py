"""`--report DIR`: DIR/junit.xml (the Ant/Jenkins JUnit format every CI reads; one
<testsuite> per host's role suite, per agent's escape run, and for idempotence) and
DIR/summary.md (hosts, counts, the escape table, the lynis and ssh-audit scores), appended to $GITHUB_STEP_SUMMARY
when GitHub Actions sets it. Written from a StageResult only."""
from __future__ import annotations

import os
import socket
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

from agentctl.stage.results import StageResult, Suite


def _seconds(value: float) -> str:
    # Three decimals: the Jenkins schema's SUREFIRE_TIME allows no more.
    return f"{value:.3f}"


def junit(result: StageResult) -> ET.ElementTree:
    total = [c for s in result.suites for c in s.checks]
    root = ET.Element("testsuites", {
        "name": f"agentctl stage {result.stack}",
        "tests": str(len(total)),
        "failures": str(sum(1 for c in total if not c.ok and not c.error and c.skipped is None)),
        "errors": str(sum(1 for c in total if c.error and c.skipped is None)),
        "time": _seconds(sum(c.seconds for c in total)),
    })
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    for suite in result.suites:
        root.append(_suite(suite, stamp))
    ET.indent(root)
    return ET.ElementTree(root)


def _suite(suite: Suite, stamp: str) -> ET.Element:
    el = ET.Element("testsuite", {
        "name": suite.name, "tests": str(len(suite.checks)),
        "failures": str(sum(1 for c in suite.failed if not c.error)),
        "errors": str(sum(1 for c in suite.failed if c.error)),
        "skipped": str(len(suite.skipped)), "time": _seconds(sum(c.seconds for c in suite.checks)),
        "timestamp": stamp, "hostname": socket.gethostname(),
    })
    for c in suite.checks:
        case = ET.SubElement(el, "testcase", {"classname": c.classname or suite.name, "name": c.name,
                                              "time": _seconds(c.seconds)})
        if c.skipped is not None:
            ET.SubElement(case, "skipped", {"message": c.skipped})
        elif not c.ok:
            bad = ET.SubElement(case, "error" if c.error else "failure", {"message": c.message})
            bad.text = c.details or c.message
        elif c.details:
            ET.SubElement(case, "system-out").text = c.details
    return el


def summary(result: StageResult) -> str:
    verdict = "passed" if result.ok else "FAILED"
    lines = [f"## agentctl stage `{result.stack}` ({result.cloud}): {verdict}", ""]
    if result.hosts:
        lines += ["| host | role | address | state |", "|---|---|---|---|"]
        lines += [f"| {h.name} | {h.role} | {h.address} | {h.state} |" for h in result.hosts]
        lines.append("")
    lines += ["| checks | passed | failed | skipped |", "|---|---|---|---|"]
    for s in result.suites:
        lines.append(f"| {s.name} | {len(s.passed)} | {len(s.failed)} | {len(s.skipped)} |")
    lines.append("")
    failed = [(s, c) for s in result.suites for c in s.failed]
    if failed:
        lines += ["### Failed", ""]
        lines += [f"- **{s.name}**: `{c.name}`: {_cell(c.message)}" for s, c in failed]
        lines.append("")
    if result.escapes:
        lines += ["### Escape attempts (as agentuser on each agent host)", "",
                  "| agent | vector | attempt | expected | observed | result |", "|---|---|---|---|---|---|"]
        lines += [f"| {e.agent} | {e.vector} | {_cell(e.what)} | {e.expect} | {_cell(e.observed)} | "
                  f"{'**' + e.result + '**' if e.result in ('ESCAPED', 'FAILED') else e.result} |"
                  for e in result.escapes]
        lines.append("")
    if result.scores:
        lines += ["### Scores", "", "| host | lynis hardening index | lynis | ssh-audit |", "|---|---|---|---|"]
        lines += [f"| {r.host} | {r.lynis_index if r.lynis_index is not None else '?'} | {_cell(r.lynis)} | "
                  f"{_cell(r.ssh_audit)} |" for r in result.scores]
        lines.append("")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:300]


def write(result: StageResult, out_dir: Path, env: dict[str, str] | None = None) -> list[Path]:
    env = os.environ if env is None else env
    out_dir.mkdir(parents=True, exist_ok=True)
    junit_path, summary_path = out_dir / "junit.xml", out_dir / "summary.md"
    junit(result).write(junit_path, encoding="utf-8", xml_declaration=True)
    text = summary(result)
    summary_path.write_text(text)
    written = [junit_path, summary_path]
    step_summary = env.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
        written.append(Path(step_summary))
    return written
