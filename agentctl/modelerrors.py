"""A pydantic ValidationError in a stack file as the one line a user needs: the key
path under `agentctl:`, what is wrong, and what is expected there. The wording is the
proxy's (agentctl_proxy.schema.errors: one formatter for both files); only the Pulumi
secret reference is the stack file's own."""
from __future__ import annotations

from pydantic import ValidationError

from agentctl.errors import ConfigError
from agentctl.model import ConfigSecretRef, Deployment
from agentctl_proxy.schema import errors

NAMESPACE = "agentctl"
_SECRET_REF = "a reference to a Pulumi secret, {config: NAME} (set with: pulumi config set --secret NAME ...)"


def one_line(exc: ValidationError, source: str) -> ConfigError:
    p = errors.explain(exc, Deployment)
    problem, expected = p.problem, p.expected
    if p.kind in {"model_type", "model_attributes_type"} and ConfigSecretRef in errors.types_at(Deployment, p.loc):
        problem, expected = "is a plain value, but this must name a Pulumi secret", _SECRET_REF
    key_path = p.key_path(f"{NAMESPACE}:")
    # One line, whatever the input held: a newline here would forge a second message.
    return ConfigError(source, key_path.replace("\n", "\\n"), problem.replace("\n", "\\n"),
                       expected.replace("\n", "\\n"))
