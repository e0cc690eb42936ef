from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentctl.ca import new_ca
from agentctl.render import RenderedHost, render_hosts
from agentctl.stackfile import load

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_STACKS = ["lab", "lab-hermes", "example-aws", "example-hcloud"]


@pytest.fixture(scope="session")
def ca_cert_pem() -> str:
    return new_ca("test CA")[1].decode()


@pytest.fixture(scope="session")
def rendered(ca_cert_pem: str) -> dict[str, list[RenderedHost]]:
    return {s: render_hosts(load(ROOT, s), ca_cert_pem, stack=s) for s in EXAMPLE_STACKS}


class Host:
    """A rendered host, parsed back: what cloud-init would see."""

    def __init__(self, rendered: RenderedHost):
        self.rendered = rendered
        self.doc = yaml.safe_load(rendered.user_data)
        self.files = {f["path"]: f for f in self.doc["write_files"]}

    def file(self, path: str) -> str:
        return self.files[path]["content"]


@pytest.fixture(scope="session")
def hosts(rendered) -> dict[tuple[str, str], Host]:
    return {(stack, h.name): Host(h) for stack, hs in rendered.items() for h in hs}
