"""The volume half of the one trainer: what a config whose dataset is a volume dataset
(:data:`jaxseg.data.VOLUMES`) needs beyond the shared builder, feed and loop.

* :func:`resolve` — channels, classes, the pooling plan and the patch size from the
  prepared data's plan (the notes say which);
* :class:`Volumes` — the prepared cases, their plan and the sliding-window predictor
  (``plan`` alone where a run is restored for prediction on new files);
* :func:`split_labeled` — the labeled fraction of the training cases, by case; the
  rest, and the dataset's cases without labels, are the unlabeled pool;
* :class:`Evaluator` — validation: sliding-window inference (:mod:`jaxseg.infer`)
  over the validation cases in their prepared grid, Dice per foreground class; the
  best checkpoint is picked by their mean (``dice``).

A volume run also writes ``plan.json`` (how the cases were prepared), which
``jaxseg predict`` applies to new files.
"""

import copy
import json
import os

import ml_collections
import numpy as np

from jaxseg import data as datasets
from jaxseg import infer, metrics, models
from jaxseg.data import patches
from jaxseg.errors import UserError
from jaxseg.train import state as state_lib

MODELS = ("unet", "unetpp", "attention_unet")  # the models that take spatial_dims=3


def patch_size(median_shape, strides, budget_voxels: int) -> tuple:
  """nnU-Net's rule, simplified: the median case shape rounded up to the model's
  strides, then the largest axis shrunk by one stride until the patch fits
  ``budget_voxels``."""
  patch = [max(s, -(-int(m) // s) * s) for m, s in zip(median_shape, strides, strict=True)]
  while np.prod(patch) > budget_voxels:
    axis = int(np.argmax([p / s for p, s in zip(patch, strides, strict=True)]))
    if patch[axis] <= strides[axis]:
      break
    patch[axis] -= strides[axis]
  return tuple(patch)


def plan_pool(spacing, depth: int) -> list[tuple[int, ...]]:
  """nnU-Net's anisotropic pooling plan: at each level transition, pool (by 2) the
  axes whose current spacing is at most twice the smallest, so a thick-sliced axis is
  pooled only once the others have caught up."""
  current, kernels = [float(s) for s in spacing], []
  for _ in range(depth - 1):
    smallest = min(current)
    kernel = tuple(2 if s <= 2 * smallest else 1 for s in current)
    current = [s * k for s, k in zip(current, kernel, strict=True)]
    kernels.append(kernel)
  return kernels


def check(config) -> None:
  if config.model.name not in MODELS:
    raise UserError(f"config.model.name={config.model.name!r}: volumes take {', '.join(MODELS)}.")


def load(config):
  """The prepared cases of ``config.data`` (a :class:`jaxseg.data.msd.VolumeData`)."""
  return datasets.load_volumes(
    config.data.name,
    source_dir=config.data.dir or None,
    cache_dir=config.data.cache_dir or None,
    **config.data.kwargs.to_dict(),
  )


def resolve(config, plan: dict, notes: list) -> ml_collections.ConfigDict:
  """``config`` with channels, classes, pooling plan and (if not given) patch size
  from the data's ``plan``; ``notes`` gains what was chosen."""
  config = copy.deepcopy(config)
  kwargs = config.model.kwargs
  with config.unlocked():
    kwargs.spatial_dims = 3
    kwargs.in_channels = len(plan["modalities"])
    kwargs.num_classes = len(plan["labels"])
    pool = plan_pool(plan["target_spacing"], len(kwargs.widths))
    if kwargs.get("pool") is None and any(k != (2, 2, 2) for k in pool):
      kwargs.pool = pool
      notes.append(f"plan: anisotropic spacing, pooling windows {pool}")
    if not config.volume.patch_size:
      strides = models.get_model(config.model.name, **kwargs).strides
      budget = config.volume.patch_budget_voxels
      config.volume.patch_size = patch_size(plan["median_shape"], strides, budget)
  notes.append(
    f"plan: spacing {plan['target_spacing']} mm, median case {plan['median_shape']}, "
    f"patch {tuple(config.volume.patch_size)}, {kwargs.in_channels} channel(s), "
    f"{kwargs.num_classes} classes"
  )
  return config


def split_labeled(names: list[str], fraction: float, seed: int) -> tuple[list, list]:
  """``(labeled, unlabeled)`` training cases: a seeded ``fraction`` of the cases (at
  least one) keeps its labels; with ``fraction == 1`` every case is both."""
  count = int(np.floor(fraction * len(names) + 0.5))
  if count == 0:
    raise UserError(
      f"config.method.labeled_fraction={fraction} of {len(names)} training cases leaves no "
      "labeled case; raise the fraction or use more cases."
    )
  if count >= len(names):
    return list(names), list(names)
  order = np.random.default_rng(seed + 17).permutation(len(names))
  return sorted(names[i] for i in order[:count]), sorted(names[i] for i in order[count:])


class Volumes:
  """Prepared cases (``data``; None when restored for prediction only), their
  ``plan`` and the sliding-window prediction of the run's model."""

  def __init__(self, config, model, data, plan: dict):
    self.config, self.model, self.data = config, model, data
    self.patch = tuple(int(p) for p in config.volume.patch_size)
    self.plan = {**plan, "patch_size": list(self.patch)}
    self._predictors = {}

  def cases(self, split: str) -> list[dict]:
    return [self.data.cases[n] for n in self.data.splits.get(split, [])]

  def predict(self, variables, image: np.ndarray) -> np.ndarray:
    """Class probabilities ``[x, y, z, K]`` of a prepared volume (sliding window)."""
    v = self.config.volume
    windows = infer.Windows(self.patch, v.overlap, v.window_batch, v.bucket, v.mirror)
    if windows not in self._predictors:
      num = self.model.interface.num_classes
      self._predictors[windows] = infer.make_predictor(infer.logits_fn(self.model), windows, num)
    return infer.sliding_window(self._predictors[windows], variables, image, windows)


def class_dice(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Dice of each foreground class of one case (1 where both are empty)."""
  return np.asarray(metrics.scores(metrics.class_counts(pred, labels, num_classes))["dice"])


class Evaluator:
  """Validation of a volume run: mean Dice per foreground class over the validation
  cases (``dice``: their mean, which picks the best checkpoint)."""

  def __init__(self, exp):
    self.exp = exp

  def validate(self, state) -> tuple[dict, None]:
    exp = self.exp
    variables = state_lib.variables(state.nets[exp.method.evaluated])  # stays on the device
    num = exp.model.interface.num_classes
    dice = np.array(
      [
        class_dice(infer.labels_of(exp.volumes.predict(variables, c["image"])), c["labels"], num)
        for c in exp.volumes.cases("validation")
      ]
    )
    per_class = dice.mean(0)
    values = {"dice": float(per_class.mean())}
    values.update({f"dice_{i + 1}": float(d) for i, d in enumerate(per_class)})
    return values, None


class Cases:
  """Cases as a source of the federated simulation's training arrays: ``take`` gives
  their stack (:func:`jaxseg.data.patches.stack`), padded to one shape for all."""

  def __init__(self, cases: list[dict], patch: tuple):
    self.cases, self.patch = cases, patch
    largest = np.max([c["labels"].shape for c in cases], 0)
    self.full = tuple(int(s) for s in np.maximum(largest, patch))

  def __len__(self) -> int:
    return len(self.cases)

  def take(self, indices) -> dict:
    return patches.stack([self.cases[i] for i in indices], self.patch, self.full)

  def foreground(self) -> np.ndarray:
    """Each case's foreground fraction (what a lesion-size partition bins)."""
    return np.array([(c["labels"] > 0).mean() for c in self.cases])


def site_config(data_config, folder: str, plan: dict):
  """``data_config`` reading a federated site's ``folder`` (an ``msd`` layout) as the
  server's ``plan`` prepares cases — its spacing and CT statistics — every labeled
  case a training case."""
  if data_config.name != "msd":
    raise UserError(
      f"config.data.name={data_config.name!r}: volume sites read msd folders "
      "(imagesTr, labelsTr, dataset.json)."
    )
  data_config = copy.deepcopy(data_config)
  with data_config.unlocked():
    data_config.dir = folder
    data_config.kwargs.update(
      target_spacing=tuple(plan["target_spacing"]),
      ct_statistics=plan["ct_statistics"] or {},
      site=True,
      sites="",
    )
  return data_config


def site_cases(data_config) -> tuple[list, list]:
  """``(labeled, unlabeled)`` cases of a site's folder (:func:`site_config`)."""
  data = datasets.load_volumes(
    "msd", source_dir=data_config.dir, cache_dir=data_config.cache_dir or None,
    **data_config.kwargs.to_dict(),
  )  # fmt: skip
  if not data.splits["train"]:
    raise UserError(f"{data_config.dir}: no labeled case (imagesTr with labelsTr) found.")
  return [data.cases[n] for n in data.splits["train"]], [
    data.cases[n] for n in data.splits["unlabeled"]
  ]


def load_plan(workdir: str) -> dict:
  path = os.path.join(workdir, "plan.json")
  if not os.path.exists(path):
    raise UserError(f"{path} not found: {workdir!r} is not a volume run directory.")
  with open(path) as f:
    return json.load(f)
