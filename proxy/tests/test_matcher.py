"""The compiled matcher decides like a naive scan of every rule, only faster."""

import fnmatch
import ipaddress

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


def _naive(grants, host, method, path):
    best = None
    for gr in grants:
        hp = gr.host
        host_ok = hp == "*" or hp == host or (hp.startswith("*.") and (host == hp[2:] or host.endswith(hp[1:])))
        path_ok = any((p.endswith("/*") and (path == p[:-2] or path.startswith(p[:-1])))
                      or (not p.endswith("/*") and len(p.split("/")) == len(path.split("/"))
                          and all(fnmatch.fnmatchcase(a, b) for a, b in zip(path.split("/"), p.split("/"))))
                      for p in gr.paths)
        if host_ok and path_ok and gr.method_ok(method) and (best is None or gr.order < best.order):
            best = gr
    return best


hosts = st.sampled_from(["a.com", "b.a.com", "c.b.a.com", "x.org", "*", "*.a.com", "*.b.a.com"])
paths = st.sampled_from(["/*", "/v1/*", "/v1/x", "/v1/*/y", "/v2/*", "/v1/x*"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(hosts, st.sampled_from(["GET", "POST", "*"]), paths), min_size=1, max_size=12),
       st.sampled_from(["a.com", "b.a.com", "c.b.a.com", "x.org", "z.com"]), st.sampled_from(["GET", "POST"]),
       st.sampled_from(["/", "/v1", "/v1/x", "/v1/x/y", "/v1/xa", "/v2", "/v1/q/y", "/v1evil"]))
def test_compiled_equals_naive_scan(rules, host, method, path):
    grants = [g(f"r{i}", h, methods=(m,), paths=(p,), order=i) for i, (h, m, p) in enumerate(rules)]
    got = Matcher(grants).decide(host, None, 443, True, method, path).grant
    assert got == _naive(grants, host, method, path)
