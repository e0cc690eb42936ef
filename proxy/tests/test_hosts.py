import ipaddress

import pytest

from agentctl_proxy.hosts import is_canonical_ip, is_valid_name, normalize_host, parse_ip_literal, split_host_port


@pytest.mark.parametrize("spelling", ["2130706433", "0177.0.0.1", "0x7f000001", "127.1", "0x7f.0.0.1",
                                      "017700000001", "127.0.0.1", "::ffff:127.0.0.1", "[::ffff:7f00:1]"])
def test_every_spelling_of_loopback_is_an_ip_literal(spelling):
    assert parse_ip_literal(spelling) == ipaddress.ip_address("127.0.0.1")


@pytest.mark.parametrize("spelling,canonical", [("127.0.0.1", True), ("2130706433", False), ("0177.0.0.1", False),
                                                ("::1", True), ("0:0::1", False), ("::ffff:127.0.0.1", False)])
def test_canonical_ip(spelling, canonical):
    assert is_canonical_ip(spelling) is canonical


def test_names():
    assert normalize_host("API.Example.COM.") == "api.example.com"
    assert is_valid_name("api.example.com") and not is_valid_name("1.2.3.4") and not is_valid_name("a..b")
    assert not is_valid_name("0x7f000001") and not is_valid_name("ex ample.com")
    assert split_host_port("api.x.com:8443", 443) == ("api.x.com", 8443)
    assert split_host_port("[::1]:80", 443) == ("::1", 80)
    assert split_host_port("API.x.com.", 443) == ("api.x.com", 443)
    with pytest.raises(ValueError):
        split_host_port("a:b", 443)
