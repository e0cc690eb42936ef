"""The one place agentctl touches a Pulumi SDK name that is not public API.

Everything else goes through Pulumi's public Python API: `pulumi.runtime.set_mocks`,
`pulumi.runtime.test` (runs a program under the mocks and waits for it),
`pulumi.runtime.set_all_config`, `get_config_env`, `get_config_secret_keys_env`,
`is_config_secret`, `register_stack_transformation`, `pulumi.Output`.

What remains, and why no public road exists:

- SECRET_SIG_KEY / SECRET_SIG: how a secret value reaches `Mocks.new_resource` in its
  `inputs` (a dict marked with these two strings; pulumi/runtime/rpc.py
  `_special_sig_key`, `_special_secret_sig`). They are constants of Pulumi's wire format
  (the same in every SDK language), so `agentctl plan` can print `[secret]` instead of
  the value; the SDK offers no public test for "this mock input is a secret".

tests/test_pulumi_private.py is the canary: it fails when an SDK upgrade moves or
changes any of these, before `plan` would print a secret.
"""
from __future__ import annotations

from typing import Any

# Pulumi's wire-format markers (sdk/python/lib/pulumi/runtime/rpc.py), as literals: the
# canary checks that the installed SDK still uses exactly these.
SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"


def is_secret_input(value: Any) -> bool:
    """A mock resource input that carries a secret (its value must not be printed)."""
    return isinstance(value, dict) and value.get(SECRET_SIG_KEY) == SECRET_SIG
