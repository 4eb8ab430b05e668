"""Client-level differential privacy (DP-FedAvg, ``config.fed.dp``): each client's
update clipped (:func:`clipped`), Gaussian noise on their sum and the adaptive clipping
norm's update at the server (:func:`server_noise`), and the privacy spent, by
``dp-accounting`` (:func:`epsilon`). ``recipe``: a :class:`jaxseg.fed.recipe.Recipe`."""

import math

import jax
import jax.numpy as jnp

from jaxseg.errors import UserError


def global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def clipped(delta, norm) -> tuple[dict, jax.Array]:
  """``delta`` scaled to global norm at most ``norm``, and whether it was within it."""
  n = global_norm(delta)
  scale = jnp.minimum(1.0, norm / jnp.maximum(n, 1e-12))
  return jax.tree.map(lambda x: x * scale, delta), (n <= norm).astype(jnp.float32)


def noise_multipliers(recipe) -> tuple[float, float]:
  """``(z of the sum of updates, std of the unclipped count)``. With adaptive clipping
  the count is released too, so the updates' noise grows to keep the total at ``z``
  (Andrew et al. 2021, Thm. 1: ``z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2``)."""
  z = recipe.noise_multiplier
  if recipe.clip != "adaptive" or z == 0:
    return z, 0.0
  sigma_b = recipe.count_noise * recipe.clients
  if 2 * sigma_b * z <= 1:
    raise UserError(
      f"config.fed.dp: count_noise={recipe.count_noise} x {recipe.clients} clients is too "
      f"small for noise_multiplier={z} (need 2 * count_noise * clients * z > 1)."
    )
  return (z**-2 - (2 * sigma_b) ** -2) ** -0.5, sigma_b


def server_noise(recipe, part: dict, state: dict, key):
  """DP at the server: Gaussian noise ``N(0, (z C)^2)`` on the sum of the clipped
  updates, and (adaptive) the clipping norm's geometric update from the noisy
  fraction left unclipped, ``C <- C exp(-lr (b - target))`` (Andrew et al. 2021,
  Alg. 1; TFF's ``QuantileAdaptiveClipSumQuery``). ``(part, state)``."""
  if not recipe.dp:
    return part, state
  z, sigma_b = noise_multipliers(recipe)
  norm = state["clip_norm"]
  if z:
    leaves, treedef = jax.tree.flatten(part["delta"])
    keys = jax.random.split(key, len(leaves) + 1)
    noisy = [
      x + z * norm * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=False)
    ]
    part = {**part, "delta": jax.tree.unflatten(treedef, noisy)}
    count_noise = sigma_b * jax.random.normal(keys[-1])
  else:
    count_noise = 0.0
  if recipe.clip == "adaptive":
    unclipped = (part["unclipped"] + count_noise) / recipe.clients
    norm = norm * jnp.exp(-recipe.clip_lr * (unclipped - recipe.target_quantile))
  return part, {**state, "clip_norm": norm}


def epsilon(recipe, rounds: int, num_clients: int) -> float:
  """ε at ``recipe.delta`` after ``rounds`` rounds of DP-FedAvg, by ``dp-accounting``'s
  RDP accountant: per round a Gaussian mechanism of noise multiplier z, sampled with
  probability K/N (fixed-size sampling accounted as Poisson, as TFF's DP tutorials do);
  inf without noise."""
  import dp_accounting

  if not recipe.dp or recipe.noise_multiplier == 0 or rounds == 0:
    return math.inf if rounds else 0.0
  event = dp_accounting.GaussianDpEvent(recipe.noise_multiplier)
  k = recipe.clients_per_round or num_clients
  if k < num_clients:
    event = dp_accounting.PoissonSampledDpEvent(k / num_clients, event)
  accountant = dp_accounting.rdp.RdpAccountant()
  accountant.compose(event, rounds)
  return float(accountant.get_epsilon(recipe.delta))
