"""clipdex's compact commands (registered on the main command group by clipdex.cli)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
