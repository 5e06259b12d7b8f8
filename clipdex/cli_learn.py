"""clipdex's learn command (imported by clipdex.cli's main group when named, see its LAZY_COMMANDS)."""

from __future__ import annotations

import click


@click.command("learn")
def learn_cmd() -> None:
    """(being built)"""
    raise click.UsageError("clipdex learn is being built")


COMMANDS: list[click.Command] = [learn_cmd]
