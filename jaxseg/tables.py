"""Lazy name tables: every selectable thing is a ``"name": "module:attr"`` entry.

Each folder (models, losses, data, ...) keeps one table. Entries are strings, so the
table costs no import time, every choice is greppable in one place and tests can
iterate over all of them. An unknown name fails at once with the known names.
"""

import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from jaxseg.errors import UserError


def resolve(table: Mapping[str, str], name: str, kind: str) -> Any:
  """Imports and returns the object that ``table[name]`` points at."""
  check(table, name, kind)
  module, attr = table[name].split(":")
  return getattr(importlib.import_module(module), attr)


def check(table: Mapping[str, str], name: str, kind: str) -> None:
  """Raises a :class:`UserError` naming the known entries if ``name`` is unknown."""
  if name not in table:
    known = ", ".join(sorted(table))
    raise UserError(f"Unknown {kind} name {name!r}; known {kind} names: {known}.")


def defaults(factory: Callable) -> dict:
  """The keyword arguments of ``factory`` and their defaults (for configs to show)."""
  params = inspect.signature(factory).parameters.values()
  return {p.name: p.default for p in params if p.default is not p.empty}


def check_settings(factory: Callable, settings: Mapping, where: str) -> None:
  """Raises a :class:`UserError` for a key of ``settings`` that ``factory`` does not take."""
  params = inspect.signature(factory).parameters
  if any(p.kind == p.VAR_KEYWORD for p in params.values()):
    return
  known = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
  for key in settings:
    if key not in known:
      raise UserError(f"{where}: unknown setting {key!r}; known: {', '.join(known) or '(none)'}.")
