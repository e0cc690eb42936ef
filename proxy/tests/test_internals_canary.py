"""internals.py is the one place agentctl-proxy touches mitmproxy internals. These tests
fail when a mitmproxy release is one the canaries do not know, when anything else in
agentctl_proxy reaches for a private name, and when what internals.py 4 and 5 rely on
(the Server.address guard, connection reuse by address, the "nextlayer" lookup) moves.
The body cap and protocol-error canaries: test_internals_limits.py and
test_internals_protocol_errors.py."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from mitmproxy import connection, version
from mitmproxy.addons import proxyserver
from mitmproxy.proxy.layers import http as http_layer

import agentctl_proxy
from agentctl_proxy import internals
from agentctl_proxy.addon import EgressAddon

PACKAGE = Path(agentctl_proxy.__file__).parent
# the releases whose source the canary tests were checked against (a new major version
# fails here until someone has read its source and added it)
KNOWN_MAJORS = {11, 12}


def test_mitmproxy_is_a_release_the_canaries_know():
    assert int(version.VERSION.split(".")[0]) in KNOWN_MAJORS, version.VERSION


def _private_imports(path: Path) -> list[str]:
    """Imports of a private name (a module or member starting with _) of mitmproxy or h11."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("mitmproxy", "h11"):
            names = [*node.module.split("."), *(a.name for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [p for a in node.names if a.name.split(".")[0] in ("mitmproxy", "h11") for p in a.name.split(".")]
        else:
            continue
        if any(n.startswith("_") for n in names):
            found.append(ast.unparse(node))
    return found


def test_only_internals_imports_private_mitmproxy_names():
    offenders = {p.name: imp for p in sorted(PACKAGE.glob("*.py")) if p.name != "internals.py"
                 if (imp := _private_imports(p))}
    assert offenders == {}
    assert _private_imports(PACKAGE / "internals.py")  # the check sees what it should


def test_no_module_but_internals_patches_mitmproxy_or_steps_around_setattr():
    for p in sorted(PACKAGE.glob("*.py")):
        if p.name == "internals.py":
            continue
        src = p.read_text()
        assert "object.__setattr__" not in src, p.name
        assert "_configure_all" not in src, p.name


def test_server_address_guard_is_what_restore_steps_around():
    """mitmproxy/connection.py: Server.__setattr__ refuses a new address on an open
    connection; restore_address writes the attribute directly, which works because
    Server keeps it in its instance dict."""
    src = inspect.getsource(connection.Server.__setattr__)
    assert 'if name in ("address", "via"):' in src
    assert "Cannot change server.{name} on open connection." in src
    server = connection.Server(address=("10.0.0.1", 443))
    server.state = connection.ConnectionState.OPEN
    try:
        server.address = ("api.example.com", 443)
    except RuntimeError:
        pass
    else:
        raise AssertionError("Server.address is no longer guarded: internals.restore_address is not needed")
    internals.restore_address(server, ("api.example.com", 443))
    assert server.address == ("api.example.com", 443)


def test_connection_reuse_compares_addresses_as_restore_assumes():
    """mitmproxy/proxy/layers/http/__init__.py: an open connection is reused when its
    address equals the one asked for: the name, which restore_address puts back."""
    src = inspect.getsource(http_layer)
    assert "and self.address == connection.address" in src


def test_proxyserver_looks_for_the_layer_addon_by_this_name():
    src = inspect.getsource(proxyserver.Proxyserver)
    assert f'ctx.master.addons.get("{internals.NEXT_LAYER}")' in src
    assert EgressAddon.name == internals.NEXT_LAYER


def test_install_changes_only_what_patches_lists(mitm_patched):
    before = {(cls, name): cls.__dict__.get(name) for cls, name, _ in internals.PATCHES}
    mitm_patched(123)
    for cls, name, ours in internals.PATCHES:
        assert cls.__dict__[name] is ours and before[(cls, name)] is not ours
    assert internals.LIMITS.request == 123
