"""Seeded partitions of a training set over federated clients.

Every function returns a list of sorted index arrays, one per client, that together
cover the given indices exactly once, and every client gets at least one image.

* ``iid``: a seeded shuffle cut into near-equal parts;
* ``dirichlet``: non-IID by a per-image attribute (e.g. lesion size binned into
  ``bins`` quantiles, or the acquisition site): for each attribute value the
  client shares are drawn from ``Dirichlet(alpha)`` (small ``alpha``: skewed);
* ``site``: client ``k`` holds the images of the sites ``s`` with
  ``s % num_clients == k`` (real sources where a dataset records them).

Randomness comes from ``jax.random`` keys of the given seed (host-side, once).
"""

import jax
import numpy as np

from jaxseg.errors import UserError

PARTITIONS = ("iid", "dirichlet", "site")


def _rng_permutation(key, n: int) -> np.ndarray:
  return np.asarray(jax.random.permutation(key, n))


def iid(indices: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
  _check(len(indices), num_clients)
  order = indices[_rng_permutation(jax.random.key(seed), len(indices))]
  return [np.sort(part) for part in np.array_split(order, num_clients)]


def quantile_bins(values: np.ndarray, bins: int) -> np.ndarray:
  """Bin ``values`` into ``bins`` groups of (nearly) equal size by rank."""
  ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable")
  return (ranks * bins // max(len(values), 1)).astype(np.int64)


def dirichlet(
  indices: np.ndarray, groups: np.ndarray, num_clients: int, alpha: float, seed: int
) -> list[np.ndarray]:
  """Non-IID: images of each group spread over clients by ``Dirichlet(alpha)`` shares."""
  _check(len(indices), num_clients)
  if alpha <= 0:
    raise UserError(f"config.fed.alpha must be positive, found {alpha}.")
  key = jax.random.key(seed)
  parts = [[] for _ in range(num_clients)]
  for g, value in enumerate(np.unique(groups)):
    members = indices[groups == value]
    members = members[_rng_permutation(jax.random.fold_in(key, 2 * g), len(members))]
    shares = np.asarray(
      jax.random.dirichlet(jax.random.fold_in(key, 2 * g + 1), np.full(num_clients, alpha))
    )
    cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(int)
    for client, part in enumerate(np.split(members, cuts)):
      parts[client].extend(part.tolist())
  # Every client needs an image: move one from the largest client to each empty one.
  for client in range(num_clients):
    if not parts[client]:
      donor = max(range(num_clients), key=lambda c: len(parts[c]))
      parts[client].append(parts[donor].pop())
  return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def by_site(indices: np.ndarray, sites: np.ndarray, num_clients: int) -> list[np.ndarray]:
  _check(len(indices), num_clients)
  unique = np.unique(sites)
  if len(unique) < num_clients:
    raise UserError(
      f"config.fed.partition='site' with {num_clients} clients, but the training images "
      f"come from {len(unique)} site(s) {unique.tolist()}; use fewer clients, a dataset "
      "with more sites (e.g. synthetic_nerve num_sites), or partition='dirichlet'."
    )
  return [np.sort(indices[sites % num_clients == k]) for k in range(num_clients)]


def _check(size: int, num_clients: int) -> None:
  if not 1 <= num_clients <= size:
    raise UserError(
      f"config.fed.num_clients={num_clients}: need 1 <= clients <= {size} (the images "
      "to partition)."
    )


def table(parts: list[np.ndarray], foreground: np.ndarray, labeled=None, shown: int = 16) -> str:
  """Markdown table of per-client sizes, labeled counts and foreground fractions; past
  ``shown`` clients (a federation of hundreds of virtual clients) one last row sums up
  the rest: their images (and the smallest and largest client), labeled images, and
  the mean foreground over their images."""
  lines = [
    "| client | images | labeled | foreground (mean) |",
    "|---|---|---|---|",
  ]

  def row(name, clients, images):
    idx = np.concatenate([parts[c] for c in clients]).astype(int)
    fg = float(foreground[idx].mean()) if len(idx) else 0.0
    n_lab = "-" if labeled is None else str(sum(len(labeled[c]) for c in clients))
    return f"| {name} | {images} | {n_lab} | {fg:.4f} |"

  for c, part in enumerate(parts[:shown]):
    lines.append(row(c, [c], len(part)))
  rest = list(range(shown, len(parts)))
  if rest:
    sizes = [len(parts[c]) for c in rest]
    each = f"{sum(sizes)} ({min(sizes)}-{max(sizes)} each)"
    lines.append(row(f"{shown}..{len(parts) - 1} ({len(rest)} more)", rest, each))
  return "\n".join(lines)
