"""agentctl.stage.report and results: the JUnit file CI systems read (checked against
the Ant/Jenkins JUnit schema in tests/data/junit.xsd) and the summary."""
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agentctl.stage import report
from agentctl.stage.results import Check, EscapeRow, HostRow, StageResult, Suite, suite_from_pytest_junit, ScoreRow

xmlschema = pytest.importorskip("xmlschema", reason="xmlschema is in the test extra")
SCHEMA = Path(__file__).parent / "data" / "junit.xsd"

SUITE_SRC = '''
import pytest
def test_ok(): pass
def test_bad(): assert 1 == 2, "one is not two"
@pytest.mark.skip(reason="not on this host")
def test_skipped(): pass
@pytest.fixture
def broken(): raise RuntimeError("fixture broke")
def test_error(broken): pass
'''


@pytest.fixture(scope="module")
def pytest_junit(tmp_path_factory) -> Path:
    """A JUnit file written by pytest itself (--junitxml), as a role suite writes it."""
    d = tmp_path_factory.mktemp("suite")
    (d / "test_host.py").write_text(SUITE_SRC)
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(d),
                    f"--junitxml={d / 'proxy.xml'}", str(d / "test_host.py")], cwd=d, capture_output=True)
    return d / "proxy.xml"


def test_pytest_junit_read_back(pytest_junit):
    suite = suite_from_pytest_junit(pytest_junit, "role suite: proxy")
    by = {c.name: c for c in suite.checks}
    assert by["test_ok"].ok and by["test_skipped"].skipped == "not on this host"
    assert not by["test_bad"].ok and not by["test_bad"].error and "one is not two" in by["test_bad"].message
    assert not by["test_error"].ok and by["test_error"].error
    assert [c.name for c in suite.failed] == ["test_bad", "test_error"]


def test_a_suite_that_never_ran_fails(tmp_path):
    suite = suite_from_pytest_junit(tmp_path / "missing.xml", "role suite: scout")
    assert suite.failed and "no JUnit report" in suite.failed[0].message


def result(pytest_junit) -> StageResult:
    escape = Suite("escape: scout", [
        Check("ip-evil: https by IP, no proxy", False, "escape.scout", 0.2,
              "ESCAPED: GET https://198.18.0.66/x: expected no-answer, observed 200", "200 <&> \"quoted\""),
        Check("allowed: allowlisted request", True, "escape.scout", 0.2, details="200; upstream saw it")])
    return StageResult("lab", "lab",
                       hosts=[HostRow("proxy", "proxy", "10.77.1.10", "up"), HostRow("scout", "agent", "10.77.2.11", "up")],
                       suites=[suite_from_pytest_junit(pytest_junit, "role suite: proxy"), escape,
                               Suite("idempotence", [Check("scout: converge again changes nothing", True, "idempotence", 3.14159)])],
                       escapes=[EscapeRow("scout", "https by IP, no proxy", "ip-evil", "GET https://198.18.0.66/x",
                                          "no-answer", "200 | reached", "ESCAPED")])


def test_junit_is_valid_against_the_schema(pytest_junit, tmp_path):
    res = result(pytest_junit)
    written = report.write(res, tmp_path / "r", env={})
    assert written == [tmp_path / "r" / "junit.xml", tmp_path / "r" / "summary.md"]
    xmlschema.XMLSchema(str(SCHEMA)).validate(str(tmp_path / "r" / "junit.xml"))


def test_schema_rejects_what_ci_would_not_read(tmp_path):
    """The schema is not a rubber stamp: a testcase without a name, or four decimals
    of time, are refused."""
    schema = xmlschema.XMLSchema(str(SCHEMA))
    bad = [
        '<testsuites><testsuite name="s" tests="1" failures="0" errors="0"><testcase/></testsuite></testsuites>',
        '<testsuites><testsuite name="s" tests="1" failures="0" errors="0">'
        '<testcase name="t" time="0.1234"/></testsuite></testsuites>',
        '<testsuites><testsuite name="s" tests="1"><testcase name="t"/></testsuite></testsuites>',
    ]
    for doc in bad:
        assert not schema.is_valid(doc), doc


def test_junit_names_each_check_and_counts(pytest_junit, tmp_path):
    report.write(result(pytest_junit), tmp_path, env={})
    root = ET.parse(tmp_path / "junit.xml").getroot()
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["role suite: proxy", "escape: scout", "idempotence"]
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("7", "2", "1")
    esc = suites["escape: scout"]
    assert (esc.get("tests"), esc.get("failures")) == ("2", "1")
    failing = esc.find("testcase[@name='ip-evil: https by IP, no proxy']")
    assert failing.get("classname") == "escape.scout"
    assert "ESCAPED" in failing.find("failure").get("message")
    assert failing.find("failure").text == '200 <&> "quoted"'   # escaped on write, intact on read
    proxy = suites["role suite: proxy"]
    assert (proxy.get("failures"), proxy.get("errors"), proxy.get("skipped")) == ("1", "1", "1")
    assert suites["idempotence"].find("testcase").get("time") == "3.142"


def test_summary_shows_hosts_counts_failures_and_the_escape_table(pytest_junit, tmp_path):
    step = tmp_path / "step_summary.md"
    step.write_text("earlier step\n")
    report.write(result(pytest_junit), tmp_path / "r", env={"GITHUB_STEP_SUMMARY": str(step)})
    text = (tmp_path / "r" / "summary.md").read_text()
    assert "## agentctl stage `lab` (lab): FAILED" in text
    assert "| scout | agent | 10.77.2.11 | up |" in text
    assert "| role suite: proxy | 1 | 2 | 1 |" in text and "| escape: scout | 1 | 1 | 0 |" in text
    assert "- **escape: scout**: `ip-evil: https by IP, no proxy`: ESCAPED" in text
    assert "| scout | https by IP, no proxy | GET https://198.18.0.66/x | no-answer | 200 \\| reached | **ESCAPED** |" in text
    assert step.read_text() == "earlier step\n" + text + "\n"   # appended, not replaced


def test_passing_result(tmp_path):
    ok = StageResult("lab", "lab", suites=[Suite("idempotence", [Check("proxy: converge again", True)])])
    assert ok.ok
    assert "passed" in report.summary(ok).splitlines()[0]
    assert not StageResult("lab", "lab").ok   # nothing checked is not a pass


def test_summary_shows_the_scores(tmp_path):
    r = StageResult("lab", "lab", suites=[Suite("scores", [Check("proxy: lynis hardening index", True, "scores")])],
                    scores=[ScoreRow("proxy", 80, "2 warnings", "exit 3: 0 fail, 2 warn (kex: sntrup761x25519)"),
                            ScoreRow("scout", None, "no hardening index (exit 1): x|y", "exit 0: 0 fail, 0 warn")])
    text = report.summary(r)
    assert "### Scores" in text
    assert "| proxy | 80 | 2 warnings | exit 3: 0 fail, 2 warn (kex: sntrup761x25519) |" in text
    assert "| scout | ? | no hardening index (exit 1): x\\|y | exit 0: 0 fail, 0 warn |" in text
