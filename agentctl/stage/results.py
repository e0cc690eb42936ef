"""What a stage run found, as data: one Check per thing checked, grouped in suites
(one per host's role suite, one per agent's escape run, idempotence). The report
(JUnit, summary) and the exit code are both made from this and nothing else."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Check:
    name: str
    ok: bool
    classname: str = ""
    seconds: float = 0.0
    message: str = ""          # one line: why it failed (or what was seen)
    details: str = ""          # the long form (a traceback, the evidence)
    skipped: str | None = None  # the written reason, when skipped
    error: bool = False         # broke while checking (JUnit <error>), not a failed check


@dataclass
class Suite:
    name: str
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok and c.skipped is None]

    @property
    def passed(self) -> list[Check]:
        return [c for c in self.checks if c.ok and c.skipped is None]

    @property
    def skipped(self) -> list[Check]:
        return [c for c in self.checks if c.skipped is not None]


@dataclass
class HostRow:
    name: str
    role: str
    address: str
    state: str


@dataclass
class EscapeRow:
    agent: str
    vector: str
    id: str
    what: str
    expect: str
    observed: str
    result: str  # held | ESCAPED | FAILED | info


@dataclass
class ScoreRow:
    host: str
    lynis_index: int | None   # lynis's hardening index (None: lynis gave none)
    lynis: str                # its warnings count, or why there is no index
    ssh_audit: str            # exit code and fail/warn counts


@dataclass
class StageResult:
    stack: str
    cloud: str
    hosts: list[HostRow] = field(default_factory=list)
    suites: list[Suite] = field(default_factory=list)
    escapes: list[EscapeRow] = field(default_factory=list)
    scores: list[ScoreRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.suites) and not any(s.failed for s in self.suites)


def suite_from_pytest_junit(path: Path, name: str) -> Suite:
    """One host's role suite, read back from the JUnit file pytest wrote (--junitxml):
    each <testcase> becomes a Check. A missing or unreadable file is one failed check,
    so a suite that never ran cannot pass."""
    suite = Suite(name)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        suite.checks.append(Check("role suite ran", False, name, message=f"no JUnit report from pytest: {exc}",
                                  error=True))
        return suite
    for case in root.iter("testcase"):
        check = Check(case.get("name", "?"), True, case.get("classname", ""), float(case.get("time") or 0))
        for tag in ("failure", "error"):
            bad = case.find(tag)
            if bad is not None:
                check.ok, check.error = False, tag == "error"
                check.message = ((bad.get("message") or tag).splitlines() or [tag])[0][:300]
                check.details = bad.text or ""
        skip = case.find("skipped")
        if skip is not None and check.ok:
            check.skipped = skip.get("message") or "skipped"
        suite.checks.append(check)
    if not suite.checks:
        suite.checks.append(Check("role suite ran", False, name, message="pytest reported no test", error=True))
    return suite
