"""Scoring a split, validating during training, and restoring a finished run.

An *evaluator* (:func:`evaluator`) scores a run's validation data: images by
:class:`ImageEvaluator`, volumes by :class:`jaxseg.run.volume.Evaluator`; its
``validate(state)`` returns the scalars (``dice`` picks the best checkpoint) and the
examples to draw. ``restore(workdir)`` is the one way ``eval``, ``predict`` and
``sweep`` get a run's best checkpoint back.
"""

import os
from collections.abc import Callable

import jax
import numpy as np

from jaxseg import infer, metrics
from jaxseg.data import pipeline
from jaxseg.errors import UserError
from jaxseg.fed import algorithms
from jaxseg.run import checkpoint, pictures, skeleton, volume
from jaxseg.run.experiment import Experiment, is_volume
from jaxseg.train import sharding

SHOWN = ("image", "labels", "pred")


class ImageEvaluator:
  """Validation and test scoring of an image run: the evaluated network over a split
  in fixed-size padded batches (kept on the device with ``on_device``), or image by
  image through :class:`jaxseg.infer.ImagePredictor` with ``config.eval.tiled``."""

  def __init__(self, exp: Experiment, on_device: bool = False):
    self.exp, self.on_device, self._cache = exp, on_device, {}

  def inputs(self, split: str):
    """``(batch, valid)`` pairs over ``split`` (padded batches of ``config.eval.batch_size``);
    with ``on_device`` uploaded once and kept on the device."""
    if split in self._cache:
      return self._cache[split]
    batches = pipeline.eval_batches(self.exp.sources[split], self.exp.config.eval.batch_size)
    pairs = ((b, b.pop("valid")) for b in batches)
    if self.on_device:
      pairs = self._cache[split] = [(jax.device_put(b), v) for b, v in pairs]
    return pairs

  def score(self, variables, split: str, keep: int = 0) -> tuple[dict, dict]:
    """Per-image arrays (loss, counts, prediction) over ``split`` and the first ``keep``
    examples (image, labels, prediction) for pictures."""
    exp = self.exp
    if exp.config.eval.tiled:
      return _evaluate_tiled(exp, variables, split, keep)
    outputs = []
    for batch, valid in self.inputs(split):
      outputs.append(
        {k: v[valid] for k, v in jax.device_get(exp.eval_step(variables, batch)).items()}
      )
    per_image = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    source = exp.sources[split]
    images = pipeline.model_inputs(source.take(range(min(keep, len(source)))))["image"]
    return per_image, {
      "image": list(images),
      "labels": list(per_image["labels"][:keep]),
      "pred": list(per_image["pred"][:keep]),
    }

  def validate(self, state) -> tuple[dict, dict]:
    """The validation split's scores (``dice`` picks the best checkpoint) and the
    examples drawn in ``validation_overlays.png``."""
    per_image, shown = self.score(self.exp.variables(state), "validation", keep=8)
    return summarize(per_image), shown


def _evaluate_tiled(exp: Experiment, variables, split: str, keep: int) -> tuple[dict, dict]:
  """Image by image through :class:`jaxseg.infer.ImagePredictor` (any size, any network)."""
  rows, shown = [], {name: [] for name in SHOWN}
  for batch in pipeline.eval_batches(exp.sources[split], 1):
    image, labels = batch["image"][0], batch["labels"][0]
    prob = exp.predict_image(variables, image)
    pred = infer.labels_of(prob).astype(np.int32)
    loss = exp.loss_fn(infer.logits_of(prob)[None], labels[None], batch.get("weights"))
    counts = {k: int(v) for k, v in metrics.confusion(pred, labels).items()}
    num = exp.model.interface.num_classes
    classes = metrics.class_counts(pred, labels, num)
    counts.update({f"class_{k}": np.asarray(v) for k, v in classes.items()})
    rows.append({"loss": float(loss), "pred": pred, "labels": labels, **counts})
    if len(shown["image"]) < keep:
      for name, value in zip(SHOWN, (image, labels, pred), strict=True):
        shown[name].append(value)
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}, shown


class SiteEvaluator(ImageEvaluator):
  """FedBN's validation: each site's images scored by the site's own model (the
  global weights with its BatchNorm); ``dice``, which picks the checkpoint, is the
  mean over sites of their pooled Dice; ``dice_global`` the global model's."""

  def validate(self, state) -> tuple[dict, dict]:
    sites = site_ids(self.exp, "validation")
    out, shown = super().validate(state)
    out = {"loss": out["loss"], "dice_global": out["dice"]}
    n = self.exp.config.fed.num_clients
    per_site = []
    for s in np.unique(sites):
      per_image, _ = self.score(local_variables(self.exp, state, int(s) % n), "validation")
      per_site.append(summarize({k: v[sites == s] for k, v in per_image.items()})["dice"])
    out["dice"] = float(np.mean(per_site))
    return out, shown


def site_ids(exp: Experiment, split: str):
  """Each image's acquisition site in a federated run's ``split``, or None (volumes,
  centralized runs, images that record none, a single site)."""
  source = exp.sources.get(split)
  if "fed" not in exp.config or exp.volumes is not None or not source or "site" not in source[0]:
    return None
  sites = np.asarray(source.take(np.arange(len(source)), ("site",))["site"]).astype(int)
  return sites if len(np.unique(sites)) > 1 else None


def keeps_local_bn(exp: Experiment) -> bool:
  """FedBN with client k holding site k: each site's images have their own model."""
  fc = exp.config.get("fed")
  return bool(fc) and fc.algorithm == "fedbn" and fc.partition == "site" and not fc.client_dirs


def local_variables(exp: Experiment, state, client: int) -> dict:
  """FedBN: the evaluated network's variables with client ``client``'s own BatchNorm."""
  name = exp.method.evaluated
  net = state.nets[name]
  mine = jax.tree.map(lambda x: x[client], state.clients)
  kept = {k: mine[k][name] for k in ("params", "batch_stats")}
  params, stats = algorithms.with_local_bn(net.params, net.batch_stats, kept)
  return sharding.fetch({"params": params, "batch_stats": stats})


def evaluator(exp: Experiment, feed=None):
  """The run's evaluator: sliding windows over volumes, batches (or tiles) of images
  (kept on the device where ``feed`` says validation fits there); FedBN by site: each
  site with its own BatchNorm (:class:`SiteEvaluator`)."""
  if exp.volumes is not None:
    return volume.Evaluator(exp)
  on_device = bool(feed is not None and feed.eval_on_device)
  if keeps_local_bn(exp) and site_ids(exp, "validation") is not None:
    return SiteEvaluator(exp, on_device)
  return ImageEvaluator(exp, on_device)


def summarize(per_image: dict) -> dict:
  """Pooled overlap scores, mean per-image Dice and the mean loss; with several
  foreground classes ``dice`` is the mean of the classes' pooled Dice (``dice_<k>``),
  the foreground union's ``dice_fg``."""
  pooled = {k: float(v) for k, v in metrics.pooled(per_image).items()}
  per_dice = metrics.scores(per_image)["dice"]
  out = {"loss": float(np.mean(per_image["loss"])), **pooled}
  out["dice_per_image"] = float(np.mean(per_dice))
  class_dice = metrics.class_scores(per_image)[1]["dice"]
  if len(class_dice) > 1:
    out["dice_fg"] = out["dice"]
    out["dice"] = float(class_dice.mean())
    out.update({f"dice_{k + 1}": float(d) for k, d in enumerate(class_dice)})
  return out


def validator(evaluator, record: dict, ckpts, outputs, workdir: str, extra=dict) -> Callable:
  """A run loop's ``validate(state, step) -> stop`` (:class:`jaxseg.run.loop.Loop`):
  scores the validation data, checkpoints (with ``record`` and ``extra()``), draws
  the pictures; updates ``record`` and returns whether early stopping says stop."""
  logger, bar, _ = outputs
  patience = evaluator.exp.config.train.early_stopping_patience

  def validate(state, step: int) -> bool:
    val, shown = evaluator.validate(state)
    logger.write(step, "validation", val)
    if val["dice"] > record["best_dice"]:
      record.update(best_dice=val["dice"], evals_since_best=0)
    else:
      record["evals_since_best"] += 1
    ckpts.save(step, state, {**record, **extra()}, val)
    stop = bool(patience) and record["evals_since_best"] >= patience
    if logger.enabled:  # every process decides the same; process 0 draws and reports
      if shown is not None:
        path = os.path.join(workdir, "validation_overlays.png")
        pictures.save_overlays(path, shown["image"], shown["labels"], shown["pred"])
      bar.write(f"step {step}: validation {describe(val)} (best {record['best_dice']:.4f})")
      if stop:
        bar.write(f"Early stopping: no better validation Dice in {patience} validations.")
    return stop

  return validate


def describe(val: dict) -> str:
  """``loss L Dice D`` and, for several foreground classes, ``(dice_1 .., ..)``."""
  text = (f"loss {val['loss']:.4f} " if "loss" in val else "") + f"Dice {val['dice']:.4f}"
  per_class = [f"{k} {v:.4f}" for k, v in val.items() if k.startswith("dice_") and k[5:].isdigit()]
  return f"{text} ({', '.join(per_class)})" if len(per_class) > 1 else text


def restore(workdir: str, splits=("test",)):
  """``(experiment, evaluated variables, step)`` of the best checkpoint of ``workdir``
  (a segmentation run, centralized or federated, of images or volumes), with
  ``splits`` of its data (none: a volume run's ``plan.json`` stands for its data)."""
  exp, state, step = restore_state(workdir, splits)
  return exp, exp.variables(state), step


def restore_state(workdir: str, splits=("test",)):
  """:func:`restore`, with the whole state (a federation's: what its clients keep)."""
  config = skeleton.load_config(workdir)
  if skeleton.kind(config) == "gan":
    raise UserError(
      f"{workdir} is a GAN run: it has no segmentation to score; "
      f"`jaxseg synthesize --workdir {workdir} --num N --output DIR` makes pairs from it."
    )
  with checkpoint.finished(workdir, "train first") as ckpts:
    plan = volume.load_plan(workdir) if not splits and is_volume(config) else None
    exp = Experiment(config, splits, plan)
    step, state, _ = ckpts.restore_usable(exp.abstract_state(), prefer_best=True)
  return exp, state, step
