"""`nfdeploy` on the command line: the commands (commands.py) over the library, and the options several of them
share (option_groups.py)."""

from nfdeploy.cli.commands import app


def main() -> None:
    app()


__all__ = ["app", "main"]
