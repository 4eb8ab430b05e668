"""``jaxseg sweep``: run every cell of a config's sweep and tabulate the results.

A config declares its sweep in ``config.sweep``:

* ``axes``: a tuple of ``(axis_name, ((label, overrides), ...))``, where
  ``overrides`` is a tuple of ``(dotted_key, value)`` pairs applied to the config
  (build them with :func:`axis`);
* ``average``: the axis averaged over (seeds or folds): each table row is the mean
  and std of each metric over its labels;
* ``metrics``: the test metrics to tabulate (names in ``test_metrics.json``; the
  per-image mean, or the score of the pooled counts for ``name:pooled``), and
  optionally ``headers``, their column titles;
* ``cost`` (optional): ``((label, text), ...)`` of the first axis, shown as a
  ``cost`` column (e.g. a method's communication cost). Federated cells write their
  measured cost (``communication.json``), which fills the column by itself;
* ``exclude`` (optional): ``({axis: label, ...}, ...)`` combinations not to run
  (e.g. FedWeP-Real where the server has no images);
* ``pivot`` (optional): axes whose labels become columns of the first metric, as in
  a paper's table (``("partition", "fraction")`` gives ``IID 1/16 | ... | NonIID
  1/2``); ``sections``: an axis (or a tuple of axes) that splits the table into one
  table per label (combination);
* ``synthesis`` (optional): ``gan`` (a GAN config, see ``configs/pix2pix_covid_ct.py``)
  and ``num``: before the cells, the GAN is trained on the sweep's own data
  (``DIR/gan``) and ``num`` pairs are synthesized into ``DIR/synthetic``; an
  override value ``"<synthetic>"`` stands for that folder (e.g.
  ``data.extra_train_dir``).

The runners come from the caller (``jaxseg.main``: ``train`` picks the runner of each
cell's config, ``evaluate`` is ``jaxseg eval``, ``synthesize`` is ``jaxseg
synthesize``), so this module imports none of them. Cells run one after another in
this process, each in ``DIR/<axis>=<label>_.../``,
trained and evaluated exactly as ``jaxseg train`` / ``jaxseg eval`` would. A cell
whose ``test_metrics.json`` exists is not rerun, so an interrupted sweep resumes.
The command line's ``--config.key=value`` apply to every cell, also inside a section
a cell sets whole (``--config.method.kwargs.ramp_up_steps=20`` reaches the cells that
set ``method.kwargs``); a key a cell sets itself cannot also come from the command
line (one line names it).
Compiled executables are shared across cells through JAX's persistent compilation
cache in ``DIR/jax_cache`` (cells that differ only in data, fold or seed reuse the
training step). The table goes to ``DIR/results.md`` and ``DIR/results.json``, the
validation curves (Dice at each evaluated step or round, averaged as the table is) to
``DIR/curves.md``.
"""

import copy
import dataclasses
import itertools
import json
import os
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from jaxseg import tables
from jaxseg.errors import UserError
from jaxseg.run import skeleton

SYNTHETIC = "<synthetic>"


@dataclasses.dataclass(frozen=True)
class Sweep:
  """``config.sweep`` with the defaults of its optional keys (see the module doc)."""

  axes: tuple
  average: str
  metrics: tuple
  headers: tuple | None = None
  cost: tuple | None = None
  exclude: tuple = ()
  pivot: tuple | None = None
  sections: str | tuple | None = None
  synthesis: object = None


def settings(config_sweep) -> Sweep:
  values = {k: config_sweep[k] for k in config_sweep.keys()}
  tables.check_settings(Sweep, values, "config.sweep")
  return Sweep(**values)


@dataclasses.dataclass(frozen=True)
class Runners:
  train: Callable  # (config, workdir) -> state
  evaluate: Callable  # (workdir) -> test metrics
  synthesize: Callable  # (gan_workdir, num, output) -> output


def axis(name: str, variants: dict) -> tuple:
  """``axis("model", {"unet": {"model.name": "unet"}, ...})`` in the sweep format."""
  return (name, tuple((label, tuple(overrides.items())) for label, overrides in variants.items()))


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``(dotted_key, value)`` overrides; dict values replace."""
  config = copy.deepcopy(config)
  for key, value in overrides:
    value = ml_collections.ConfigDict(dict(value)) if isinstance(value, dict) else value
    _set(config, key, value, f"sweep override {key!r}:")
  return config


def _set(config, key: str, value, where: str) -> None:
  """``config.<key> = value`` for an existing dotted ``key``; else one line from ``where``."""
  *path, last = key.split(".")
  node = config
  for part in path:
    if part not in node:
      raise UserError(f"{where} no config key {part!r}.")
    node = node[part]
  if last not in node:
    raise UserError(f"{where} no config key {last!r}.")
  with node.unlocked():
    node[last] = value


def with_command_line(config, overrides, command_line: dict, labels: dict):
  """``config`` (a cell's) with the command line's ``{dotted_key: value}`` applied again
  on top of the cell's ``overrides``: a section the cell replaced whole takes them too."""
  for key, value in command_line.items():
    clash = [k for k, _ in overrides if k == key or k.startswith(f"{key}.")]
    if clash:
      raise UserError(
        f"--config.{key}: the sweep sets {clash[0]} in its cells ({labels}); "
        "change the sweep's axis instead."
      )
    _set(config, key, value, f"--config.{key}: cell {labels} has")
  return config


def cells(sweep: Sweep):
  """Every combination of the axes' labels (less ``exclude``), with the merged overrides."""
  names = [name for name, _ in sweep.axes]
  exclude = [dict(e) for e in sweep.exclude]
  for combo in itertools.product(*[variants for _, variants in sweep.axes]):
    labels = dict(zip(names, [label for label, _ in combo], strict=True))
    if any(all(labels[k] == v for k, v in e.items()) for e in exclude):
      continue
    overrides = [item for _, items in combo for item in items]
    yield labels, overrides


def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  runners: Runners,
  only=None,
  command_line=None,
  tabulate=False,
) -> list[dict]:
  """Runs (or resumes) every cell of ``config.sweep`` and writes the results table.
  ``only``: the indices (0-based, in the order cells are listed) of the cells to run,
  and no table — several processes (or machines) can share the cells of one sweep, and
  a last ``jaxseg sweep`` without ``--cells`` tabulates them. ``command_line``: the
  ``{dotted_key: value}`` overrides ``config`` was given (:func:`with_command_line`).
  ``tabulate``: run no cell, tabulate the finished ones (a sweep still going or cut
  short; a value averaged over fewer labels than the axis has says ``(n=K)``)."""
  if "sweep" not in config:
    raise UserError("config has no `sweep` section; use `jaxseg train` for a single run.")
  sweep = settings(config.sweep)
  names = [name for name, _ in sweep.axes]
  if sweep.average not in names:
    raise UserError(f"config.sweep.average={sweep.average!r} is not an axis; axes: {names}.")
  skeleton.prepare_workdir(workdir)
  jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  compilation_cache.reset_cache()  # a cache this process opened before moves here
  base = copy.deepcopy(config)
  with base.unlocked():
    del base["sweep"]
  todo, command_line = list(cells(sweep)), command_line or {}
  if only is not None and not set(only) <= set(range(len(todo))):
    raise UserError(f"--cells {sorted(only)}: the sweep has cells 0..{len(todo) - 1}.")
  for labels, overrides in todo:  # a command-line mistake stops the sweep before it starts
    with_command_line(apply_overrides(base, overrides), overrides, command_line, labels)
  synthetic = synthesize(base, sweep.synthesis, workdir, runners) if sweep.synthesis else None
  results = []
  for i, (labels, overrides) in enumerate(todo):
    if only is not None and i not in only:
      continue
    overrides = [(k, synthetic if v == SYNTHETIC else v) for k, v in overrides]
    name = "_".join(f"{k}={v}" for k, v in labels.items()).replace("/", "-")  # e.g. 1/16
    cell_dir = os.path.join(workdir, name)
    path = os.path.join(cell_dir, "test_metrics.json")
    if tabulate and not os.path.exists(path):
      continue
    if not os.path.exists(path):
      print(f"\n[cell {i} of 0..{len(todo) - 1}] {labels}", flush=True)
      cell = apply_overrides(base, overrides)
      runners.train(with_command_line(cell, overrides, command_line, labels), cell_dir)
      runners.evaluate(cell_dir)
    with open(path) as f:
      results.append({"labels": labels, "metrics": json.load(f)})
    measured = os.path.join(cell_dir, "communication.json")
    if os.path.exists(measured):
      with open(measured) as f:
        results[-1]["cost"] = json.load(f)["text"]
    results[-1]["curve"] = validation_curve(cell_dir)
  return results if only is not None else write_tables(sweep, results, workdir)


def write_tables(sweep: Sweep, results: list[dict], workdir: str) -> list[dict]:
  """``results.md`` / ``results.json`` (the table) and ``curves.md`` (validation curves)."""
  names = [name for name, _ in sweep.axes]
  rows = aggregate(results, names, sweep.average, list(sweep.metrics))
  headers = dict(zip(sweep.metrics, sweep.headers or sweep.metrics, strict=True))
  if sweep.cost:
    cost = dict(sweep.cost)
    for row in rows:
      row["cost"] = cost.get(row[names[0]], "")
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(rows, f, indent=2)
  keep = [n for n in names if n != sweep.average]
  has_cost = any("cost" in row for row in rows)
  if sweep.pivot:
    order = {name: [label for label, _ in variants] for name, variants in sweep.axes}
    full = len(order[sweep.average])
    pivot, metric = list(sweep.pivot), sweep.metrics[0]
    table = pivoted(rows, keep, pivot, sweep.sections, metric, order, full)
    if any(row["n"] < full for row in rows):
      table += f"\n\n(n=K: the mean over K of the {full} labels of {sweep.average}.)"
  else:
    sections = sweep.sections
    sections = [sections] if isinstance(sections, str) else list(sections or ())
    table = sectioned(
      rows,
      [n for n in keep if n not in sections] + (["cost"] if has_cost else []),
      sections,
      headers,
    )
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(workdir, "curves.md"), "w") as f:
    f.write(curves_table(results, keep) + "\n")
  print("\n" + table)
  return rows


def validation_curve(cell_dir: str) -> dict[int, float]:
  """``{step: validation Dice}`` of a cell (its ``metrics.jsonl``)."""
  path = os.path.join(cell_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    records = [json.loads(line) for line in f]
  return {r["step"]: r["dice"] for r in records if r["split"] == "validation" and "dice" in r}


def curves_table(results: list[dict], keep: list[str]) -> str:
  """Validation Dice at each evaluated step (or round), the mean over the averaged
  axis, one row per combination of the other axes."""
  groups = {}
  for r in results:
    groups.setdefault(tuple(r["labels"][n] for n in keep), []).append(r["curve"])
  steps = sorted({s for curves in groups.values() for c in curves for s in c})
  lines = ["| " + " | ".join([*keep, *map(str, steps)]) + " |"]
  lines.append("|" + "---|" * (len(keep) + len(steps)))
  for key, curves in groups.items():
    at = [[c[s] for c in curves if s in c] for s in steps]
    cells = [f"{np.mean(v):.2f}" if v else "" for v in at]
    lines.append("| " + " | ".join([*key, *cells]) + " |")
  return "\n".join(lines)


def synthesize(base: ml_collections.ConfigDict, synthesis, workdir: str, runners: Runners) -> str:
  """Trains ``synthesis.gan`` on ``base``'s data and synthesizes ``synthesis.num`` pairs,
  once (a finished synthesis is kept); returns the pairs' folder."""
  output = os.path.join(workdir, "synthetic")
  if not os.path.exists(os.path.join(output, "synthesis.json")):
    gan = copy.deepcopy(synthesis.gan)
    with gan.unlocked():
      gan.data = copy.deepcopy(base.data)  # the GAN sees the cells' training split
      gan.data.extra_train_dir = ""
    print(f"\n[GAN] {gan.gan.name} on the training split, then {synthesis.num} pairs", flush=True)
    runners.train(gan, os.path.join(workdir, "gan"))
    runners.synthesize(os.path.join(workdir, "gan"), synthesis.num, output)
  return os.path.abspath(output)


def aggregate(results, names, average, metrics) -> list[dict]:
  """Rows of the non-averaged axes with mean/std of each metric over ``average``."""
  keep = [n for n in names if n != average]
  groups = {}
  for r in results:
    groups.setdefault(tuple(r["labels"][n] for n in keep), []).append(r)
  rows = []
  for key, group in groups.items():
    row = dict(zip(keep, key, strict=True)) | {"n": len(group)}
    for m in metrics:
      name, _, stat = m.partition(":")
      values = np.array([g["metrics"][name][stat or "mean"] for g in group], dtype=float)
      row[m] = {"mean": float(values.mean()), "std": float(values.std())}
    if "cost" in group[0]:
      row["cost"] = group[0]["cost"]
    rows.append(row)
  return rows


def pivoted(rows, keep, pivot, sections, metric: str, order: dict, full: int = 0) -> str:
  """``metric`` with the ``pivot`` axes as columns (one table per ``sections`` label),
  columns ordered by the pivot axes in turn (``order``: each axis's labels); a value of
  fewer than ``full`` cells says ``(n=K)``."""
  row_axes = [n for n in keep if n not in pivot and n != sections]
  columns = sorted(
    dict.fromkeys(tuple(r[p] for p in pivot) for r in rows),
    key=lambda c: [order[p].index(label) for p, label in zip(pivot, c, strict=True)],
  )
  out = []
  for section in dict.fromkeys(r.get(sections) for r in rows):
    part = [r for r in rows if r.get(sections) == section]
    cost = any("cost" in r for r in part)
    header = [*row_axes, *(" ".join(c) for c in columns), *(["cost"] if cost else [])]
    lines = [f"{metric} ({sections} = {section})" if sections else metric, ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in dict.fromkeys(tuple(r[a] for a in row_axes) for r in part):
      mine = [r for r in part if tuple(r[a] for a in row_axes) == key]
      found = {tuple(r[p] for p in pivot): r for r in mine}
      values = [_counted(found[c], metric, full) if c in found else "" for c in columns]
      extra = [mine[0].get("cost", "")] if cost else []
      lines.append("| " + " | ".join([*key, *values, *extra]) + " |")
    out.append("\n".join(lines))
  return "\n\n".join(out)


def _counted(row: dict, metric: str, full: int) -> str:
  return _value(row[metric]) + (f" (n={row['n']})" if row["n"] < full else "")


def _value(stat: dict, digits: int = 3) -> str:
  mean, std = f"{stat['mean']:.{digits}f}", f"{stat['std']:.{digits}f}"
  return mean + (f" ± {std}" if stat["std"] > 0 else "")


def sectioned(rows, keep, sections, headers: dict) -> str:
  """:func:`markdown` tables, one per combination of the ``sections`` axes' labels."""
  out = []
  for label in dict.fromkeys(tuple(r[a] for a in sections) for r in rows):
    part = [r for r in rows if tuple(r[a] for a in sections) == label]
    title = ", ".join(f"{a} = {v}" for a, v in zip(sections, label, strict=True))
    out.append((f"{title}\n\n" if title else "") + markdown(part, keep, headers))
  return "\n\n".join(out)


def markdown(rows, keep, headers: dict) -> str:
  """``headers``: ``{metric: column title}``."""
  metrics = list(headers)
  header = [*keep, *headers.values(), "n"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells_ = [str(row.get(k, "")) for k in keep]
    cells_ += [_value(row[m], digits=4) for m in metrics]
    lines.append("| " + " | ".join([*cells_, str(row["n"])]) + " |")
  return "\n".join(lines)
