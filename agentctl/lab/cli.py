"""`agentctl lab ...` (placeholder until the lab lands)."""
import typer

app = typer.Typer(no_args_is_help=True, help="The local lab: the whole deployment on this machine.")
