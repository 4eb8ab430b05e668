"""``jaxseg train`` on a volume config (one with a ``config.volume`` section): 3-D
patch-based training on the prepared cases of :data:`jaxseg.data.VOLUMES`.

What it writes in ``workdir`` besides what every run writes (``config.json``,
``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``, ``learning_curves.png``):
``plan.json`` — how the cases were prepared (target spacing, modalities, labels, CT
statistics, patch size), which ``jaxseg predict`` applies to new files.

The training cases are uploaded once (:func:`jaxseg.data.patches.stack`); every step
draws and augments its patches inside the compiled step from the run's key and the
step number, so a run is bitwise reproducible and a resumed run continues exactly.
Validation: every ``eval_every`` steps, sliding-window inference
(:mod:`jaxseg.sliding`) over the validation cases in their prepared grid, mean
foreground Dice per class; the best checkpoint by the mean over classes is kept.
"""

import copy
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg import data as datasets
from jaxseg import infer, losses, models, semi, sliding, tables
from jaxseg.data import patches
from jaxseg.errors import UserError
from jaxseg.models.interface import decode
from jaxseg.run import pictures, skeleton
from jaxseg.run.checkpoint import Checkpoints
from jaxseg.train import optim, sharding
from jaxseg.train import state as state_lib
from jaxseg.train import step as step_lib

KEYS = ("batch_size", "steps", "eval_every", "log_every")


def check(config) -> None:
  tables.check(models.MODELS, config.model.name, "model")
  tables.check(losses.LOSSES, config.loss.name, "loss")
  tables.check(datasets.VOLUMES, config.data.name, "volume dataset")
  if config.model.name not in ("unet", "unetpp", "attention_unet"):
    raise UserError(
      f"config.model.name={config.model.name!r}: volumes take unet, unetpp or attention_unet."
    )
  tables.check_settings(patches.Augment3d, dict(config.volume.augment), "config.volume.augment")
  optim.check(config.optim)
  skeleton.check_positive(config.train, KEYS)


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


class VolumeExperiment:
  """Data (prepared cases), model, loss, optimizer and initial state of a volume config.

  ``plan`` (a dict) replaces the data where a run is restored for prediction."""

  def __init__(self, config: ml_collections.ConfigDict, plan: dict | None = None):
    check(config)
    self.data, self.notes = None, []
    if plan is None:
      self.data = datasets.load_volumes(
        config.data.name,
        source_dir=config.data.dir or None,
        cache_dir=config.data.cache_dir or None,
        **config.data.kwargs.to_dict(),
      )
      plan = self.data.plan
      config = self._resolve(config, plan)
    self.config, self.plan = config, {**plan, "patch_size": list(config.volume.patch_size)}
    self.model = models.get_model(config.model.name, **config.model.kwargs)
    self.patch = tuple(int(p) for p in config.volume.patch_size)
    self.method = semi.make_method("supervised")
    dtype = config.train.compute_dtype
    self.ctx = step_lib.Context(
      model=self.model,
      loss_fn=losses.get_loss(config.loss.name, **config.loss.kwargs),
      tx=optim.make(config.optim, config.train.steps),
      augmentations={},  # the 3-D augmentations run in the patch sampler
      image_shape=(*self.patch, self.model.interface.in_channels),
      total_steps=config.train.steps,
      compute_dtype=None if dtype == "float32" else jnp.dtype(dtype),
    )
    init_key, self.train_key = jax.random.split(jax.random.key(config.seed))
    self.init = lambda: self.method.init(self.ctx, init_key)
    self._predictors = {}

  def _resolve(self, config, plan):
    """Channels, classes and (if not given) patch size from the data; notes say which."""
    config = copy.deepcopy(config)
    kwargs = config.model.kwargs
    with config.unlocked():
      kwargs.spatial_dims = 3
      kwargs.in_channels = len(plan["modalities"])
      kwargs.num_classes = len(plan["labels"])
      pool = plan_pool(plan["target_spacing"], len(kwargs.widths))
      if kwargs.get("pool") is None and any(k != (2, 2, 2) for k in pool):
        kwargs.pool = pool
        self.notes.append(f"plan: anisotropic spacing, pooling windows {pool}")
      if not config.volume.patch_size:
        strides = models.get_model(config.model.name, **kwargs).strides
        budget = config.volume.patch_budget_voxels
        config.volume.patch_size = patch_size(plan["median_shape"], strides, budget)
    self.notes.append(
      f"plan: spacing {plan['target_spacing']} mm, median case {plan['median_shape']}, "
      f"patch {tuple(config.volume.patch_size)}, {kwargs.in_channels} channel(s), "
      f"{kwargs.num_classes} classes"
    )
    return config

  def abstract_state(self):
    return jax.eval_shape(self.init)

  def variables(self, state) -> dict:
    return sharding.fetch(state_lib.variables(state.nets["model"]))

  def cases(self, split: str) -> list[dict]:
    return [self.data.cases[n] for n in self.data.splits[split]]

  def predict(self, variables, image: np.ndarray) -> np.ndarray:
    """Class probabilities ``[x, y, z, K]`` of a prepared volume (sliding window)."""
    v = self.config.volume
    key = (v.window_batch, v.mirror)
    if key not in self._predictors:
      apply_logits = lambda var, x: decode(self.model.apply(var, x, train=False)).logits  # noqa: E731
      num = self.model.interface.num_classes
      self._predictors[key] = sliding.make_predictor(
        apply_logits, self.patch, num, v.window_batch, v.mirror
      )
    return sliding.predict_volume(
      self._predictors[key], variables, image, self.patch, v.overlap, v.window_batch, v.bucket
    )


def compile_step(exp: VolumeExperiment):
  """``train_step(state, stack, key)``: patches drawn and augmented, one method step."""
  v, method, ctx = exp.config.volume, exp.method, exp.ctx
  augment = patches.Augment3d(**v.augment)
  batch_size = exp.config.train.batch_size

  def step(state, stack, key):
    k_sample, k_aug, k_step = jax.random.split(jax.random.fold_in(key, state.step), 3)
    batch = patches.sample(k_sample, stack, batch_size, exp.patch, v.oversample)
    batch = patches.augment_batch(k_aug, batch, augment)
    return method.step(ctx, state, batch, None, k_step)

  return jax.jit(step, donate_argnums=0)


def class_dice(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Dice of each foreground class (1 where both are empty)."""
  out = []
  for c in range(1, max(num_classes, 2)):
    p, g = pred == c, labels == c
    denom = p.sum() + g.sum()
    out.append(1.0 if denom == 0 else 2.0 * np.logical_and(p, g).sum() / denom)
  return np.array(out)


def validate(exp: VolumeExperiment, state) -> dict:
  """Mean foreground Dice (overall and per class) over the validation cases."""
  variables = state_lib.variables(state.nets["model"])  # stays on the device
  num = exp.model.interface.num_classes
  dice = np.array(
    [
      class_dice(infer.labels_of(exp.predict(variables, c["image"])), c["labels"], num)
      for c in exp.cases("validation")
    ]
  )
  per_class = dice.mean(0)
  return {
    "dice": float(per_class.mean()),
    **{f"dice_{i + 1}": float(d) for i, d in enumerate(per_class)},
  }


def train(config: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None):
  """Trains a volume config in ``workdir``; resumes from its latest checkpoint."""
  exp = skeleton.start_run(config, workdir, lambda c: None, VolumeExperiment)
  skeleton.write_json(workdir, "plan.json", exp.plan)
  stack = jax.device_put(patches.stack(exp.cases("train"), exp.patch))
  train_step = compile_step(exp)
  ckpts = Checkpoints(os.path.join(workdir, "checkpoints"))
  state, record = skeleton.resume_or_init(
    ckpts, exp.abstract_state(), jax.jit(exp.init), skeleton.describe_nets(config.model.name)
  )
  record = {"best_dice": -1.0, **record}
  cfg = exp.config.train
  with skeleton.outputs(workdir, ckpts, cfg.steps, int(state.step), "train", "step") as (
    logger,
    bar,
  ):
    meter = skeleton.Meter()
    for step in skeleton.remaining(int(state.step), cfg.steps, stop_after):
      state, step_metrics = train_step(state, stack, exp.train_key)
      meter.add(step_metrics)
      if step % cfg.log_every == 0 or step % cfg.eval_every == 0 or step == cfg.steps:
        values = meter.flush(step, ckpts, cfg.batch_size)
        logger.write(step, "train", values)
        bar.set_postfix(loss=f"{values['loss']:.4f}")
        bar.update(step - bar.n)
      if step % cfg.eval_every == 0 or step == cfg.steps:
        _validate_and_save(exp, state, step, record, ckpts, logger, bar.write, workdir)
        meter.restart()
  return state


def _validate_and_save(exp, state, step, record, ckpts, logger, write, workdir) -> None:
  val = validate(exp, state)
  logger.write(step, "validation", val)
  record["best_dice"] = max(record["best_dice"], val["dice"])
  ckpts.save(step, state, dict(record), val)
  if logger.enabled:
    pictures.save_learning_curves(logger.path, os.path.join(workdir, "learning_curves.png"))
    per_class = " ".join(f"{k} {v:.4f}" for k, v in val.items() if k != "dice")
    write(
      f"step {step}: validation Dice {val['dice']:.4f} ({per_class}; "
      f"best {record['best_dice']:.4f})"
    )


def load_plan(workdir: str) -> dict:
  path = os.path.join(workdir, "plan.json")
  if not os.path.exists(path):
    raise UserError(f"{path} not found: {workdir!r} is not a volume run directory.")
  with open(path) as f:
    return json.load(f)


def restore(workdir: str, with_data: bool = True):
  """``(experiment, evaluated variables, step)`` of the best checkpoint of a volume run
  (``with_data=False``: no dataset is loaded — prediction on new files)."""
  config = skeleton.load_config(workdir)
  ckpts = Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True)
  if ckpts.latest_step() is None:
    raise UserError(f"no checkpoint in {workdir}/checkpoints; train first.")
  exp = VolumeExperiment(config, None if with_data else load_plan(workdir))
  try:
    step, state, _ = ckpts.restore_usable(exp.abstract_state(), prefer_best=True)
  finally:
    ckpts.close()
  return exp, exp.variables(state), step
