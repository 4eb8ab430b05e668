"""Semi-supervised methods (FedWeP paper's baselines and RWP) and their name table.

Every method module has a factory ``make(**settings) -> Method`` (optax style): the
settings are its keyword arguments with their defaults there and nowhere else, and
``config.method.kwargs`` is passed to it — a misspelt setting is an error. A
:class:`Method` holds pure functions:

* ``init(ctx, key) -> State``: the method's networks (``state.nets``, each a
  :class:`~jaxseg.train.state.Net`);
* ``step(ctx, state, labeled, unlabeled, key) -> (state, metrics)``: one pure, jit-able
  training step (vmappable over stacked client states), built from
  :mod:`jaxseg.train.step` like every other step; ``unlabeled`` may be ``None`` for
  the supervised method;
* ``evaluated``: the network whose predictions are scored;
* ``exchanged``: the networks a federated client sends and receives (two-model
  methods cost 100%, one model 50%);
* ``broadcast``: what else the server sends every client each round, if anything
  (:class:`Broadcast`: FedWeP's seed pair), made by the method's one server hook;
  then ``step`` takes it as ``extra=``. The federated round names no method.

``ctx`` (:class:`~jaxseg.train.step.Context`) holds the static parts: model, loss,
optimizer, augmentations, compute dtype.
"""

import dataclasses
from collections.abc import Callable, Mapping

from jaxseg import tables

METHODS = {
  "supervised": "jaxseg.semi.supervised:make",
  "mean_teacher": "jaxseg.semi.mean_teacher:make",
  "cps": "jaxseg.semi.cps:make",
  "pseudoseg": "jaxseg.semi.pseudoseg:make",
  "rwp": "jaxseg.semi.rwp:make",
}


@dataclasses.dataclass(frozen=True)
class Broadcast:
  """What a method's server sends every client each round beyond the exchanged
  networks, and how it is made.

  ``make(ctx, nets, server_images, key, settings) -> (payload, metrics)``: the server
  hook, run on the global networks before they are sent (pure; ``server_images``:
  ``server_images(settings)`` of the server's labeled images, or a placeholder where
  that is 0). ``section``: the ``config.fed`` section of its settings, which
  ``settings(section, scenario)`` turns into the (hashable) ``settings`` value,
  raising a :class:`jaxseg.errors.UserError` for a bad one; ``nbytes`` and ``what``:
  the payload's size and name on the wire (communication accounting).
  """

  make: Callable
  nbytes: int
  what: str
  section: str
  settings: Callable
  server_images: Callable

  def settings_of(self, fed_config):
    """The hook's settings from its section of ``config.fed`` (``fed_config``)."""
    return self.settings(fed_config[self.section].to_dict(), fed_config.scenario)


@dataclasses.dataclass(frozen=True)
class Method:
  init: Callable
  step: Callable
  evaluated: str
  exchanged: tuple[str, ...]
  broadcast: Broadcast | None = None


def make_method(name: str, settings: Mapping | None = None) -> Method:
  """``METHODS[name]`` made with ``settings``; an unknown setting raises, naming it."""
  factory = tables.resolve(METHODS, name, "method")
  settings = dict(settings or {})
  tables.check_settings(factory, settings, f"config.method.kwargs of method {name!r}")
  return factory(**settings)


def default_settings(name: str) -> dict:
  """Method ``name``'s settings with their defaults: what a config's
  ``method.kwargs`` starts from, so a config shows every setting it can override."""
  return tables.defaults(tables.resolve(METHODS, name, "method"))
