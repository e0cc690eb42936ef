"""Domain errors carry their exit code; the CLI turns them into one line on stderr.

No agentctl command runs the Pulumi CLI (`plan` evaluates the program in-process under
Pulumi's mocks), so there is no error for a missing CLI: `pulumi up`/`destroy` are
Pulumi's own commands and report that themselves (docs/cloud.md)."""
from __future__ import annotations


class AgentctlError(Exception):
    exit_code = 1


class ConfigError(AgentctlError):
    """Bad input: a config file, a flag or a spec. Exit 2, one line, nothing changed."""

    exit_code = 2

    def __init__(self, source: str, key_path: str, problem: str, expected: str = ""):
        self.source, self.key_path, self.problem, self.expected = source, key_path, problem, expected
        line = f"{source}: {key_path}: {problem}" if key_path else f"{source}: {problem}"
        if expected:
            line += f"; expected {expected}"
        super().__init__(line)
