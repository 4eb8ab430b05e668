"""`jaxseg sweep`: cells, overrides, aggregation, resumption."""

import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxseg import main
from jaxseg.run import sweep, sweep_tables
from tests.conftest import make_tiny_config


def test_apply_overrides_and_errors():
  config = make_tiny_config()
  out = sweep.apply_overrides(config, [("model.kwargs", {"widths": (2, 4)}), ("data.fold", 1)])
  assert tuple(out.model.kwargs.widths) == (2, 4) and out.data.fold == 1
  assert tuple(config.model.kwargs.widths) == (4, 8)  # the original is untouched
  with pytest.raises(ValueError, match="no config key 'lr_max'"):
    sweep.apply_overrides(config, [("optim.lr_max", 1.0)])


def test_the_command_line_reaches_inside_what_a_cell_sets_whole():
  config = make_tiny_config()
  overrides = [("model.kwargs", {"widths": (2, 4), "dropout": 0.0}), ("seed", 1)]
  cell = sweep.apply_overrides(config, overrides)
  out = sweep.with_command_line(cell, overrides, {"model.kwargs.dropout": 0.5}, {"seed": "1"})
  assert out.model.kwargs.dropout == 0.5 and tuple(out.model.kwargs.widths) == (2, 4)
  with pytest.raises(ValueError, match=r"^--config.seed: the sweep sets seed in its cells"):
    sweep.with_command_line(cell, overrides, {"seed": 3}, {"seed": "1"})
  with pytest.raises(ValueError, match=r"--config.model.kwargs.depth: cell .* no config key"):
    sweep.with_command_line(cell, overrides, {"model.kwargs.depth": 3}, {"seed": "1"})


def test_a_pivoted_table_says_how_many_cells_a_value_averages():
  row = lambda f, n: {"m": "a", "f": f, "n": n, "dice": {"mean": 0.5, "std": 0.0}}  # noqa: E731
  order = {"m": ["a"], "f": ["x", "y"]}
  table = sweep_tables.pivoted(
    [row("x", 3), row("y", 1)], ["m", "f"], ["f"], None, "dice", order, 3
  )
  assert table.splitlines()[-1] == "| a | 0.500 | 0.500 (n=1) |"


def _sweep(**kwargs):
  return sweep.Sweep(axes=(), average="fold", metrics=("dice",), **kwargs)


def test_aggregate_mean_and_std_over_the_averaged_axis():
  results = [
    {"labels": {"model": m, "fold": f}, "metrics": {"dice": {"mean": d}}, "curves": {}}
    for m, f, d in (("a", "0", 0.5), ("a", "1", 0.7), ("b", "0", 0.9), ("b", "1", 0.9))
  ]
  rows = sweep_tables.aggregate(results, ["model", "fold"], _sweep())
  assert rows[0]["model"] == "a" and rows[0]["n"] == 2
  np.testing.assert_allclose([rows[0]["dice"]["mean"], rows[0]["dice"]["std"]], [0.6, 0.1])
  assert "| a | 0.6000 ± 0.1000 | 2 |" in sweep_tables.markdown(rows, ["model"], {"dice": "dice"})


def test_a_table_shows_best_validation_collapses_and_logged_diagnostics():
  """What a selection by validation needs beside the test metric: each run's best
  validation Dice, the runs that collapsed (validation and test counted apart), and a
  logged training diagnostic at a given round, averaged over the seeds."""
  runs = (("0", 0.6, 0.5, 0.9), ("1", 0.02, 0.01, 0.99), ("2", 0.5, 0.03, 0.8))
  results = [
    {
      "labels": {"method": "rwp", "fold": f},
      "metrics": {"dice": {"mean": test}},
      "curves": {"validation dice": {2: val / 2, 4: val}, "pseudo_agree": {1: agree, 5: 1.0}},
    }
    for f, val, test, agree in runs
  ]
  config = _sweep(validation=True, collapse=0.05, logged=(("pseudo_agree", 1),))
  (row,) = sweep_tables.aggregate(results, ["method", "fold"], config)
  np.testing.assert_allclose(row["validation_dice"]["mean"], (0.6 + 0.02 + 0.5) / 3)
  assert row["collapsed"] == {"validation": 1, "test": 2}
  np.testing.assert_allclose(row["pseudo_agree@1"]["mean"], (0.9 + 0.99 + 0.8) / 3)
  table = sweep_tables.markdown([row], ["method"], sweep_tables.headers(config))
  assert table.splitlines()[0] == (
    "| method | best validation dice | dice | collapsed (< 0.05: validation / test) "
    "| pseudo_agree at 1 | n |"
  )
  assert "| 1 / 2 |" in table.splitlines()[2]
  pivoted = sweep_tables.pivoted([row], ["method"], [], None, "dice", {}, 3)
  assert pivoted.splitlines()[-1].endswith("(2 collapsed) |")


def test_curves_table_averages_over_the_averaged_axis():
  results = [
    {"labels": {"m": "a", "seed": "0"}, "curves": {"validation dice": {2: 0.5, 4: 0.7}}},
    {"labels": {"m": "a", "seed": "1"}, "curves": {"validation dice": {2: 0.3}}},
    {"labels": {"m": "b", "seed": "0"}, "curves": {"validation dice": {4: 0.1}}},
  ]
  table = sweep_tables.curves_table(results, ["m"]).splitlines()
  assert table[0] == "| m | 2 | 4 |"
  assert table[2:] == ["| a | 0.40 | 0.70 |", "| b |  | 0.10 |"]


def test_sweep_runs_cells_and_resumes(tmp_path, monkeypatch):
  config = make_tiny_config()
  config.train.update(steps=2, eval_every=2)
  config.sweep = ml_collections.ConfigDict(
    dict(
      axes=(
        sweep.axis("model", {"unet": {"model.name": "unet"}}),
        sweep.axis("seed", {"0": {"seed": 0}, "1": {"seed": 1}}),
      ),
      average="seed",
      metrics=("dice", "hd"),
    )
  )
  rows = main.sweep(config, str(tmp_path))
  assert len(rows) == 1 and rows[0]["n"] == 2 and set(rows[0]) >= {"dice", "hd", "model"}
  saved = json.load(open(tmp_path / "results.json"))
  assert saved == rows
  assert "| unet |" in open(tmp_path / "results.md").read()
  assert open(tmp_path / "curves.md").read().splitlines()[:3] == [
    "validation dice by step",
    "",
    "| model | 2 |",
  ]
  assert Image.open(tmp_path / "curves.png").size[0] >= 300  # the curves, drawn
  assert sorted(os.listdir(tmp_path / "jax_cache"))  # compiled steps are cached
  # Finished cells are not rerun.
  monkeypatch.setattr(main, "train", lambda *a, **k: pytest.fail("a finished cell was rerun"))
  assert main.sweep(config, str(tmp_path)) == rows
  # --tabulate: the finished cells only, no training.
  os.remove(tmp_path / "model=unet_seed=1" / "test_metrics.json")
  (partial,) = main.sweep(config, str(tmp_path), tabulate=True)
  assert partial["n"] == 1 and partial["dice"]["std"] == 0.0
  with pytest.raises(ValueError, match="no `sweep` section"):
    main.sweep(make_tiny_config(), str(tmp_path / "x"))


def test_the_curves_legend_names_a_line_drawn_in_some_panels_only(tmp_path):
  """The supervised bound has only the first fraction's panel; it is in the legend."""
  from jaxseg.run import pictures

  means = {
    ("1/8", "FedAvg"): {2: 0.5},
    ("1/8", "CPS"): {2: 0.4},
    ("1/2", "CPS"): {2: 0.6},
  }
  path, keep = str(tmp_path / "c.png"), ["fraction", "method"]
  labels = pictures.save_sweep_curves(path, means, keep, ["fraction"])
  assert labels == ["FedAvg", "CPS"]
