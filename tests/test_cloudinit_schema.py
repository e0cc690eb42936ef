"""The real cloud-init accepts what we render, for both distro generations, and
reads the compressed form EC2 gets."""
from __future__ import annotations

import base64

import pytest
import yaml

from agentctl import cloudinit_check
from agentctl.render import render_hosts
from agentctl.userdata import HCLOUD_USER_DATA_LIMIT, ec2_user_data_base64, hcloud_user_data
from agentctl.stackfile import from_config, load

from .conftest import EXAMPLE_STACKS, ROOT

DISTROS = ["debian-12", "ubuntu-24.04"]


@pytest.mark.parametrize("distro", DISTROS)
@pytest.mark.parametrize("stack", EXAMPLE_STACKS)
def test_schema_valid(stack, distro, ca_cert_pem, tmp_path):
    deployment = load(ROOT, stack).model_copy(update={"distro": distro})
    for host in render_hosts(deployment, ca_cert_pem, stack=stack):
        path = tmp_path / f"{host.name}.yaml"
        path.write_text(host.user_data)
        assert cloudinit_check.schema_errors(path, distro) is None, host.name


@pytest.mark.parametrize("distro", DISTROS)
def test_schema_check_can_fail(distro, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("#cloud-config\npower_state: {mode: explode}\n")
    assert "power_state.mode" in cloudinit_check.schema_errors(path, distro)


@pytest.mark.parametrize("distro", DISTROS)
def test_cloud_init_reads_compressed_user_data(rendered, distro, tmp_path):
    host = next(h for h in rendered["example-aws"] if h.role == "proxy")
    blob = base64.b64decode(ec2_user_data_base64(host.user_data))
    assert blob[:2] == b"\x1f\x8b", "this host's user-data is over 16 KB, so it must be compressed"
    (tmp_path / "ud").write_bytes(blob)
    assert cloudinit_check.read_as_cloud_init(tmp_path / "ud", distro) == host.user_data


@pytest.mark.parametrize("distro", DISTROS)
def test_cloud_init_reads_hetzner_user_data_over_32_kib(distro, ca_cert_pem, tmp_path):
    """User-data over 32 KiB goes to Hetzner as base64 of gzip, which cloud-init's Hetzner
    datasource decodes (maybe_b64decode) and reads. (The proxy's policy is no longer in
    its user-data, so a big one is made here: the proxy's, with a long comment.)"""
    config = yaml.safe_load((ROOT / "Pulumi.example-hcloud.yaml").read_text())["config"]
    d = from_config(config, "t").model_copy(update={"distro": distro})
    proxy = next(h for h in render_hosts(d, ca_cert_pem, stack="example-hcloud") if h.role == "proxy")
    filler = "".join(f"# {i:06d} {i * 7919 % 104729:06d} filler past Hetzner's plain-text limit\n" for i in range(700))
    proxy = proxy.__class__(**{**proxy.__dict__, "user_data": proxy.user_data + filler})
    assert len(proxy.user_data.encode()) > HCLOUD_USER_DATA_LIMIT
    encoded = hcloud_user_data(proxy.user_data)
    assert len(encoded.encode()) <= HCLOUD_USER_DATA_LIMIT
    (tmp_path / "ud").write_text(encoded)
    assert cloudinit_check.read_as_cloud_init(tmp_path / "ud", distro, datasource="hetzner") == proxy.user_data
    # And what fits goes as plain text, which the same path reads unchanged.
    agent = next(h for h in render_hosts(load(ROOT, "example-hcloud"), ca_cert_pem, stack="example-hcloud")
                 if h.role == "agent")
    (tmp_path / "plain").write_text(hcloud_user_data(agent.user_data))
    assert cloudinit_check.read_as_cloud_init(tmp_path / "plain", distro, datasource="hetzner") == agent.user_data
