"""Pulumi entry point (`main: stacks/` in Pulumi.yaml). Absolute import: Pulumi runs
this file by path, and the package is installed as agentctl_stacks."""
from agentctl_stacks.program import main

main()
