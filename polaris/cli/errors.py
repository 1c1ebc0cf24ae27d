"""How domain errors become exit code 2 with a one-line message."""

from __future__ import annotations

import click


class UsageFailure(click.ClickException):
    """A domain error (unknown optimizer, bad option, unreadable layout, ...): exit code 2."""

    exit_code = 2

    def format_message(self) -> str:
        return self.message
