"""What every runner builds from a config: data, model, loss, optimizer, method and
the initial state (:class:`Experiment`)."""

import copy

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg import data as datasets
from jaxseg import infer, losses, models, semi, tables
from jaxseg.data import augment, pipeline
from jaxseg.errors import UserError
from jaxseg.fed import recipe, simulate
from jaxseg.run import volume
from jaxseg.train import optim, sharding
from jaxseg.train import state as state_lib
from jaxseg.train import step as step_lib

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def is_volume(config) -> bool:
  """Whether ``config``'s dataset is a volume dataset (3-D, patch-based)."""
  return config.data.name in datasets.VOLUMES


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails at once on unknown names and settings, before any data is prepared."""
  tables.check(models.MODELS, config.model.name, "model")
  tables.check(losses.LOSSES, config.loss.name, "loss")
  if is_volume(config):
    volume.check(config)
  else:
    tables.check(datasets.DATASETS, config.data.name, "dataset")
    if config.data.annotator not in ("majority", "random"):
      raise UserError(
        f"config.data.annotator must be 'majority' or 'random', found {config.data.annotator!r}."
      )
  augment.check(config.augment, 3 if is_volume(config) else 2)
  optim.check(config.optim)
  if config.train.compute_dtype not in COMPUTE_DTYPES:
    raise UserError(
      f"config.train.compute_dtype must be one of {COMPUTE_DTYPES}, "
      f"found {config.train.compute_dtype!r}."
    )
  make_method(config)


def make_method(config) -> semi.Method:
  """``config.method`` (name and settings), or supervised training without one."""
  if "method" not in config:
    return semi.make_method("supervised")
  return semi.make_method(config.method.name, config.method.kwargs)


def training_steps(config) -> int:
  """Training steps of a run (of one client over all rounds in a federated run)."""
  return config.fed.rounds * config.fed.local_steps if "fed" in config else config.train.steps


def resolve_data(config) -> tuple[ml_collections.ConfigDict, list[str]]:
  """A copy of ``config`` whose dataset settings say no ``auto`` (chosen from the data,
  sizes a multiple of the model's stride), and the notes saying what was chosen."""
  stride = models.get_model(config.model.name, **config.model.kwargs).interface.stride
  kwargs, notes = datasets.resolve(
    config.data.name, config.data.dir, config.data.kwargs.to_dict(), stride
  )
  config = copy.deepcopy(config)
  with config.unlocked():
    config.data.kwargs = ml_collections.ConfigDict(kwargs)
  return config, notes


def with_epochs(config, train_size: int) -> ml_collections.ConfigDict:
  """``config``, or with ``train.epochs > 0`` a copy whose ``train.steps`` makes that
  many passes over the ``train_size`` training images (extra training data included)."""
  if "fed" in config or not config.train.epochs:
    return config
  config = copy.deepcopy(config)
  with config.unlocked():
    config.train.steps = config.train.epochs * -(-train_size // config.train.batch_size)
  return config


def fit_model_to_data(config, sources: dict, notes: list) -> ml_collections.ConfigDict:
  """``config`` with the model's input channels and classes taken from the data where
  the config does not give them; a given value that cannot fit the data is an error
  naming both (a binary dataset fits 1 logit or 2 classes)."""
  image = next(iter(sources.values()))[0]["image"]
  channels, train = image.shape[-1], sources.get("train") or next(iter(sources.values()))
  classes = max(2, int(train.take(np.arange(len(train)), ("mask",))["mask"].max()) + 1)
  model = models.get_model(config.model.name, **config.model.kwargs)
  given, chosen = config.model.kwargs, {}
  if "in_channels" not in given:
    chosen["in_channels"] = channels
  elif given.in_channels != channels:
    raise UserError(
      f"config.model.kwargs.in_channels is {given.in_channels} but the {config.data.name} "
      f"images have {channels} channels (shape {image.shape}); set "
      f"--config.model.kwargs.in_channels={channels} or leave it unset."
    )
  outputs = model.interface.num_classes
  if "num_classes" not in given and classes > 2:
    chosen["num_classes"] = outputs = classes
  if max(outputs, 2) < classes:
    raise UserError(
      f"config.model.kwargs.num_classes is {outputs} but the {config.data.name} masks have "
      f"{classes} classes; set --config.model.kwargs.num_classes={classes} or leave it unset."
    )
  if chosen:
    config = copy.deepcopy(config)
    with config.unlocked():
      config.model.kwargs.update(chosen)
    notes.append(f"model: {', '.join(f'{k}={v}' for k, v in chosen.items())} from the data")
  return config


class Experiment:
  """Data, model, loss, optimizer, method and initial state of one config, images or
  volumes alike.

  ``init()`` builds the state a run trains and saves: the method's networks, or for a
  federated config the server state. Image models are initialised at the tile size,
  valid for every model (valid-conv networks need particular sizes), volume models at
  the patch size; parameters do not depend on the spatial size. ``volumes`` (a
  :class:`jaxseg.run.volume.Volumes`) is set for a volume dataset, ``sources`` (the
  prepared splits) for an image dataset.
  """

  def __init__(
    self, config: ml_collections.ConfigDict, splits=datasets.SPLITS, plan: dict | None = None
  ):
    """``config`` with its ``auto`` settings resolved becomes ``self.config`` (what a
    run saves as ``config.json``); ``self.notes`` says what was chosen. No ``splits``
    (prediction on new images): the data is not prepared at all; a volume run's
    ``plan`` then says how its cases were prepared."""
    check_config(config)
    self.notes, self.sources, self.volumes = [], {}, None
    cases = None
    if is_volume(config):
      cases = volume.load(config) if splits else None
      plan = cases.plan if cases is not None else plan
      config = volume.resolve(config, plan, self.notes)
    elif splits:
      config, self.notes = resolve_data(config)
      self.sources = pipeline.load_splits(config.data, splits)
      config = fit_model_to_data(config, self.sources, self.notes)
      if "train" in self.sources:
        config = with_epochs(config, len(self.sources["train"]))
    self.config = config
    self.model = models.get_model(config.model.name, **config.model.kwargs)
    self.loss_fn = losses.get_loss(config.loss.name, **config.loss.kwargs)
    self.tx = optim.make(config.optim, training_steps(config))
    self.method = make_method(config)
    channels = self.model.interface.in_channels
    if is_volume(config):
      self.volumes = volume.Volumes(config, self.model, cases, plan)
      spatial, self.predict_image = self.volumes.patch, None
    else:
      spatial = (config.infer.tile, config.infer.tile)
      self.predict_image = infer.ImagePredictor(self.model, infer.Tiling.of(config.infer))
    dtype = config.train.compute_dtype
    self.ctx = step_lib.Context(
      model=self.model,
      loss_fn=self.loss_fn,
      tx=self.tx,
      augmentations=config.augment,
      image_shape=(*spatial, channels),
      total_steps=training_steps(config),
      compute_dtype=None if dtype == "float32" else jnp.dtype(dtype),
      loss_scale=config.train.loss_scale,
    )
    init_key, self.train_key = jax.random.split(jax.random.key(config.seed))
    if "fed" in config:  # the server state: global networks and the server optimizer
      server_tx = optim.make(config.fed.server_optim, config.fed.rounds)
      rc = recipe.of(config)
      self.init = lambda: simulate.init(self.method, self.ctx, server_tx, init_key, rc)
    else:
      self.init = lambda: self.method.init(self.ctx, init_key)
    self.eval_step = jax.jit(step_lib.make_eval_step(self.model, self.loss_fn))

  @property
  def image_shape(self):
    """One stored training example's image shape (image datasets)."""
    return next(iter(self.sources.values()))[0]["image"].shape if self.sources else None

  def abstract_state(self):
    return jax.eval_shape(self.init)

  def variables(self, state) -> dict:
    """The evaluated network's ``{params, batch_stats}`` on the host (every process)."""
    return sharding.fetch(state_lib.variables(state.nets[self.method.evaluated]))
