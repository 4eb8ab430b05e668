"""A sweep's tables: what each finished cell holds, averaged over the sweep's
``average`` axis (:mod:`jaxseg.run.sweep`).

Per cell (:func:`read_cell`): its test metrics (``test_metrics.json``), measured cost
(``communication.json``), and from ``metrics.jsonl`` its validation Dice curve and the
curves of the logged training diagnostics (:data:`CURVES`: the semi-supervised
methods' pseudo-labels, FedWeP's seed-search similarity). Per row of the table
(:func:`aggregate`): mean and std of each metric; with ``config.sweep.validation``
the best validation Dice (what picked each cell's checkpoint); with
``config.sweep.collapse`` the runs whose best validation Dice, and whose test value of
the first metric, fall below it; with ``config.sweep.logged`` a training diagnostic at
a given step or round, e.g. ``("pseudo_agree", 1)``.
"""

import json
import os

import numpy as np

from jaxseg.run import pictures

# Training diagnostics drawn by round in ``curves.md`` when a cell logs them.
CURVES = ("pseudo_fg", "pseudo_agree", "similarity", "similarity_std")
MAX_COLUMNS = 16  # of a training diagnostic's curve (validation curves: every step)


def read_cell(cell_dir: str, labels: dict) -> dict:
  """What the tables read of one finished cell."""
  with open(os.path.join(cell_dir, "test_metrics.json")) as f:
    result = {"labels": labels, "metrics": json.load(f)}
  measured = os.path.join(cell_dir, "communication.json")
  if os.path.exists(measured):
    with open(measured) as f:
      result["cost"] = json.load(f)["text"]
  records = []
  path = os.path.join(cell_dir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      records = [json.loads(line) for line in f]
  validation = [r for r in records if r["split"] == "validation" and "dice" in r]
  train = [r for r in records if r["split"] == "train"]
  result["curves"] = {"validation dice": {r["step"]: r["dice"] for r in validation}}
  for name in CURVES:
    curve = {r["step"]: r[name] for r in train if name in r}
    if curve:
      result["curves"][name] = curve
  return result


def write_tables(sweep, results: list[dict], workdir: str) -> list[dict]:
  """``results.md`` / ``results.json`` (the table) and ``curves.md`` / ``curves.png``
  (the validation curves, one panel per combination of the pivot axes)."""
  names = [name for name, _ in sweep.axes]
  rows = aggregate(results, names, sweep)
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
    if sweep.collapse:
      table += (
        f"\n\n(k collapsed: runs whose test {metric} is below {sweep.collapse}, "
        "e.g. no lesion predicted.)"
      )
  else:
    sections = sweep.sections
    sections = [sections] if isinstance(sections, str) else list(sections or ())
    columns = [n for n in keep if n not in sections] + (["cost"] if has_cost else [])
    table = sectioned(rows, columns, sections, headers(sweep))
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(workdir, "curves.md"), "w") as f:
    f.write(curves_tables(results, keep) + "\n")
  panels = [n for n in (sweep.pivot or ()) if n in keep]
  pictures.save_sweep_curves(
    os.path.join(workdir, "curves.png"), curve_means(results, keep), keep, panels
  )
  print("\n" + table)
  return rows


def headers(sweep) -> dict:
  """``{row key: column title}`` of a non-pivoted table, in order."""
  out = {"validation_dice": "best validation dice"} if sweep.validation else {}
  out |= dict(zip(sweep.metrics, sweep.headers or sweep.metrics, strict=True))
  if sweep.collapse:
    out["collapsed"] = f"collapsed (< {sweep.collapse}: validation / test)"
  for name, step in sweep.logged:
    out[f"{name}@{step}"] = f"{name} at {step}"
  return out


def aggregate(results, names, sweep) -> list[dict]:
  """Rows of the non-averaged axes with mean/std of each metric over ``sweep.average``
  (and the diagnostics ``sweep`` asks for: see the module docstring)."""
  keep = [n for n in names if n != sweep.average]
  groups = {}
  for r in results:
    groups.setdefault(tuple(r["labels"][n] for n in keep), []).append(r)
  rows = []
  for key, group in groups.items():
    row = dict(zip(keep, key, strict=True)) | {"n": len(group)}
    for m in sweep.metrics:
      name, _, stat = m.partition(":")
      row[m] = _stat([g["metrics"][name][stat or "mean"] for g in group])
    curves = [g["curves"].get("validation dice", {}) for g in group]
    best = [max(c.values(), default=np.nan) for c in curves]
    if sweep.validation:
      row["validation_dice"] = _stat(best)
    if sweep.collapse:
      first = sweep.metrics[0].partition(":")
      test = [g["metrics"][first[0]][first[2] or "mean"] for g in group]
      row["collapsed"] = {
        "validation": int(sum(v < sweep.collapse for v in best)),
        "test": int(sum(v < sweep.collapse for v in test)),
      }
    for name, step in sweep.logged:
      found = [g["curves"].get(name, {}).get(step) for g in group]
      row[f"{name}@{step}"] = _stat([v for v in found if v is not None])
    if "cost" in group[0]:
      row["cost"] = group[0]["cost"]
    rows.append(row)
  return rows


def _stat(values) -> dict:
  values = np.array(values, dtype=float)
  if not values.size:
    return {"mean": float("nan"), "std": 0.0}
  return {"mean": float(values.mean()), "std": float(values.std())}


def pivoted(rows, keep, pivot, sections, metric: str, order: dict, full: int = 0) -> str:
  """``metric`` with the ``pivot`` axes as columns (one table per ``sections`` label),
  columns ordered by the pivot axes in turn (``order``: each axis's labels); a value of
  fewer than ``full`` cells says ``(n=K)``, one with collapsed runs ``(k collapsed)``."""
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
  text = _value(row[metric]) + (f" (n={row['n']})" if row["n"] < full else "")
  collapsed = row.get("collapsed", {}).get("test", 0)
  return text + (f" ({collapsed} collapsed)" if collapsed else "")


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
  """``headers``: ``{row key: column title}`` (a metric's mean ± std, or a count)."""
  header = [*keep, *headers.values(), "n"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [str(row.get(k, "")) for k in keep]
    for key in headers:
      value = row[key]
      if key == "collapsed":
        cells.append(f"{value['validation']} / {value['test']}")
      else:
        cells.append(_value(value, digits=4))
    lines.append("| " + " | ".join([*cells, str(row["n"])]) + " |")
  return "\n".join(lines)


def curves_tables(results: list[dict], keep: list[str]) -> str:
  """One :func:`curves_table` per curve the cells logged, validation Dice first."""
  names = dict.fromkeys(name for r in results for name in r["curves"])
  return "\n\n".join(f"{name} by step\n\n{curves_table(results, keep, name)}" for name in names)


def curve_means(results: list[dict], keep: list[str], name: str = "validation dice") -> dict:
  """``{labels of the kept axes: {step: mean of curve name over the averaged axis}}``."""
  groups = {}
  for r in results:
    groups.setdefault(tuple(r["labels"][n] for n in keep), []).append(r["curves"].get(name, {}))
  steps = sorted({s for curves in groups.values() for c in curves for s in c})
  return {
    key: {s: float(np.mean(v)) for s in steps if (v := [c[s] for c in curves if s in c])}
    for key, curves in groups.items()
  }


def curves_table(results: list[dict], keep: list[str], name: str = "validation dice") -> str:
  """Curve ``name`` at each logged step (or round), the mean over the averaged axis,
  one row per combination of the other axes."""
  means = curve_means(results, keep, name)
  steps = sorted({s for curve in means.values() for s in curve})
  if name != "validation dice" and len(steps) > MAX_COLUMNS:  # every k-th, and the last
    every = -(-len(steps) // MAX_COLUMNS)
    steps = sorted(set(steps[::every]) | {steps[-1]})
  lines = ["| " + " | ".join([*keep, *map(str, steps)]) + " |"]
  lines.append("|" + "---|" * (len(keep) + len(steps)))
  for key, curve in means.items():
    cells = [f"{curve[s]:.2f}" if s in curve else "" for s in steps]
    lines.append("| " + " | ".join([*key, *cells]) + " |")
  return "\n".join(lines)
