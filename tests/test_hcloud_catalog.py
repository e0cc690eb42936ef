"""The one table of Hetzner locations and server types, and the validator hook."""
from __future__ import annotations

import pytest

from agentctl import hcloud_catalog
from agentctl.stackfile import load
from tests.test_stacks_harness import ROOT


def test_every_location_has_a_default_that_is_sold_there():
    for location in hcloud_catalog.LOCATIONS:
        hcloud_catalog.check_server_type(hcloud_catalog.default_server_type(location), location)


@pytest.mark.parametrize("size,location,words", [("cx22", "fsn1", "retired"), ("t3.medium", "fsn1", "not a Hetzner"),
                                                 ("cx23", "ash", "not sold in ash")])
def test_bad_types_are_refused_with_the_reason(size, location, words):
    with pytest.raises(ValueError, match=words):
        hcloud_catalog.check_server_type(size, location)


def test_problems_name_the_key_path():
    d = load(ROOT, "example-hcloud")
    assert hcloud_catalog.problems(d) == []
    bad = d.model_copy(update={"proxy": d.proxy.model_copy(update={"size": "cx22"})})
    ((path, what, expected),) = hcloud_catalog.problems(bad)
    assert path == "proxy.size" and "retired" in what and "cx23" in expected
    assert hcloud_catalog.problems(load(ROOT, "example-aws")) == []
