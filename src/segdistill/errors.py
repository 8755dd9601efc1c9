"""Exceptions shared across the package."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (files, config, arguments).

    The CLI prints ``error: <message>`` (one line) and exits with status 2, so the message must be a
    single line that names the offending file, value or option.
    """
