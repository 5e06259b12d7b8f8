"""clipdex's duplicates command (imported by clipdex.cli's main group when named, see its LAZY_COMMANDS)."""

from __future__ import annotations

import click


@click.command("duplicates")
def duplicates_cmd() -> None:
    """(being built)"""
    raise click.UsageError("clipdex duplicates is being built")


COMMANDS: list[click.Command] = [duplicates_cmd]
