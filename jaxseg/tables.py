"""Lazy name tables: every selectable thing is a ``"name": "module:attr"`` entry.

Each folder (models, losses, data, ...) keeps one table. Entries are strings, so the
table costs no import time, every choice is greppable in one place and tests can
iterate over all of them. An unknown name fails at once with the known names.
"""

import importlib
from collections.abc import Mapping
from typing import Any


def resolve(table: Mapping[str, str], name: str, kind: str) -> Any:
  """Imports and returns the object that ``table[name]`` points at."""
  check(table, name, kind)
  module, attr = table[name].split(":")
  return getattr(importlib.import_module(module), attr)


def check(table: Mapping[str, str], name: str, kind: str) -> None:
  """Raises a ``ValueError`` naming the known entries if ``name`` is unknown."""
  if name not in table:
    known = ", ".join(sorted(table))
    raise ValueError(f"Unknown {kind} name {name!r}; known {kind} names: {known}.")
