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


# ------------------------------------------- parse_ip_literal against the original
# parse_ip_literal now returns None at once for a host with a character that no
# address spelling has (and is cached); every answer must be the original's.

import originals  # noqa: E402
from hypothesis import given, settings, strategies as st  # noqa: E402

IP_PIECES = ["0", "1", "7", "9", "00", "01", "0177", "127", "169", "254", "255", "256", "4294967295", "2130706433",
             "0x", "0X", "x", "X", "7f", "7F", "ff", "FFFF", "a9fe", "e", "g", "z", "-", "_", ".", ".", ":", ":",
             "::", "%", "%eth0", "%25", "[", "]", " ", "\t", "\u0661", "\uff11", "\uff0e", "\u0130", "\u212a"]
SPELLINGS = ["2130706433", "0177.0.0.1", "0x7f000001", "127.1", "0x7f.0.0.1", "017700000001", "127.0.0.1",
             "::ffff:127.0.0.1", "[::ffff:7f00:1]", "2130706434", "0177.0.0.2", "0x7f000002", "0x7f.0.0.2",
             "::ffff:127.0.0.2", "[::ffff:169.254.169.254]", "[::ffff:a9fe:a9fe]", "169.254.169.254", "0xA9FEA9FE",
             "0XA9.0XFE.0XA9.0XFE", "fe80::1%eth0", "[FE80::1%25eth0]", "1.2.3.4.", "api.example.test", "a.b",
             "", ".", "..", "1..2", "0x", "x1", "localhost", "127.0.0.1.nip.io", " 127.0.0.1 ", "1e100.net"]
hosts = st.one_of(st.lists(st.sampled_from(IP_PIECES), max_size=10).map("".join),
                  st.ip_addresses().map(str), st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
                  st.integers(0, 2**33).map(str), st.integers(0, 2**33).map(hex), st.text(max_size=12))


@pytest.mark.parametrize("host", SPELLINGS)
def test_known_spellings_parse_as_the_original_parsed_them(host):
    assert parse_ip_literal(host) == originals.parse_ip_literal(host)
    assert is_valid_name(normalize_host(host)) == originals.is_valid_name(normalize_host(host))


@settings(max_examples=1500, deadline=None)
@given(hosts)
def test_parse_ip_literal_equals_the_original(host):
    want = originals.parse_ip_literal(host)
    assert parse_ip_literal(host) == want
    assert parse_ip_literal(host) == want  # and again, from the cache
    assert parse_ip_literal.__wrapped__(host) == want
    name = normalize_host(host)
    assert is_valid_name(name) == originals.is_valid_name(name)


def test_host_caches_hold_only_host_sized_strings():
    """A client can send any Host; what the caches keep stays small whatever it sends."""
    before = parse_ip_literal.cache_info().currsize
    long_name = "a" * 5000 + ".example.test"
    assert parse_ip_literal(long_name) is None and not is_valid_name(long_name)
    assert parse_ip_literal.cache_info().currsize == before
    assert parse_ip_literal.cache_info().maxsize == 4096


@settings(max_examples=500, deadline=None)
@given(st.one_of(hosts, st.tuples(hosts, st.integers(0, 70000)).map(lambda t: f"{t[0]}:{t[1]}")),
       st.sampled_from([80, 443]))
def test_split_host_port_cached_equals_uncached(value, default_port):
    def outcome(fn):
        try:
            return fn(value, default_port)
        except ValueError as e:
            return str(e)
    want = outcome(split_host_port.__wrapped__)
    assert outcome(split_host_port) == want and outcome(split_host_port) == want


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.ip_addresses(), st.ip_addresses(v=4).map(lambda ip: ipaddress.ip_address(f"::ffff:{ip}"))),
                max_size=8))
def test_resolver_denied_cache_equals_a_scan_of_the_deny_list(ips):
    from agentctl_proxy.netguard import Resolver, _unmap

    deny = ["127.0.0.0/8", "10.0.0.0/8", "169.254.0.0/16", "::1/128", "fc00::/7", "fe80::/10", "100.64.0.0/10"]
    r = Resolver(deny)
    nets = [ipaddress.ip_network(c) for c in deny]
    for ip in ips + ips:  # the second time from the cache
        u = _unmap(ip)
        assert r.denied(ip) == next((n for n in nets if u.version == n.version and u in n), None)
