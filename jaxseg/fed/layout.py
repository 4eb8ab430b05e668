"""Who holds which training images: scenario, partition and labeled fractions.

* ``label_at_client``: the training images are partitioned over the clients, who
  keep the labels of ``ceil(fraction * n)`` of them in all, apportioned to their sizes
  (:func:`labeled_counts`: at least one each), and use the rest without labels (all
  of them when every image is labeled);
* ``label_at_server``: the server keeps ``ceil(fraction * n)`` labeled images; the
  rest is partitioned over the clients, who hold unlabeled images only.

Host-side and seeded (``jax.random`` keys of ``seed``); the result is turned into the
padded index tables of :class:`jaxseg.fed.streams.ClientData`.
"""

import dataclasses
import math

import jax
import numpy as np

from jaxseg.errors import UserError
from jaxseg.fed import partition, simulate, streams


@dataclasses.dataclass(frozen=True)
class Layout:
  clients: list  # each client's images
  labeled: list  # per client, the images it holds labels of
  unlabeled: list  # per client, the images it trains on without labels
  server: np.ndarray  # the server's labeled images (label-at-server)


def _permuted(indices: np.ndarray, key) -> np.ndarray:
  return indices[np.asarray(jax.random.permutation(key, len(indices)))]


def assign(fed_config, fraction: float, foreground, sites, seed: int) -> Layout:
  """The layout of ``len(foreground)`` training images (``foreground``: per-image
  foreground fraction, the ``lesion_size`` attribute; ``sites``: acquisition sites)."""
  if fed_config.scenario not in simulate.SCENARIOS:
    raise UserError(
      f"config.fed.scenario: unknown {fed_config.scenario!r}; known: "
      f"{', '.join(simulate.SCENARIOS)}."
    )
  if not 0 < fraction <= 1:
    raise UserError(f"config.method.labeled_fraction must be in (0, 1], found {fraction}.")
  n = len(foreground)
  key = jax.random.key(seed)
  indices, server = np.arange(n), np.zeros(0, np.int64)
  if fed_config.scenario == "label_at_server":
    count = math.ceil(fraction * n)
    if count >= n:
      raise UserError(
        f"label_at_server with labeled_fraction={fraction} leaves no unlabeled image for "
        f"the clients out of {n}."
      )
    order = _permuted(indices, jax.random.fold_in(key, 0))
    server, indices = np.sort(order[:count]), np.sort(order[count:])
  parts = _partition(fed_config, indices, foreground, sites, seed)
  if fed_config.scenario == "label_at_server":
    return Layout(parts, [np.zeros(0, np.int64)] * len(parts), parts, server)
  labeled, unlabeled = [], []
  counts = labeled_counts([len(p) for p in parts], fraction)
  for c, (part, count) in enumerate(zip(parts, counts, strict=True)):
    order = _permuted(part, jax.random.fold_in(key, 1 + c))
    labeled.append(np.sort(order[:count]))
    rest = np.sort(order[count:])
    unlabeled.append(rest if len(rest) else labeled[-1])
  return Layout(parts, labeled, unlabeled, server)


def labeled_counts(sizes, fraction: float) -> list[int]:
  """Labeled images per client: ``ceil(fraction * sum(sizes))`` in all, apportioned in
  proportion to the sizes by largest remainder (ties to the first client), then at
  least one per non-empty client (a client trains on a labeled batch every step), the
  excess this makes taken back from the clients with the most. Rounding every client
  up instead would label up to one image more per client than the fraction says."""
  sizes = np.asarray(sizes, np.int64)
  total = math.ceil(fraction * sizes.sum())
  quota = sizes * total / max(sizes.sum(), 1)
  counts = np.floor(quota).astype(np.int64)
  order = np.argsort(-(quota - counts), kind="stable")
  counts[order[: total - counts.sum()]] += 1
  counts = np.where(sizes > 0, np.maximum(counts, 1), 0)
  while counts.sum() > total and counts.max() > 1:
    counts[np.argmax(counts)] -= 1
  return np.minimum(counts, sizes).tolist()


def with_unlabeled(
  layout: Layout, first: int, count: int, seed: int, groups=None, held: bool = False
) -> Layout:
  """``layout`` with ``count`` images without masks (indices ``first ..``) added to its
  clients' unlabeled images (a hospital's unannotated scans): IID, or with ``groups``
  (per image: its patient or source) whole groups per client, group ``g`` to client
  ``g % clients``; with ``held``, ``groups`` are the clients that hold them."""
  clients, indices = len(layout.clients), first + np.arange(count)
  if held:
    extra = [indices[np.asarray(groups) == c] for c in range(clients)]
  elif groups is None:
    extra = partition.iid(indices, clients, seed)
  else:
    found = np.unique(groups)
    if len(found) < clients:
      raise UserError(
        f"config.fed.pool_partition: the unlabeled pool has {len(found)} group(s) for "
        f"{clients} clients; use at most {len(found)} clients or another pool_partition."
      )
    extra = partition.by_site(indices, np.asarray(groups), clients)
  return Layout(
    clients=[np.concatenate([c, e]) for c, e in zip(layout.clients, extra, strict=True)],
    labeled=layout.labeled,
    unlabeled=[np.concatenate([u, e]) for u, e in zip(layout.unlabeled, extra, strict=True)],
    server=layout.server,
  )


def _partition(fed_config, indices, foreground, sites, seed):
  name, clients = fed_config.partition, fed_config.num_clients
  if name == "iid":
    return partition.iid(indices, clients, seed)
  if name == "site":
    return partition.by_site(indices, sites[indices], clients)
  if name == "dirichlet":
    if fed_config.attribute == "lesion_size":
      groups = partition.quantile_bins(foreground[indices], fed_config.bins)
    elif fed_config.attribute == "site":
      groups = sites[indices]
    else:
      raise UserError(
        f"config.fed.attribute: unknown {fed_config.attribute!r}; known: lesion_size, site."
      )
    return partition.dirichlet(indices, groups, clients, fed_config.alpha, seed)
  raise UserError(
    f"config.fed.partition: unknown {name!r}; known: {', '.join(partition.PARTITIONS)}."
  )


def _table(groups: list, rows: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  table = np.zeros((rows, width), np.int32)
  counts = np.zeros(rows, np.int32)
  for r, g in enumerate(groups):
    table[r, : len(g)], counts[r] = g, len(g)
  return table, counts


def site(scenario: str, images: int, pool: int, fraction: float, client: int, seed: int) -> Layout:
  """The one-client layout of a real site (Flower) holding ``images`` training images
  and ``pool`` images without masks, numbered locally (``0 ..``): its labels chosen as
  :func:`assign` chooses client ``client``'s (``ceil(fraction * images)``, at least
  one), so a site holding what a simulated client holds labels the same images."""
  part, key = np.arange(images), jax.random.key(seed)
  extra = images + np.arange(pool)
  if scenario == "label_at_server":
    everything = np.concatenate([part, extra])
    return Layout([everything], [np.zeros(0, np.int64)], [everything], np.zeros(0, np.int64))
  (count,) = labeled_counts([images], fraction)
  order = _permuted(part, jax.random.fold_in(key, 1 + client))
  labeled, rest = np.sort(order[:count]), np.sort(order[count:])
  unlabeled = np.concatenate([rest if len(rest) else labeled, extra])
  return Layout([np.concatenate([part, extra])], [labeled], [unlabeled], np.zeros(0, np.int64))


def client_data(
  layout: Layout,
  rows: int,
  local_steps: int,
  local_epochs: float,
  batch: int,
  unlabeled_batch: int,
  width: int = 0,
) -> tuple[streams.ClientData, int]:
  """Padded index tables with ``rows >= clients`` rows, and the longest local run.

  Local steps per client: ``local_steps``, or with ``local_epochs > 0`` enough steps
  for that many passes over the client's labeled and unlabeled images. ``width``: the
  tables' width (default: the images of the layout; a site is told the federation's).
  """
  # Every table is as wide as the training set, so runs that differ only in the
  # partition or the labeled fraction compile to the same program (cache hits); a
  # client's batch order depends on it (jaxseg.data.resident.stream_indices).
  width = width or max(len(np.concatenate([*layout.clients, layout.server])), 1)
  labeled, labeled_n = _table(layout.labeled, rows, width)
  unlabeled, unlabeled_n = _table(layout.unlabeled, rows, width)
  size = np.zeros(rows, np.float32)
  size[: len(layout.clients)] = [len(c) for c in layout.clients]
  if local_epochs > 0:
    steps = np.array(
      [
        math.ceil(local_epochs * max(ln / batch, un / unlabeled_batch)) if s else 0
        for ln, un, s in zip(labeled_n, unlabeled_n, size, strict=True)
      ],
      np.int32,
    )
  else:
    steps = np.where(size > 0, local_steps, 0).astype(np.int32)
  (server,), _ = _table([layout.server], 1, width)
  data = streams.ClientData(
    labeled=labeled,
    labeled_n=labeled_n,
    unlabeled=unlabeled,
    unlabeled_n=unlabeled_n,
    size=size,
    steps=steps,
    server=server,
    server_n=np.int32(len(layout.server)),
  )
  return data, int(steps.max())
