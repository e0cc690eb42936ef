"""Files rendered `compact` (their comment lines dropped, for EC2's 16 KiB of user-data)
are the same program: bash's own parser prints the function made of each script the
same with and without the comments (`declare -f` drops comments, keeps strings verbatim),
so no dropped line sat inside a quoted string. Units: systemd parses them the same."""
from __future__ import annotations

import subprocess

import jinja2
import pytest
import yaml

from agentctl import render
from agentctl.resources import ROLES, TEMPLATES
from agentctl.stackfile import load

from .conftest import EXAMPLE_STACKS, ROOT
from .test_render import _unit


def _compacted() -> list[tuple[str, str, str, str]]:
    """(stack, host, path, full text) of every compact file, rendered without compacting."""
    marked = {i["path"] for m in (TEMPLATES / "files.yaml", *ROLES.glob("*/files.yaml"))
              for i in yaml.safe_load(m.read_text()) if i.get("compact")}
    found = []
    original = render.compact
    try:
        render.compact = lambda text: text  # the full text, to compare with
        for stack in EXAMPLE_STACKS:
            for h in render.render_hosts(load(ROOT, stack), "CA", stack=stack):
                for f in yaml.safe_load(h.user_data)["write_files"]:
                    if f["path"] in marked:
                        found.append((stack, h.name, f["path"], f["content"]))
    finally:
        render.compact = original
    return found


COMPACTED = _compacted()


def _as_function(script: str) -> str:
    out = subprocess.run(["bash", "-c", 'eval "f() {\n$1\n}" && declare -f f', "_", script.split("\n", 1)[1]],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("stack,host,path,text", COMPACTED, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in COMPACTED])
def test_a_compacted_file_is_the_same_program(stack, host, path, text):
    small = render.compact(text)
    assert len(small) < len(text) and small.startswith(text.split("\n", 1)[0])
    if path.endswith((".service", ".timer")):
        full, compacted = _unit(text), _unit(small)
        assert {s: dict(full[s]) for s in full.sections()} == {s: dict(compacted[s]) for s in compacted.sections()}
    else:
        assert _as_function(small) == _as_function(text)


def test_every_compact_file_was_checked():
    assert {p for *_, p, _ in COMPACTED} >= {"/usr/local/sbin/agentctl-converge", "/usr/local/sbin/agentctl-snapshot",
                                            "/etc/systemd/system/agentctl-agent.service",
                                            "/usr/local/sbin/agentctl-runtime-install"}


def test_a_comment_line_inside_a_string_would_be_caught():
    script = "#!/bin/bash\nx='a\n# not a comment\nb'\necho \"$x\"\n"
    assert _as_function(render.compact(script)) != _as_function(script)
