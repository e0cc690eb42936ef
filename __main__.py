"""Pulumi's entry point: Pulumi.yaml has no `main:`, so `pulumi up` runs this folder's
__main__.py. The program lives in stacks/, installed as agentctl_stacks; it sits at
the project root so that the program and its dynamic providers resolve Pulumi.yaml's
relative `virtualenv` to the same ./venv (docs/pulumi-layout.md)."""
from agentctl_stacks.program import main

main()
