"""``jaxseg sweep``: run every cell of a config's sweep and tabulate the results.

A config declares its sweep in ``config.sweep``:

* ``axes``: a tuple of ``(axis_name, ((label, overrides), ...))``, where
  ``overrides`` is a tuple of ``(dotted_key, value)`` pairs applied to the config
  (build them with :func:`axis`);
* ``average``: the axis averaged over (seeds or folds): each table row is the mean
  and std of each metric over its labels;
* ``metrics``: the test metrics to tabulate (names in ``test_metrics.json``);
* ``cost`` (optional): ``((label, text), ...)`` of the first axis, shown as a
  ``cost`` column (e.g. a method's communication cost).

Cells run one after another in this process, each in ``DIR/<axis>=<label>_.../``,
trained and evaluated exactly as ``jaxseg train`` / ``jaxseg eval`` would. A cell
whose ``test_metrics.json`` exists is not rerun, so an interrupted sweep resumes.
Compiled executables are shared across cells through JAX's persistent compilation
cache in ``DIR/jax_cache`` (cells that differ only in data, fold or seed reuse the
training step). The table goes to ``DIR/results.md`` and ``DIR/results.json``.
"""

import copy
import itertools
import json
import os

import jax
import ml_collections
import numpy as np

from jaxseg.train import loop


def axis(name: str, variants: dict) -> tuple:
  """``axis("model", {"unet": {"model.name": "unet"}, ...})`` in the sweep format."""
  return (name, tuple((label, tuple(overrides.items())) for label, overrides in variants.items()))


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``(dotted_key, value)`` overrides; dict values replace."""
  config = copy.deepcopy(config)
  for key, value in overrides:
    *path, last = key.split(".")
    node = config
    for part in path:
      if part not in node:
        raise ValueError(f"sweep override {key!r}: no config key {part!r}.")
      node = node[part]
    if last not in node:
      raise ValueError(f"sweep override {key!r}: no config key {last!r}.")
    with node.unlocked():
      node[last] = ml_collections.ConfigDict(dict(value)) if isinstance(value, dict) else value
  return config


def cells(sweep: ml_collections.ConfigDict):
  """Every combination of the axes' labels, with the merged overrides."""
  names = [name for name, _ in sweep.axes]
  for combo in itertools.product(*[variants for _, variants in sweep.axes]):
    labels = dict(zip(names, [label for label, _ in combo], strict=True))
    overrides = [item for _, items in combo for item in items]
    yield labels, overrides


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs (or resumes) every cell of ``config.sweep`` and writes the results table."""
  if "sweep" not in config:
    raise ValueError("config has no `sweep` section; use `jaxseg train` for a single run.")
  sweep = config.sweep
  names = [name for name, _ in sweep.axes]
  if sweep.average not in names:
    raise ValueError(f"config.sweep.average={sweep.average!r} is not an axis; axes: {names}.")
  loop.prepare_workdir(workdir)
  jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  base = copy.deepcopy(config)
  with base.unlocked():
    del base["sweep"]
  results = []
  todo = list(cells(sweep))
  for i, (labels, overrides) in enumerate(todo):
    name = "_".join(f"{k}={v}" for k, v in labels.items()).replace("/", "-")  # e.g. 1/16
    cell_dir = os.path.join(workdir, name)
    path = os.path.join(cell_dir, "test_metrics.json")
    if not os.path.exists(path):
      print(f"\n[{i + 1}/{len(todo)}] {labels}", flush=True)
      loop.train(apply_overrides(base, overrides), cell_dir)
      loop.evaluate(cell_dir)
    with open(path) as f:
      results.append({"labels": labels, "metrics": json.load(f)})
  rows = aggregate(results, names, sweep.average, list(sweep.metrics))
  if "cost" in sweep:
    cost = dict(sweep.cost)
    for row in rows:
      row["cost"] = cost.get(row[names[0]], "")
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(rows, f, indent=2)
  keep = [n for n in names if n != sweep.average]
  table = markdown(rows, keep + (["cost"] if "cost" in sweep else []), list(sweep.metrics))
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table + "\n")
  print("\n" + table)
  return rows


def aggregate(results, names, average, metrics) -> list[dict]:
  """Rows of the non-averaged axes with mean/std of each metric over ``average``."""
  keep = [n for n in names if n != average]
  groups = {}
  for r in results:
    groups.setdefault(tuple(r["labels"][n] for n in keep), []).append(r["metrics"])
  rows = []
  for key, group in groups.items():
    row = dict(zip(keep, key, strict=True)) | {"n": len(group)}
    for m in metrics:
      values = np.array([g[m]["mean"] for g in group], dtype=float)
      row[m] = {"mean": float(values.mean()), "std": float(values.std())}
    rows.append(row)
  return rows


def markdown(rows, keep, metrics) -> str:
  header = [*keep, *metrics, "n"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells_ = [str(row[k]) for k in keep]
    cells_ += [f"{row[m]['mean']:.3f} ± {row[m]['std']:.3f}" for m in metrics]
    lines.append("| " + " | ".join([*cells_, str(row["n"])]) + " |")
  return "\n".join(lines)
