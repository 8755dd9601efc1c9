"""The one label value that every dataset writes for "no class here" and every loss and metric skips."""

from __future__ import annotations

IGNORE_INDEX = 255
