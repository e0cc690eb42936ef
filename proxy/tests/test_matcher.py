"""The compiled matcher decides like a naive scan of every rule, only faster."""

import pytest
import fnmatch
import ipaddress
import random

from hypothesis import given, settings, strategies as st

from agentctl_proxy.matcher import Grant, Matcher


def g(label, host, methods=("GET",), paths=("/*",), order=0, **kw):
    return Grant(label=label, host=host, methods=frozenset(methods), paths=tuple(paths), order=order, **kw)


def test_wildcard_host_also_matches_apex_but_not_lookalikes():
    m = Matcher([g("w", "*.openai.com")])
    assert m.decide("api.openai.com", None, 443, True, "GET", "/x").grant
    assert m.decide("openai.com", None, 443, True, "GET", "/x").grant
    assert not m.decide("evilopenai.com", None, 443, True, "GET", "/x").grant


def test_star_host_never_matches_ip_literals():
    m = Matcher([g("any", "*")])
    assert m.decide("x.com", None, 443, True, "GET", "/").grant
    assert not m.decide("1.2.3.4", ipaddress.ip_address("1.2.3.4"), 443, True, "GET", "/").grant
    m = Matcher([g("net", None, cidr=ipaddress.ip_network("10.0.0.0/8"))])
    assert m.decide("10.1.2.3", ipaddress.ip_address("10.1.2.3"), 443, True, "GET", "/").grant


def test_prefix_and_segment_globs():
    m = Matcher([g("p", "h", paths=("/v1/*",)), g("s", "h", paths=("/repos/*/issues",), order=1)])
    for path, label in [("/v1", "p"), ("/v1/", "p"), ("/v1/a/b", "p"), ("/v1evil", None),
                        ("/repos/acme/issues", "s"), ("/repos/a/b/issues", None), ("/repos/acme/issues/1", None)]:
        d = m.decide("h", None, 443, True, "GET", path)
        assert (d.grant.label if d.grant else None) == label, path


def test_ports_methods_order_and_bootstrap():
    m = Matcher([g("a", "h", methods=("POST",)), g("b", "h", order=1), g("c", "h", order=2, ports=frozenset({8443})),
                 g("boot", "h", methods=("PUT",), order=3, bootstrap="scout")])
    assert m.decide("h", None, 443, True, "GET", "/").grant.label == "b"
    assert m.decide("h", None, 80, False, "GET", "/").grant.label == "b"
    assert m.decide("h", None, 8443, True, "GET", "/").grant.label == "c"
    assert m.decide("h", None, 443, True, "DELETE", "/").reason == "method not allowed"
    assert m.decide("h", None, 443, True, "PUT", "/").grant.label == "boot"
    assert not m.decide("h", None, 443, True, "PUT", "/", closed=frozenset({"scout"})).grant


# ---------------------------------------------------------------- the naive reference
# docs/design.md, written out as a scan of every rule: hosts exact, "*" (never an IP
# literal) or "*.x.com" (also x.com); IP literals only by cidr; a path pattern is a
# glob over whole segments, and a trailing "/*" means "this path and everything below".


def _host_ok(gr, host, ip):
    if ip is not None:
        return gr.cidr is not None and ip.version == gr.cidr.version and ip in gr.cidr
    hp = gr.host
    if hp is None:
        return False
    return hp == "*" or hp == host or (hp.startswith("*.") and (host == hp[2:] or host.endswith(hp[1:])))


def _path_ok(pattern, path):
    pat, segs = pattern.split("/")[1:], path.split("/")[1:]
    if pat[-1:] == ["*"]:
        pat = pat[:-1]
        return len(segs) >= len(pat) and all(fnmatch.fnmatchcase(s, p) for s, p in zip(segs, pat))
    return len(segs) == len(pat) and all(fnmatch.fnmatchcase(s, p) for s, p in zip(segs, pat))


def _why_not(gr, method, port, tls, encoded_slash, closed):
    if gr.bootstrap is not None and gr.bootstrap in closed:
        return "bootstrap window closed"
    if not gr.method_ok(method):
        return "method not allowed"
    if not gr.port_ok(port, tls):
        return "port not allowed"
    if encoded_slash and not gr.allow_encoded_slashes:
        return "encoded slash (%2F) not allowed"
    return ""


def _naive(grants, host, method, path, ip=None, port=443, tls=True, encoded_slash=False, closed=frozenset()):
    """(best grant, the reasons a denial may give)."""
    named = [gr for gr in grants if _host_ok(gr, host, ip)]
    if not named:
        return None, {"no rule names this host"}
    on_path = [gr for gr in named if any(_path_ok(p, path) for p in gr.paths)]
    why = {gr: _why_not(gr, method, port, tls, encoded_slash, closed) for gr in on_path}
    ok = [gr for gr in on_path if not why[gr]]
    if ok:
        return min(ok, key=lambda gr: gr.order), {""}
    return None, set(why.values()) if on_path else {"no rule allows this path"}


def _check(m, grants, host, ip, port, tls, method, path, encoded_slash, closed):
    d = m.decide(host, ip, port, tls, method, path, encoded_slash, closed)
    best, reasons = _naive(grants, host, method, path, ip, port, tls, encoded_slash, closed)
    assert d.grant == best, (host, method, path)
    assert d.reason in reasons, (d.reason, reasons)
    # CONNECT / SNI: the first open grant, in host_ports() order, that allows the port,
    # exactly what a scan of host_ports() gives
    listed = [gr for gr in m.host_ports(host, ip) if not (gr.bootstrap and gr.bootstrap in closed)]
    assert sorted(gr.label for gr in m.host_ports(host, ip)) == \
        sorted(gr.label for gr in grants if _host_ok(gr, host, ip))
    ok = [gr for gr in listed if gr.port_ok(port, tls)]
    hg = m.host_grant(host, ip, port, tls, closed)
    assert hg.grant == (ok[0] if ok else None)
    assert hg.reason == ("" if ok else "port not allowed" if listed else "no rule names this host")
    assert m.host_allowed(host, ip, port, tls, closed) == bool(ok)


# ---------------------------------------------------------------- generated rule sets

HOST_PATTERNS = ["a.com", "b.a.com", "c.b.a.com", "x.org", "*", "*.a.com", "*.b.a.com", "*.c.b.a.com"]
CIDRS = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "0.0.0.0/0", "fd00::/8", "fd00::1/128"]
QUERY_HOSTS = ["a.com", "b.a.com", "c.b.a.com", "d.c.b.a.com", "x.org", "z.com", "aa.com",
               "10.1.2.3", "10.2.0.1", "11.0.0.1", "fd00::1", "fe80::1"]

# pattern segments: literals and globs over a tiny alphabet, so that they collide
glob_segment = st.lists(st.sampled_from(["a", "b", "ab", "*", "?", "[ab]", "[!a]", "["]), min_size=1, max_size=4).map("".join)
literal_segment = st.sampled_from(["a", "b", "ab", "ba", "aab", "v1"])
pattern = st.builds(
    lambda segs, below: "/" + "/".join(segs) + ("/*" if below and segs else "*" if below else ""),
    st.lists(st.one_of(glob_segment, literal_segment), max_size=4), st.booleans())
request_path = st.builds(
    lambda segs, slash: "/" + "/".join(segs) + ("/" if slash and segs else ""),
    st.lists(st.text("ab[*?", max_size=4), max_size=5), st.booleans())

rule = st.fixed_dictionaries({
    "target": st.one_of(st.sampled_from(HOST_PATTERNS).map(lambda h: ("host", h)),
                        st.sampled_from(CIDRS).map(lambda c: ("cidr", c))),
    "methods": st.sampled_from([("GET",), ("POST",), ("*",), ("GET", "POST")]),
    "paths": st.lists(pattern, min_size=1, max_size=3),
    "ports": st.sampled_from([None, frozenset({8443}), frozenset({443, 8443})]),
    "bootstrap": st.sampled_from([None, None, "scout"]),
    "slashes": st.booleans(),
})


def _grants(rules):
    out = []
    for i, r in enumerate(rules):
        kind, target = r["target"]
        out.append(g(f"r{i}", target if kind == "host" else None, methods=r["methods"], paths=r["paths"], order=i,
                     ports=r["ports"], bootstrap=r["bootstrap"], allow_encoded_slashes=r["slashes"],
                     cidr=ipaddress.ip_network(target) if kind == "cidr" else None))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(rule, min_size=1, max_size=25), st.lists(st.tuples(
    st.sampled_from(QUERY_HOSTS), st.sampled_from(["GET", "POST", "PUT"]), request_path,
    st.sampled_from([(443, True), (80, False), (8443, True), (80, True)]), st.booleans(),
    st.sampled_from([frozenset(), frozenset({"scout"})])), min_size=1, max_size=8))
@pytest.mark.slow  # over 5 s: not in the fast tier
def test_compiled_equals_naive_scan(rules, queries):
    grants = _grants(rules)
    m = Matcher(grants)
    for _ in range(2):  # the second pass answers host names from what decide() kept
        for host, method, path, (port, tls), encoded_slash, closed in queries:
            ip = ipaddress.ip_address(host) if host[0].isdigit() or ":" in host else None
            _check(m, grants, host, ip, port, tls, method, path, encoded_slash, closed)


@pytest.mark.slow  # over 5 s: not in the fast tier
@settings(max_examples=200, deadline=None)
@given(st.lists(pattern, min_size=1, max_size=40), st.lists(request_path, min_size=1, max_size=10))
def test_many_globs_in_one_node(patterns, paths):
    """One rule per pattern, all on one host: the glob index of a node with many
    globs finds exactly the rules a scan finds, and the first one in config order."""
    grants = [g(f"r{i}", "h.com", paths=(p,), order=i) for i, p in enumerate(patterns)]
    m = Matcher(grants)
    for path in paths:
        _check(m, grants, "h.com", None, 443, True, "GET", path, False, frozenset())


def test_glob_prefix_and_suffix_may_not_overlap():
    cases = {"/a*a": ["/a", "/aa", "/aba"], "/ab*ba": ["/aba", "/abba", "/abxba"], "/a?b": ["/ab", "/axb"],
             "/[ab]*": ["/", "/a", "/c"], "/x[": ["/x[", "/x"], "/*.json": ["/.json", "/a.json", "/json"]}
    for pat, paths in cases.items():
        grants = [g("r", "h", paths=(pat,))]
        for path in paths:
            _check(Matcher(grants), grants, "h", None, 443, True, "GET", path, False, frozenset())
    m = Matcher([g("r", "h", paths=("/a*a",))])
    assert [bool(m.decide("h", None, 443, True, "GET", p).grant) for p in ("/a", "/aa", "/aba")] == [False, True, True]


def test_adversarial_prefix_globs_match_like_a_scan():
    """The benchmark's adversarial shape: every rule on one host, one glob segment each."""
    rng = random.Random(7)
    grants = [g(f"r{i}", host, paths=(f"/repos/org{i}*/app/*",), order=i)
              for i, host in enumerate(["h.com", "*"] * 300)]
    m = Matcher(grants)
    for _ in range(150):
        i = rng.randrange(700)
        path = rng.choice([f"/repos/org{i}/app", f"/repos/org{i}x/app/y", f"/repos/org{i}/ap", "/repos/x/app"])
        for host in ("h.com", "other.com"):
            _check(m, grants, host, None, 443, True, "GET", path, False, frozenset())


def test_cidr_index_keeps_config_order():
    nets = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16"]
    grants = [g(f"n{i}", None, cidr=ipaddress.ip_network(n), order=i) for i, n in enumerate(nets)]
    m = Matcher(grants)
    ip = ipaddress.ip_address("10.1.2.3")
    assert [x.label for x in m.host_ports("10.1.2.3", ip)] == ["n0", "n1", "n2", "n3", "n4", "n5"]
    assert [x.label for x in m.host_ports("10.9.0.1", ipaddress.ip_address("10.9.0.1"))] == ["n0", "n3", "n4"]
    assert m.host_ports("fd00::1", ipaddress.ip_address("fd00::1")) == []


def test_host_grant_is_the_first_open_grant_for_the_port():
    m = Matcher([g("boot", "h", bootstrap="scout", order=0), g("explicit", "h", ports=frozenset({443, 8443}), order=1),
                 g("default", "h", order=2), g("other", "h", ports=frozenset({8443}), order=3)])
    assert m.host_grant("h", None, 443, True).grant.label == "boot"
    assert m.host_grant("h", None, 443, True, frozenset({"scout"})).grant.label == "explicit"
    assert m.host_grant("h", None, 80, False, frozenset({"scout"})).grant.label == "default"
    assert m.host_grant("h", None, 8443, True).grant.label == "explicit"
    assert m.host_grant("h", None, 9000, True).reason == "port not allowed"
    assert m.host_grant("nope", None, 443, True).reason == "no rule names this host"
    m = Matcher([g("boot", "h", bootstrap="scout")])
    assert m.host_grant("h", None, 443, True, frozenset({"scout"})).reason == "no rule names this host"


def test_kept_answers_are_bounded_and_keyed_by_every_input():
    m = Matcher([g("api", "api.example.test", methods=("GET",), paths=["/v1/*"], order=0, bootstrap="scout")])
    for i in range(10_000):
        m.decide("api.example.test", None, 443, True, "GET", f"/v1/{i}")
    assert len(m._decided) <= 4096
    assert m.decide("api.example.test", None, 443, True, "GET", "/v1/x").grant is not None
    # each input changes the answer, kept or not
    assert m.decide("api.example.test", None, 443, True, "POST", "/v1/x").reason == "method not allowed"
    assert m.decide("api.example.test", None, 8443, True, "GET", "/v1/x").reason == "port not allowed"
    assert m.decide("api.example.test", None, 443, True, "GET", "/v2/x").reason == "no rule allows this path"
    assert m.decide("api.example.test", None, 443, True, "GET", "/v1/x", closed=frozenset({"scout"})).reason == \
        "bootstrap window closed"
    assert m.decide("other.example.test", None, 443, True, "GET", "/v1/x").reason == "no rule names this host"
    assert m.decide("api.example.test", None, 443, True, "GET", "/v1/x").grant is not None
    long_path = "/v1/" + "a" * 600
    assert m.decide("api.example.test", None, 443, True, "GET", long_path).grant is not None
    assert not any(k[4] == long_path for k in m._decided)
