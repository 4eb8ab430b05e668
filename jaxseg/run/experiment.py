"""What every runner builds from a config: data, model, loss, optimizer, method and
the initial state (:class:`Experiment`)."""

import jax
import jax.numpy as jnp
import ml_collections

from jaxseg import data as datasets
from jaxseg import infer, losses, models, semi, tables
from jaxseg.data import augment, pipeline
from jaxseg.errors import UserError
from jaxseg.fed import simulate
from jaxseg.train import optim, sharding
from jaxseg.train import state as state_lib
from jaxseg.train import step as step_lib

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Fails at once on unknown names and settings, before any data is prepared."""
  tables.check(models.MODELS, config.model.name, "model")
  tables.check(losses.LOSSES, config.loss.name, "loss")
  tables.check(datasets.DATASETS, config.data.name, "dataset")
  augment.check(config.augment)
  if config.data.annotator not in ("majority", "random"):
    raise UserError(
      f"config.data.annotator must be 'majority' or 'random', found {config.data.annotator!r}."
    )
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


class Experiment:
  """Data, model, loss, optimizer, method and initial state of one config.

  ``init()`` builds the state a run trains and saves: the method's networks, or for a
  federated config the server state. Models are initialised at the tile size, valid
  for every model (valid-conv networks need particular sizes); parameters do not
  depend on the spatial size.
  """

  def __init__(self, config: ml_collections.ConfigDict, splits=datasets.SPLITS):
    check_config(config)
    self.config = config
    self.model = models.get_model(config.model.name, **config.model.kwargs)
    # No splits (prediction on new images): the data is not prepared at all.
    self.sources = pipeline.load_splits(config.data, splits) if splits else {}
    self.loss_fn = losses.get_loss(config.loss.name, **config.loss.kwargs)
    self.tx = optim.make(config.optim, training_steps(config))
    self.method = make_method(config)
    self.image_shape = next(iter(self.sources.values()))[0]["image"].shape if self.sources else None
    channels = self.model.interface.in_channels
    if self.sources and self.image_shape[-1] != channels:
      raise UserError(
        f"config.model.kwargs.in_channels is {channels} but the {config.data.name} images have "
        f"{self.image_shape[-1]} channels (shape {self.image_shape}); set "
        f"--config.model.kwargs.in_channels={self.image_shape[-1]}."
      )
    dtype = config.train.compute_dtype
    self.ctx = step_lib.Context(
      model=self.model,
      loss_fn=self.loss_fn,
      tx=self.tx,
      augmentations=config.augment,
      image_shape=(config.infer.tile, config.infer.tile, channels),
      total_steps=training_steps(config),
      compute_dtype=None if dtype == "float32" else jnp.dtype(dtype),
      loss_scale=config.train.loss_scale,
    )
    init_key, self.train_key = jax.random.split(jax.random.key(config.seed))
    if "fed" in config:  # the server state: global networks and the server optimizer
      server_tx = optim.make(config.fed.server_optim, config.fed.rounds)
      self.init = lambda: simulate.init(self.method, self.ctx, server_tx, init_key)
    else:
      self.init = lambda: self.method.init(self.ctx, init_key)
    self.eval_step = jax.jit(step_lib.make_eval_step(self.model, self.loss_fn))
    self.eval_on_device = False  # the train runner sets it where validation fits there
    self._eval_cache = {}
    self.tile_fn = infer.make_tile_fn(self.model)

  def abstract_state(self):
    return jax.eval_shape(self.init)

  def variables(self, state) -> dict:
    """The evaluated network's ``{params, batch_stats}`` on the host (every process)."""
    return sharding.fetch(state_lib.variables(state.nets[self.method.evaluated]))

  def eval_inputs(self, split: str) -> list:
    """``(batch, valid)`` pairs over ``split`` (padded batches of ``config.eval.batch_size``);
    with ``eval_on_device`` uploaded once and kept on the device."""
    if split in self._eval_cache:
      return self._eval_cache[split]
    batches = pipeline.eval_batches(self.sources[split], self.config.eval.batch_size)
    pairs = ((b, b.pop("valid")) for b in batches)
    if self.eval_on_device:
      pairs = self._eval_cache[split] = [(jax.device_put(b), v) for b, v in pairs]
    return pairs
