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
* ``validation``, ``collapse``, ``logged`` (optional): a column of each row's best
  validation Dice; counts of the runs that collapsed below ``collapse``; training
  diagnostics at given steps or rounds (``(("pseudo_agree", 1), ...)``); see
  :mod:`jaxseg.run.sweep_tables`;
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
a cell sets whole (``--config.method.kwargs.ramp_up=0.33`` reaches the cells that
set ``method.kwargs``); a key a cell sets itself cannot also come from the command
line (one line names it).
Compiled executables are shared across cells through JAX's persistent compilation
cache in ``DIR/jax_cache`` (cells that differ only in data, fold or seed reuse the
training step). The table goes to ``DIR/results.md`` and ``DIR/results.json``, the
validation curves (Dice at each evaluated step or round, averaged as the table is) to
``DIR/curves.md`` and, drawn, ``DIR/curves.png``.
"""

import copy
import dataclasses
import itertools
import os
from collections.abc import Callable

import jax
import ml_collections
from jax.experimental.compilation_cache import compilation_cache

from jaxseg import tables
from jaxseg.errors import UserError
from jaxseg.run import skeleton, sweep_tables

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
  validation: bool = False
  collapse: float = 0.0
  logged: tuple = ()


def settings(config_sweep) -> Sweep:
  values = {k: config_sweep[k] for k in config_sweep.keys()}
  tables.check_settings(Sweep, values, "config.sweep")
  return Sweep(**values)


@dataclasses.dataclass(frozen=True)
class Runners:
  train: Callable  # (config, workdir) -> state
  evaluate: Callable  # (workdir) -> test metrics
  synthesize: Callable  # (gan_workdir, num, output) -> output
  train_seeds: Callable | None = None  # (configs, workdirs) -> states: --vmap_seeds


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
  results, grouped = [], {}
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
      cell = with_command_line(apply_overrides(base, overrides), overrides, command_line, labels)
      if runners.train_seeds is None:
        runners.train(cell, cell_dir)
        runners.evaluate(cell_dir)
      else:  # trained with the other seeds of its group, below
        rest = tuple((k, v) for k, v in labels.items() if k != sweep.average)
        grouped.setdefault(rest, []).append((cell, cell_dir))
    results.append((cell_dir, labels))
  for group in grouped.values():
    runners.train_seeds([c for c, _ in group], [d for _, d in group])
    for _, cell_dir in group:
      runners.evaluate(cell_dir)
  results = [sweep_tables.read_cell(d, labels) for d, labels in results]
  return results if only is not None else sweep_tables.write_tables(sweep, results, workdir)


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
