"""The client algorithms of a federated round (pure): what runs inside a client's local
training beyond its method's step, and what the client keeps between rounds.

* ``fedprox`` (:func:`proximal`): FedProx's proximal term, a gradient transformation;
* ``scaffold`` (:func:`scaffold_correction`, :func:`scaffold_local`): SCAFFOLD's drift
  correction ``c - c_i`` and its control variates' update;
* ``fedbn`` (:func:`bn_mask`, :func:`with_local_bn`, :func:`kept_bn`): each client's
  BatchNorm parameters and statistics stay with it, neither sent nor averaged.

:func:`client_tx` puts the algorithm's transformation in front of the client optimizer;
which algorithm runs is the recipe's (:mod:`jaxseg.fed.recipe`).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class ProxState(NamedTuple):
  anchor: optax.Params  # the global weights the client started from


def proximal(mu: float) -> optax.GradientTransformation:
  """FedProx's proximal term as a gradient transformation: ``g + mu (w - w_global)``,
  the gradient of ``mu/2 ||w - w_global||^2`` added to the loss's, ``w_global`` being
  the weights at ``init`` (a client's optimizer is initialised from the broadcast
  every round). The official code does the same inside its optimizer:
  litian96/FedProx ``flearn/optimizer/pgd.py``, ``PerturbedGradientDescent._apply_dense``
  (``var - lr * (grad + mu * (var - vstar))``), followed here by the client's own
  optimizer (plain SGD there)."""

  def init(params):
    return ProxState(anchor=params)

  def update(updates, state, params):
    return jax.tree.map(lambda g, w, a: g + mu * (w - a), updates, params, state.anchor), state

  return optax.GradientTransformation(init, update)


class Correction(NamedTuple):
  correction: optax.Params  # SCAFFOLD: c - c_i, set by the round (jaxseg.fed.simulate)


def scaffold_correction() -> optax.GradientTransformation:
  """SCAFFOLD's corrected gradient ``g - c_i + c`` (Karimireddy et al. 2020, Alg. 1
  line 10), as FL4Health's ``ScaffoldClient.modify_grad`` adds ``c - c_i`` to each
  gradient before its (vanilla SGD) step; the round puts ``c - c_i`` in the state."""

  def init(params):
    return Correction(correction=jax.tree.map(jnp.zeros_like, params))

  def update(updates, state, params=None):
    del params
    return jax.tree.map(jnp.add, updates, state.correction), state

  return optax.GradientTransformation(init, update)


def client_tx(recipe, tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """The client optimizer with ``recipe``'s client algorithm's transformation in front."""
  if recipe.algorithm == "fedprox":
    return optax.chain(proximal(recipe.prox_mu), tx)
  if recipe.algorithm == "scaffold":
    return optax.chain(scaffold_correction(), tx)
  return tx


def bn_mask(params, batch_stats):
  """Per leaf of ``params``: whether it belongs to a BatchNorm layer (its module also
  holds statistics in ``batch_stats``), what FedBN keeps local (med-air/FedBN
  ``federated/fed_office.py``, ``communication``: every key but those of ``bn``
  layers is averaged)."""

  def has_stats(path) -> bool:
    node = batch_stats
    for entry in path[:-1]:
      key = getattr(entry, "key", None)
      if not isinstance(node, dict) or key not in node:
        return False
      node = node[key]
    return True

  paths, treedef = jax.tree_util.tree_flatten_with_path(params)
  return jax.tree.unflatten(treedef, [has_stats(p) for p, _ in paths])


def with_local_bn(params, batch_stats, local: dict):
  """FedBN: the global ``params`` with the client's own BatchNorm parameters, and its
  own statistics."""
  mask = bn_mask(params, batch_stats)
  mine = jax.tree.map(lambda g, m, x: x if m else g, params, mask, local["params"])
  return mine, local["batch_stats"]


def kept_bn(params, batch_stats) -> dict:
  """FedBN: what the client keeps of its trained networks (:func:`local_init`'s shape)."""
  mask = bn_mask(params, batch_stats)
  kept = jax.tree.map(lambda x, m: x if m else jnp.zeros((), x.dtype), params, mask)
  return {"params": kept, "batch_stats": batch_stats}


def scaffold_local(recipe, c, c_i, delta, steps):
  """SCAFFOLD's option II (Karimireddy et al. 2020, Eq. 4; FL4Health's
  ``compute_updated_control_variates``): ``c_i+ = c_i - c + (x - y_i) / (K eta_l)``
  with ``delta = y_i - x`` and ``K`` the client's steps; ``(c_i+, c_i+ - c_i)``."""
  scale = 1.0 / (jnp.maximum(steps, 1) * recipe.client_lr)
  new = jax.tree.map(lambda ci, cc, d: ci - cc - scale * d, c_i, c, delta)
  return new, jax.tree.map(jnp.subtract, new, c_i)
