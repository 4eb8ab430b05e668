"""``jaxseg eval``: scores a run's best checkpoint on a split, images and volumes alike;
prints and saves a table.

Every case (an image, or a volume in its input's voxel grid: the prediction put back
as ``jaxseg predict`` writes it) gets per foreground class Dice, IoU, HD, HD95, average
surface distance and normalized surface Dice at ``config.eval.nsd_tolerance`` (pixels,
or mm at each case's own spacing): ``<split>_cases.csv``, one row per case. Their
means over the cases are ``<split>_metrics.json`` (``{metric: {mean, std, pooled}}``;
``dice`` etc. the mean over classes). Empty-mask conventions (:mod:`jaxseg.metrics`): a
class absent from both is Dice 1, HD/HD95/ASD 0, NSD 1; absent from one only: Dice 0,
NSD 0, HD/HD95/ASD infinite in the CSV, averaged as the case's diagonal and counted
(``<metric>_<class>_missed``; ``hd_missed`` the cases with any class missed). With
several classes ``hd`` etc. are the mean over the classes, images and volumes alike.

Images add the pooled scores (of the summed counts), the loss, with
``config.eval.topology`` ISBI's Rand and warping errors, with ``config.eval.samples``
the generalized energy distance (``<split>_samples.png``), per-site scores of a
federated run, its privacy spent; the first 8 images' predictions are drawn in
``<split>_overlays.png`` (image, truth green, prediction red).
"""

import csv
import json
import math
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import metrics
from jaxseg.data import pipeline, volumes
from jaxseg.fed import privacy, recipe
from jaxseg.models.interface import decode
from jaxseg.run import evaluators, pictures
from jaxseg.run.experiment import Experiment
from jaxseg.run.volume import class_dice

METRICS = ("dice", "iou", "hd", "hd95", "asd", "nsd")
NSD_TOLERANCE = 1.0  # runs whose config.eval predates nsd_tolerance


class Scored(NamedTuple):
  """A split's scores: the ``table`` (``{metric: {mean, std, pooled}}`` and counts),
  one row per case, the printed ``text``, what a case is (``unit``) and what else was
  written (``drawn``)."""

  table: dict
  rows: list
  text: str
  unit: str
  drawn: str = ""


def run(workdir: str, split: str = "test") -> dict:
  """Scores the best checkpoint of ``workdir`` on ``split``; prints and saves a table."""
  exp, state, step = evaluators.restore_state(workdir, (split,))
  scored = (volume_scores if exp.volumes is not None else image_scores)(exp, state, split, workdir)
  result = {"step": step, "split": split, "cases": len(scored.rows), **scored.table}
  fc = exp.config.get("fed")
  if fc and fc.dp.clip != "none":  # the privacy spent by the checkpoint's rounds
    result["epsilon"] = privacy.epsilon(recipe.of(exp.config), step, fc.num_clients)
  path = os.path.join(workdir, f"{split}_metrics.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  cases = os.path.join(workdir, f"{split}_cases.csv")
  with open(cases, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(scored.rows[0]))
    writer.writeheader()
    writer.writerows(scored.rows)
  print(f"\n{split} split, {len(scored.rows)} {scored.unit}, best checkpoint (step {step}):\n")
  print(scored.text)
  print(f"\nwritten to {path} ({scored.drawn}one row per case in {cases})")
  return result


def case_scores(pred, truth, spacing, num_classes: int, tolerance: float) -> dict:
  """``{metric_class: value}`` of one case (classes 1..K-1)."""
  out = {}
  for c, dice in enumerate(class_dice(pred, truth, num_classes), start=1):
    p, g = pred == c, truth == c
    out[f"dice_{c}"] = float(dice)
    out[f"iou_{c}"] = float(dice / (2 - dice))  # IoU = Dice / (2 - Dice)
    for name, value in metrics.surface_scores(p, g, tolerance, spacing).items():
      out[f"{name}_{c}"] = value
  return out


def summarize(rows: list[dict], num_classes: int, extents) -> dict:
  """``{metric: {mean, std, pooled: None}}`` over cases; infinite distances (a class
  missed or hallucinated) count as the case's ``extents`` (its diagonal) and are
  counted as ``<metric>_<class>_missed``."""
  table, classes = {}, range(1, max(num_classes, 2))
  for m in METRICS:
    values = np.array([[r[f"{m}_{c}"] for c in classes] for r in rows], np.float64)
    missed = ~np.isfinite(values)
    if m == "hd":  # the cases with a class missed or hallucinated
      table["hd_missed"] = int(missed.any(1).sum())
    values = metrics.bounded(values, np.asarray(extents, np.float64)[:, None])
    table[m] = metrics.mean_std(values.mean(1))
    for i, c in enumerate(classes):
      table[f"{m}_{c}"] = metrics.mean_std(values[:, i])
      if missed[:, i].any():
        table[f"{m}_{c}_missed"] = int(missed[:, i].sum())
  return table


def _tolerance(exp) -> float:
  return float(exp.config.eval.get("nsd_tolerance", NSD_TOLERANCE))


def volume_scores(exp, state, split: str, workdir: str) -> Scored:
  """Each case of ``split`` predicted by sliding windows, put back into its input's
  grid and scored against its label file as stored (or a built-in dataset's labels)."""
  del workdir
  variables = exp.variables(state)
  num, tolerance = exp.model.interface.num_classes, _tolerance(exp)
  rows, extents = [], []
  for name in exp.volumes.data.splits[split]:
    case = exp.volumes.data.cases[name]
    pred = volumes.restore_case(exp.volumes.predict(variables, case["image"]), case["meta"])
    spacing = volumes.spacing_of(case["meta"].affine)
    rows.append({"case": name, **case_scores(pred, truth_of(case), spacing, num, tolerance)})
    extents.append(float(np.linalg.norm(np.asarray(pred.shape) * spacing)))
  table = summarize(rows, num, extents)
  return Scored(table, rows, format_classes(table, num, tolerance), "cases")


def truth_of(case: dict) -> np.ndarray:
  """The case's labels in its input grid: the label file as stored, or (generated
  data) the case's own labels."""
  if case.get("label_file"):
    return volumes.read(case["label_file"])[0].astype(np.uint8)
  return case["labels"]


def format_classes(table: dict, num_classes: int, tolerance: float) -> str:
  """A class per row, :data:`METRICS` as columns (distances in mm)."""
  head = f"| class | Dice | IoU | HD (mm) | HD95 (mm) | ASD (mm) | NSD@{tolerance:g}mm |"
  lines = [head, "|---" * (len(METRICS) + 1) + "|"]
  for c in [*range(1, max(num_classes, 2)), "mean"]:
    suffix = "" if c == "mean" else f"_{c}"
    cells = " | ".join(f"{table[m + suffix]['mean']:.4f}" for m in METRICS)
    lines.append(f"| {c} | {cells} |")
  return "\n".join(lines)


def image_scores(exp, state, split: str, workdir: str) -> Scored:
  """The evaluated network over ``split`` (in batches, or tiled with
  ``config.eval.tiled``); distances in pixels."""
  config, variables = exp.config, exp.variables(state)
  evaluator = evaluators.ImageEvaluator(exp)
  per_image, shown = evaluator.score(variables, split, keep=8)
  overlays = os.path.join(workdir, f"{split}_overlays.png")
  pictures.save_overlays(overlays, shown["image"], shown["labels"], shown["pred"])
  table = metrics_table(per_image, config.eval.topology)
  num, tolerance = exp.model.interface.num_classes, _tolerance(exp)
  pairs = zip(per_image["pred"], per_image["labels"], strict=True)
  rows = [{"image": i, **case_scores(p, g, None, num, tolerance)} for i, (p, g) in enumerate(pairs)]
  diag = [math.hypot(*exp.image_shape[:2])] * len(rows)
  table.update({k: v for k, v in summarize(rows, num, diag).items() if k not in table})
  if config.eval.samples:
    ged, diversity, drawn = sampled_scores(exp, variables, split, config.eval.samples)
    for name, values in (("ged", ged), ("sample_diversity", diversity)):
      table[name] = {"mean": float(values.mean()), "std": float(values.std()), "pooled": None}
    pictures.save_samples(os.path.join(workdir, f"{split}_samples.png"), **drawn)
  sites = site_scores(evaluator, state, split, per_image)
  if sites:  # of the model each site uses: under FedBN its own BatchNorm's
    dice = [r.get("dice_local", r["dice"]) for r in sites.values()]
    table["site_dice_mean"] = metrics.mean_std(np.array(dice))
    table["site_dice_worst"] = {"mean": float(min(dice)), "std": 0.0, "pooled": None}
  text = format_table(table) + ("\n\n" + format_sites(sites) if sites else "")
  if sites:
    table["sites"] = sites
  return Scored(table, rows, text, "images", f"its first images drawn in {overlays}; ")


def site_scores(evaluator, state, split: str, per_image: dict) -> dict | None:
  """Per acquisition site of a federated run's ``split`` (:func:`evaluators.site_ids`):
  ``{site: {images, dice, iou}}`` of the global model, as FLamby reports per centre;
  FedBN by site also ``dice_local`` / ``iou_local``, the site's own model (its
  BatchNorm from what it kept: :func:`evaluators.local_variables`), which is what
  ``site_dice_mean`` / ``site_dice_worst`` then average: a FedBN site never uses the
  global model's BatchNorm, which no round trains."""
  exp = evaluator.exp
  sites = evaluators.site_ids(exp, split)
  if sites is None:
    return folder_site_scores(evaluator, state, split, per_image)
  out = {}
  for s in np.unique(sites):
    row = {"images": int(np.sum(sites == s)), **_overlap(per_image, sites == s)}
    if evaluators.keeps_local_bn(exp):
      variables = evaluators.local_variables(exp, state, int(s) % exp.config.fed.num_clients)
      own = evaluator.score(variables, split)[0]
      row.update({f"{k}_local": v for k, v in _overlap(own, sites == s).items()})
    out[f"site {s}"] = row
  return out


def folder_site_scores(evaluator, state, split: str, per_image: dict) -> dict | None:
  """FedBN over site folders (``config.fed.client_dirs``): ``{site: {images, dice, iou,
  dice_local, iou_local}}`` of the server's whole ``split`` scored with the global
  model and with each site's own (its BatchNorm: the model that site deploys); None
  for any other run."""
  exp = evaluator.exp
  fc = exp.config.get("fed")
  if not fc or fc.algorithm != "fedbn" or not fc.client_dirs:
    return None
  every = np.ones(len(per_image["loss"]), bool)
  out = {}
  for c, folder in enumerate(fc.client_dirs):
    own = evaluator.score(evaluators.local_variables(exp, state, c), split)[0]
    row = {"images": int(every.sum()), **_overlap(per_image, every)}
    row.update({f"{k}_local": v for k, v in _overlap(own, every).items()})
    out[os.path.basename(os.path.normpath(folder))] = row
  return out


def _overlap(per_image: dict, where) -> dict:
  scores = metrics.scores({k: v[where] for k, v in per_image.items()})
  return {"dice": float(np.mean(scores["dice"])), "iou": float(np.mean(scores["iou"]))}


def format_sites(sites: dict) -> str:
  local = "dice_local" in next(iter(sites.values()))
  head = "| site | images | Dice (global model) |" + (
    " Dice (its own BatchNorm) |" if local else ""
  )
  lines = [head, "|---" * (4 if local else 3) + "|"]
  for name, r in sites.items():
    extra = f" {r['dice_local']:.4f} |" if local else ""
    lines.append(f"| {name} | {r['images']} | {r['dice']:.4f} |{extra}")
  return "\n".join(lines)


def sampled_scores(exp: Experiment, variables, split: str, m: int, shown: int = 4):
  """Per-image generalized energy distance (``d = 1 - IoU``) of ``m`` samples against
  every rater's mask, the samples' diversity, and the first ``shown`` examples.

  A ``prob_unet`` draws its ``m`` samples from the prior (keys from the config's
  seed); any other model's single prediction stands for all ``m`` (its diversity 0).
  """
  model, cfg = exp.model, exp.config

  @jax.jit
  def sample(variables, image, key):
    if model.interface.takes_labels:  # a generative model: samples of its prior
      out = decode(model.apply(variables, image, num_samples=m, rngs={"sample": key}))
      return metrics.hard_labels(out.samples)
    logits = decode(model.apply(variables, image)).logits
    return jnp.broadcast_to(metrics.hard_labels(logits), (m, *logits.shape[:3]))

  key = jax.random.fold_in(jax.random.key(cfg.seed), 7)
  ged, diversity, pictures = [], [], {"images": [], "raters": [], "samples": []}
  batches = pipeline.eval_batches(exp.sources[split], cfg.eval.batch_size, annotators=True)
  for i, batch in enumerate(batches):
    drawn = np.asarray(sample(variables, batch["image"], jax.random.fold_in(key, i)))
    for j in np.flatnonzero(batch["valid"]):
      ged.append(float(metrics.ged(drawn[:, j], batch["annotators"][j])))
      diversity.append(float(metrics.diversity(drawn[:, j])))
      if len(pictures["images"]) < shown:
        pictures["images"].append(batch["image"][j])
        pictures["raters"].append(batch["annotators"][j])
        pictures["samples"].append(drawn[:, j])
  return np.array(ged), np.array(diversity), pictures


def metrics_table(per_image: dict, topology: bool = False) -> dict:
  """``{metric: {mean, std, pooled}}`` of the counts (Dice, IoU, …), the loss, and with
  ``topology`` the ISBI 2012 Rand and warping errors; ``dice_<k>`` / ``iou_<k>`` of each
  foreground class, and with several classes ``dice`` / ``iou`` their mean (the union's
  ``dice_fg`` / ``iou_fg``). The distances (HD, HD95, ASD, NSD) are the cases' own
  (:func:`case_scores`, :func:`summarize`): computed once per image and class."""
  per = {k: np.asarray(v) for k, v in metrics.scores(per_image).items()}
  pooled = {k: float(v) for k, v in metrics.pooled(per_image).items()}
  per_class, pooled_class = metrics.class_scores(per_image)
  if pooled_class["dice"].size > 1:
    for name in ("dice", "iou"):
      per[f"{name}_fg"], pooled[f"{name}_fg"] = per[name], pooled[name]
      per[name], pooled[name] = per_class[name].mean(1), float(pooled_class[name].mean())
  for name in ("dice", "iou"):
    for k in range(pooled_class[name].size):
      per[f"{name}_{k + 1}"] = per_class[name][:, k]
      pooled[f"{name}_{k + 1}"] = float(pooled_class[name][k])
  table = {k: metrics.mean_std(v, pooled[k]) for k, v in per.items()}
  if topology:
    pairs = list(zip(per_image["pred"], per_image["labels"], strict=True))
    for name, fn in (("rand_error", metrics.rand_error), ("warping_error", metrics.warping_error)):
      table[name] = metrics.mean_std([fn(p, g) for p, g in pairs])
  table["loss"] = metrics.mean_std(per_image["loss"])
  return table


def format_table(table: dict) -> str:
  """The printed table; with one foreground class its ``dice_1``-style rows, equal to
  ``dice``, ``iou``, … by definition, stay in the JSON file only."""
  lines = ["| metric | mean ± std (per image) | pooled |", "|---|---|---|"]
  single = "dice_2" not in table
  for name, r in table.items():
    if single and name.rsplit("_", 1)[0] in table and name.endswith("_1"):
      continue
    if isinstance(r, dict):
      pooled = "" if r["pooled"] is None else f"{r['pooled']:.4f}"
      lines.append(f"| {name} | {r['mean']:.4f} ± {r['std']:.4f} | {pooled} |")
  lines.append(f"| images with HD = inf (a class in one mask only) | {table['hd_missed']} | |")
  return "\n".join(lines)
