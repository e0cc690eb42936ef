"""User-data limits per cloud: what each stack hands over, and the render-time refusal."""
from __future__ import annotations

import base64

import pytest

from agentctl.errors import ConfigError
from agentctl.stackfile import load
from agentctl.userdata import (EC2_USER_DATA_LIMIT, _agents_that_fit, check_user_data_limits, ec2_encode, ec2_size,
                               hcloud_encode)

from .conftest import ROOT


@pytest.mark.parametrize("total,limit", [(1, 0), (10, 0), (10, 3), (10, 9), (200, 120), (200, 199)])
def test_bisect_finds_the_largest_count_that_fits(total, limit):
    asked = []

    def fits(n):
        asked.append(n)
        return n <= limit
    assert _agents_that_fit(total, fits) == min(limit, total - 1)
    assert len(asked) <= 9  # log2(200): a handful of proxy renders, not one per agent


class _Host:
    def __init__(self, name, role, user_data):
        self.name, self.role, self.user_data = name, role, user_data


def test_an_agent_host_too_big_for_ec2_names_its_agent():
    d = load(ROOT, "example-aws")
    noise = "".join(f"# {i:08x} {i * 7919 % 104729:06d}\n" for i in range(6000))  # compresses poorly enough
    assert ec2_size(ec2_encode(noise)) > EC2_USER_DATA_LIMIT
    hosts = [_Host("proxy", "proxy", "#cloud-config\n"), _Host("scout", "agent", noise)]
    with pytest.raises(ConfigError) as err:
        check_user_data_limits(d, hosts, "Pulumi.example-aws.yaml", lambda n: "")
    assert str(err.value).startswith("Pulumi.example-aws.yaml: agentctl:agents[0]: host scout's user-data is ")
    assert "limit 16384" in str(err.value)


def test_the_lab_has_no_limit():
    d = load(ROOT, "lab")
    check_user_data_limits(d, [_Host("scout", "agent", "x" * 10**6)], "t", lambda n: "")


def test_hetzner_plain_stays_plain():
    assert hcloud_encode("#cloud-config\n") == "#cloud-config\n"


def test_ec2_limit_counts_raw_bytes_not_base64():
    """EC2: "User data is limited to 16 KB, in raw form, before it is base64-encoded"
    (EC2 User Guide, instancedata-add-user-data). 15 000 plain bytes fit as they are."""
    text = "#cloud-config\n" + "".join(f"# {i:08x} {i * 7919 % 104729:06d}\n" for i in range(833))
    assert 12288 < len(text.encode()) <= EC2_USER_DATA_LIMIT
    encoded = ec2_encode(text)
    assert base64.b64decode(encoded) == text.encode() and ec2_size(encoded) == len(text.encode())
