"""clipdex's topics command (imported by clipdex.cli's main group when named, see its LAZY_COMMANDS)."""

from __future__ import annotations

import click


@click.command("topics")
def topics_cmd() -> None:
    """(being built)"""
    raise click.UsageError("clipdex topics is being built")


COMMANDS: list[click.Command] = [topics_cmd]
