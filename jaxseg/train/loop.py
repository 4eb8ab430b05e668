"""The training and evaluation loops: the only place (with the CLI) that does I/O.

``train(config, workdir)`` trains ``config`` in ``workdir`` and resumes automatically
from the latest checkpoint there. ``evaluate(workdir)`` scores the best checkpoint on
the test split. What a run writes in ``workdir``:

* ``config.json`` — the resolved config;
* ``checkpoints/<step>/`` — orbax checkpoints, the latest and the best by Dice;
* ``metrics.jsonl`` — one JSON line per log/validation event; ``tensorboard/`` events;
* ``validation_overlays.png`` (image, truth green, prediction red) and
  ``learning_curves.png``;
* ``test_metrics.json`` after ``jaxseg eval``.
"""

import copy
import functools
import json
import math
import os
import socket
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from tensorboardX import SummaryWriter

from jaxseg import data as datasets
from jaxseg import infer, losses, metrics, models, semi, tables
from jaxseg.data import augment, pipeline
from jaxseg.fed import simulate
from jaxseg.semi import base as semi_base
from jaxseg.train import optim, report, sharding
from jaxseg.train import state as state_lib
from jaxseg.train.checkpoint import Checkpoints
from jaxseg.train.step import make_eval_step, make_train_step, split_outputs

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails at once on unknown names, before any data is prepared."""
  tables.check(models.MODELS, config.model.name, "model")
  tables.check(losses.LOSSES, config.loss.name, "loss")
  tables.check(datasets.DATASETS, config.data.name, "dataset")
  augment.check(config.augment)
  if config.data.annotator not in ("majority", "random"):
    raise ValueError(
      f"config.data.annotator must be 'majority' or 'random', found {config.data.annotator!r}."
    )
  optim.check(config.optim)
  if config.train.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(
      f"config.train.compute_dtype must be one of {COMPUTE_DTYPES}, "
      f"found {config.train.compute_dtype!r}."
    )
  if "method" in config:
    tables.check(semi.METHODS, config.method.name, "method")
    if config.train.compute_dtype != "float32":
      raise ValueError(
        "config.train.compute_dtype: mixed precision is implemented for supervised "
        f"training; config.method={config.method.name!r} needs 'float32'."
      )
  if "fed" in config:  # a federated run counts rounds (config.fed.rounds), not steps
    keys = ("batch_size", "eval_every", "log_every")
    if config.fed.rounds <= 0:
      raise ValueError(f"config.fed.rounds must be positive, found {config.fed.rounds}.")
    if config.optim.schedule != "constant" or config.optim.warmup_steps:
      raise ValueError(
        "a federated client's optimizer restarts every round: config.optim.schedule must be "
        f"'constant' and config.optim.warmup_steps 0, found {config.optim.schedule!r} and "
        f"{config.optim.warmup_steps}."
      )
    if "method" not in config:
      raise ValueError("a federated config needs config.method (e.g. 'supervised' for FedAvg).")
  else:
    keys = ("batch_size", "steps", "eval_every", "log_every")
  check_positive(config.train, keys)


def check_positive(train_config, keys) -> None:
  for key in keys:
    if train_config[key] <= 0:
      raise ValueError(f"config.train.{key} must be positive, found {train_config[key]}.")


def prepare_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    # One probe per process: processes of a multi-host run share the workdir.
    probe = os.path.join(workdir, f".write_test.{socket.gethostname()}.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"workdir {workdir!r} is not writable: {e.strerror or e}.") from e


def training_steps(config) -> int:
  """Training steps of a run (of one client over all rounds in a federated run)."""
  return config.fed.rounds * config.fed.local_steps if "fed" in config else config.train.steps


def resolve_epochs(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config``, or with ``train.epochs > 0`` a copy whose ``train.steps`` makes that
  many passes over the training split (extra training data included)."""
  if "fed" in config or not config.train.epochs:
    return config
  size = len(pipeline.load_splits(config.data)["train"])
  config = copy.deepcopy(config)
  with config.unlocked():
    config.train.steps = config.train.epochs * math.ceil(size / config.train.batch_size)
  return config


def start_run(config, workdir: str, check) -> ml_collections.ConfigDict:
  """Prepares ``workdir``, checks ``config`` with ``check``, resolves ``train.epochs``
  and (process 0) writes the resolved config; returns it."""
  prepare_workdir(workdir)
  check(config)
  config = resolve_epochs(config)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  return config


def make_context(config, model, loss_fn, tx, channels: int) -> semi_base.Context:
  shape = (config.infer.tile, config.infer.tile, channels)
  kwargs = dict(config.method.kwargs)
  return semi_base.Context(
    model, loss_fn, tx, config.augment, shape, training_steps(config), kwargs
  )


def make_steps(config, model, loss_fn, tx, channels: int):
  """``(init_state, train_step, method)`` of a config: supervised, or the
  semi-supervised ``config.method`` (then ``train_step`` takes ``{labeled, unlabeled}``).

  Parameters do not depend on the spatial size; models are initialised at the tile
  size, which is valid for every model (valid-conv networks need particular sizes).
  """
  init_key = jax.random.split(jax.random.key(config.seed))[0]
  shape = (config.infer.tile, config.infer.tile, channels)
  if "method" not in config:
    init_state = lambda: state_lib.create(model, tx, init_key, shape)  # noqa: E731
    dtype = config.train.compute_dtype
    step = make_train_step(
      model,
      loss_fn,
      tx,
      config.augment,
      compute_dtype=None if dtype == "float32" else jnp.dtype(dtype),
      loss_scale=config.train.loss_scale,
    )
    return init_state, step, None
  method = semi.get_method(config.method.name)
  ctx = make_context(config, model, loss_fn, tx, channels)
  if "fed" in config:  # the server state; rounds are compiled by jaxseg.fed.loop
    server_tx = optim.make(config.fed.server_optim, config.fed.rounds)
    return (lambda: simulate.init(method, ctx, server_tx, init_key)), None, method

  def train_step(state, batch, key):
    return method.step(ctx, state, batch["labeled"], batch["unlabeled"], key)

  return (lambda: method.init(ctx, init_key)), train_step, method


def evaluated_variables(state, method) -> dict:
  """The evaluated network's ``{params, batch_stats}``."""
  net = state.nets[method.evaluated] if method else state
  return {"params": net.params, "batch_stats": net.batch_stats}


def make_experiment(config, splits=datasets.SPLITS):
  """An :class:`Experiment`, or a federated one for configs with ``config.fed``."""
  if "fed" in config:
    from jaxseg.fed import loop as fed_loop  # noqa: PLC0415

    return fed_loop.FedExperiment(config, splits)
  return Experiment(config, splits)


class Experiment:
  """Model, loss, optimizer, data and compiled steps of one config.

  The training step is jitted over a ``data`` mesh of ``config.mesh.devices``
  devices (:mod:`jaxseg.train.sharding`): batches split over the devices, the state
  replicated or, with ``config.mesh.fsdp``, split.
  """

  def __init__(self, config: ml_collections.ConfigDict, splits=datasets.SPLITS):
    check_config(config)
    self.config = config
    self.sources = pipeline.load_splits(config.data, splits)
    self.model = models.get_model(config.model.name, **config.model.kwargs)
    self.loss_fn = losses.get_loss(config.loss.name, **config.loss.kwargs)
    self.tx = optim.make(config.optim, training_steps(config))
    self.image_shape = next(iter(self.sources.values()))[0]["image"].shape
    self.train_key = jax.random.split(jax.random.key(config.seed))[1]
    init_state, train_step, self.method = make_steps(
      config, self.model, self.loss_fn, self.tx, self.image_shape[-1]
    )
    if "fed" in config:  # the federated loop compiles its rounds over a clients mesh
      self.init_state = jax.jit(init_state)
    else:
      self.mesh = sharding.make_mesh(config.mesh)
      sharding.check_batch(config.train.batch_size, self.mesh)
      if self.method:
        key = "config.method.unlabeled_batch_size"
        sharding.check_batch(config.method.unlabeled_batch_size, self.mesh, key)
      shardings = sharding.state_shardings(jax.eval_shape(init_state), self.mesh, config.mesh.fsdp)
      replicated = sharding.replicated(self.mesh)
      self.init_state = jax.jit(init_state, out_shardings=shardings)
      self.train_step = jax.jit(
        train_step,
        in_shardings=(shardings, sharding.batch_sharding(self.mesh), replicated),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
      )
    self.eval_step = jax.jit(make_eval_step(self.model, self.loss_fn))
    self.tile_fn = infer.make_tile_fn(self.model)

  def variables(self, state) -> dict:
    """The evaluated network's variables on the host (every process has them)."""
    return sharding.fetch(evaluated_variables(state, self.method))

  def loaders(self) -> dict:
    """Training iterators: ``train``, or ``labeled`` + ``unlabeled`` for a method."""
    cfg, source = self.config, self.sources["train"]
    # Each process reads its slice of every global batch.
    loader = functools.partial(
      pipeline.train_loader,
      data_config=cfg.data,
      process=(jax.process_index(), jax.process_count()),
    )
    if not self.method:
      return {"train": iter(loader(source, cfg.train.batch_size, cfg.seed))}
    labeled, unlabeled = pipeline.labeled_split(source, cfg.method.labeled_fraction, cfg.seed)
    return {
      "labeled": iter(loader(labeled, cfg.train.batch_size, cfg.seed)),
      "unlabeled": iter(loader(unlabeled, cfg.method.unlabeled_batch_size, cfg.seed + 1)),
    }

  def abstract_state(self):
    return jax.eval_shape(self.init_state)

  def evaluate(self, state, split: str, keep: int = 0) -> tuple[dict, dict]:
    """Per-image arrays (loss, counts) over ``split`` and the first ``keep`` examples."""
    if self.config.eval.tiled:
      return self._evaluate_tiled(state, split, keep)
    outputs, shown = [], {"image": [], "labels": [], "pred": []}
    variables = self.variables(state)
    for batch in pipeline.eval_batches(
      self.sources[split], self.config.eval.batch_size, self.config.data
    ):
      valid = batch.pop("valid")
      out = jax.device_get(self.eval_step(variables, batch))
      outputs.append({k: v[valid] for k, v in out.items() if k not in ("pred", "labels")})
      for name, value in (
        ("image", batch["image"]),
        ("labels", out["labels"]),
        ("pred", out["pred"]),
      ):
        shown[name].extend(value[valid][: keep - len(shown[name])])
      outputs[-1]["pred"], outputs[-1]["labels"] = out["pred"][valid], out["labels"][valid]
    per_image = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    return per_image, shown

  def _evaluate_tiled(self, state, split: str, keep: int) -> tuple[dict, dict]:
    """Image by image through :func:`jaxseg.infer.predict` (any size, any network)."""
    cfg = self.config.infer
    predict_fn = functools.partial(self.tile_fn, self.variables(state))
    valid = infer.margin_of(predict_fn, cfg.tile, self.image_shape[-1]) > 0
    rows, shown = [], {"image": [], "labels": [], "pred": []}
    for batch in pipeline.eval_batches(self.sources[split], 1, self.config.data):
      image, labels = batch["image"][0], batch["labels"][0]
      prob = infer.predict(
        predict_fn,
        image,
        tile=cfg.tile,
        valid=valid,
        overlap=cfg.overlap,
        tile_batch=cfg.tile_batch,
        tta=tuple(cfg.tta),
        align=2 ** (len(self.model.widths) - 1),
      )
      pred = infer.labels_of(prob).astype(np.int32)
      loss = self.loss_fn(infer.logits_of(prob)[None], labels[None], batch.get("weights"))
      rows.append(
        {
          "loss": float(loss),
          "pred": pred,
          "labels": labels,
          **{k: int(v) for k, v in metrics.confusion(pred, labels).items()},
        }
      )
      if len(shown["image"]) < keep:
        for name, value in (("image", image), ("labels", labels), ("pred", pred)):
          shown[name].append(value)
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}, shown


def summarize(per_image: dict) -> dict:
  """Pooled overlap scores, mean per-image Dice and the mean loss."""
  pooled = {k: float(v) for k, v in metrics.pooled(per_image).items()}
  per_dice = metrics.scores(per_image)["dice"]
  return {
    "loss": float(np.mean(per_image["loss"])),
    **pooled,
    "dice_per_image": float(np.mean(per_dice)),
  }


class Logger:
  """Appends to ``metrics.jsonl`` and writes TensorBoard events (process 0 only)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = jax.process_index() == 0
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard")) if self.enabled else None

  def write(self, step: int, split: str, values: dict) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
    for name, value in values.items():
      self.tb.add_scalar(f"{split}/{name}", value, step)
    self.tb.flush()

  def close(self) -> None:
    if self.enabled:
      self.tb.close()


def train(config: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None):
  """Trains ``config`` in ``workdir``; resumes from its latest checkpoint if any.

  Args:
    config: an experiment config (see ``configs/``).
    workdir: output folder (created).
    stop_after: end after this many steps of this invocation *without saving*, as a
      kill would (tests use it to prove that resuming is exact).

  Returns:
    The final training state.
  """
  if "fed" in config:
    from jaxseg.fed import loop as fed_loop  # noqa: PLC0415 (fed.loop builds on this module)

    return fed_loop.train(config, workdir, stop_after=stop_after)
  if "gan" in config:
    from jaxseg.gan import loop as gan_loop  # noqa: PLC0415 (gan.loop builds on this module)

    return gan_loop.train(config, workdir, stop_after=stop_after)
  config = start_run(config, workdir, check_config)
  primary = jax.process_index() == 0  # only process 0 writes files and prints
  exp = Experiment(config)
  cfg = config.train
  ckpts = Checkpoints(os.path.join(workdir, "checkpoints"))
  loaders = exp.loaders()
  record = {"best_dice": -1.0, "evals_since_best": 0}
  if ckpts.latest_step() is not None:
    state, record = ckpts.restore(ckpts.latest_step(), exp.abstract_state())
    for name, loader_state in json.loads(record.pop("loader")).items():
      loaders[name].set_state(loader_state.encode())
    print(f"Resumed from {workdir}/checkpoints/{int(state.step)}.")
  else:
    state = exp.init_state()
    params = exp.variables(state)["params"]
    print(f"{config.model.name}: {state_lib.count_params(params):,} parameters.")
  logger = Logger(workdir)
  start = int(state.step)
  pending, last_log_time, last_log_step = [], time.time(), start
  bar = tqdm.tqdm(
    total=cfg.steps, initial=start, desc="train", unit="step", mininterval=1.0, disable=not primary
  )
  step = start
  try:
    while step < cfg.steps:
      if stop_after is not None and step - start >= stop_after:
        return state
      if "train" in loaders:
        batch = next(loaders["train"])
      else:
        batch = {name: next(loader) for name, loader in loaders.items()}
      batch = sharding.put_batch(batch, exp.mesh)
      state, step_metrics = exp.train_step(state, batch, exp.train_key)
      step += 1
      pending.append(step_metrics)
      validate = step % cfg.eval_every == 0 or step == cfg.steps
      if step % cfg.log_every == 0 or validate:
        values = mean_metrics(pending, step, ckpts)
        now = time.time()
        values["images_per_s"] = (step - last_log_step) * cfg.batch_size / (now - last_log_time)
        last_log_time, last_log_step, pending = now, step, []
        logger.write(step, "train", values)
        bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{values['images_per_s']:.1f}")
        bar.update(step - bar.n)
      if validate:
        loader_states = {name: it.get_state().decode() for name, it in loaders.items()}
        extra = {"loader": json.dumps(loader_states)}
        if validate_and_save(exp, state, step, record, extra, ckpts, logger, workdir, bar.write):
          break
        last_log_time = time.time()  # validation time is not training throughput
  finally:
    bar.close()
    logger.close()
    ckpts.close()
  return state


def validate_and_save(exp, state, step, record, extra, ckpts, logger, workdir, write) -> bool:
  """Scores the validation split, checkpoints (with ``record`` and ``extra``), draws
  the pictures; updates ``record`` and returns whether early stopping says stop."""
  per_image, shown = exp.evaluate(state, "validation", keep=8)
  val = summarize(per_image)
  logger.write(step, "validation", val)
  if val["dice"] > record["best_dice"]:
    record.update(best_dice=val["dice"], evals_since_best=0)
  else:
    record["evals_since_best"] += 1
  ckpts.save(step, state, {**record, **extra}, val)
  patience = exp.config.train.early_stopping_patience
  stop = bool(patience) and record["evals_since_best"] >= patience
  if logger.enabled:  # every process decides the same; process 0 draws and reports
    report.save_overlays(
      os.path.join(workdir, "validation_overlays.png"),
      shown["image"],
      shown["labels"],
      shown["pred"],
    )
    report.save_learning_curves(logger.path, os.path.join(workdir, "learning_curves.png"))
    write(
      f"step {step}: validation loss {val['loss']:.4f} Dice {val['dice']:.4f} "
      f"(best {record['best_dice']:.4f})"
    )
    if stop:
      write(f"Early stopping: no better validation Dice in {patience} validations.")
  return stop


def mean_metrics(pending: list, step: int, ckpts: Checkpoints) -> dict:
  """Means of the pending step metrics; raises on the first non-finite loss."""
  pending = sharding.fetch(pending)
  losses_ = np.asarray([m["loss"] for m in pending])
  bad = np.flatnonzero(~np.isfinite(losses_))
  if bad.size:
    first = step - len(pending) + 1 + int(bad[0])
    raise FloatingPointError(
      f"Training diverged: loss is {losses_[bad[0]]} at step {first}. The last good "
      f"checkpoint (step {ckpts.latest_step()}) is intact; lower config.optim.lr or "
      f"set config.optim.grad_clip."
    )
  means = {k: float(np.mean([m[k] for m in pending])) for k in pending[0]}
  return means


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir!r} is not a jaxseg run directory.")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def evaluate(workdir: str, split: str = "test") -> dict:
  """Scores the best checkpoint of ``workdir`` on ``split``; prints and saves a table."""
  config = load_config(workdir)
  if "gan" in config:
    raise ValueError(
      f"{workdir} is a GAN run: it has no segmentation to score; "
      f"`jaxseg synthesize --workdir {workdir} --num N --output DIR` makes pairs from it."
    )
  ckpts = Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True)
  step = ckpts.best_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; train first.")
  exp = make_experiment(config, splits=(split,))
  state, _ = ckpts.restore(step, exp.abstract_state())
  ckpts.close()
  per_image, _ = exp.evaluate(state, split)
  table = metrics_table(per_image, exp.image_shape, config.eval.topology)
  if config.eval.samples:
    ged, diversity, shown = sampled_scores(exp, state, split, config.eval.samples)
    for name, values in (("ged", ged), ("sample_diversity", diversity)):
      table[name] = {"mean": float(values.mean()), "std": float(values.std()), "pooled": None}
    report.save_samples(os.path.join(workdir, f"{split}_samples.png"), **shown)
  result = {"step": step, "split": split, "images": len(per_image["loss"]), **table}
  with open(os.path.join(workdir, f"{split}_metrics.json"), "w") as f:
    json.dump(result, f, indent=2)
  print(f"\n{split} split, {result['images']} images, best checkpoint (step {step}):\n")
  print(format_table(table))
  return result


def sampled_scores(exp: Experiment, state, split: str, m: int, shown: int = 4):
  """Per-image generalized energy distance (``d = 1 - IoU``) of ``m`` samples against
  every rater's mask, the samples' diversity, and the first ``shown`` examples.

  A ``prob_unet`` draws its ``m`` samples from the prior (keys from the config's
  seed); any other model's single prediction stands for all ``m`` (its diversity 0).
  """
  model, cfg = exp.model, exp.config

  @jax.jit
  def sample(variables, image, key):
    if getattr(model, "takes_labels", False):
      out = model.apply(variables, image, num_samples=m, rngs={"sample": key})
      return metrics.hard_labels(out["samples"])
    logits, _ = split_outputs(model.apply(variables, image))
    return jnp.broadcast_to(metrics.hard_labels(logits), (m, *logits.shape[:3]))

  key = jax.random.fold_in(jax.random.key(cfg.seed), 7)
  ged, diversity, pictures = [], [], {"images": [], "raters": [], "samples": []}
  variables = exp.variables(state)
  batches = pipeline.eval_batches(exp.sources[split], cfg.eval.batch_size, cfg.data, True)
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


def metrics_table(per_image: dict, image_shape, topology: bool = False) -> dict:
  """``{metric: {mean, std, pooled}}`` incl. HD and HD95 in pixels, and with
  ``topology`` the ISBI 2012 Rand and warping errors.

  A Hausdorff distance is infinite when exactly one of prediction and truth is empty;
  for the mean it is replaced by the image diagonal (the largest possible distance),
  and the number of such images is reported as ``hd_missed``.
  """
  per = {k: np.asarray(v) for k, v in metrics.scores(per_image).items()}
  pooled = {k: float(v) for k, v in metrics.pooled(per_image).items()}
  diag = math.hypot(*image_shape[:2])
  pairs = list(zip(per_image["pred"], per_image["labels"], strict=True))
  hd = np.array([metrics.hausdorff(p, g) for p, g in pairs])
  hd95 = np.array([metrics.hausdorff(p, g, percentile=95) for p, g in pairs])
  table = {
    k: {"mean": float(v.mean()), "std": float(v.std()), "pooled": pooled[k]} for k, v in per.items()
  }
  if topology:
    for name, fn in (("rand_error", metrics.rand_error), ("warping_error", metrics.warping_error)):
      values = np.array([fn(p, g) for p, g in pairs])
      table[name] = {"mean": float(values.mean()), "std": float(values.std()), "pooled": None}
  for name, values in (("hd", hd), ("hd95", hd95)):
    finite = np.where(np.isfinite(values), values, diag)
    table[name] = {"mean": float(finite.mean()), "std": float(finite.std()), "pooled": None}
  table["hd_missed"] = int(np.sum(~np.isfinite(hd)))
  table["loss"] = {
    "mean": float(np.mean(per_image["loss"])),
    "std": float(np.std(per_image["loss"])),
    "pooled": None,
  }
  return table


def format_table(table: dict) -> str:
  lines = ["| metric | mean ± std (per image) | pooled |", "|---|---|---|"]
  for name, row in table.items():
    if isinstance(row, dict):
      pooled = "" if row["pooled"] is None else f"{row['pooled']:.4f}"
      lines.append(f"| {name} | {row['mean']:.4f} ± {row['std']:.4f} | {pooled} |")
  lines.append(f"| images with HD = inf (one mask empty) | {table['hd_missed']} | |")
  return "\n".join(lines)
