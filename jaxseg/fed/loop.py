"""The federated training loop (I/O): ``jaxseg train`` on a config with ``config.fed``.

What a run writes besides the usual files (:mod:`jaxseg.train.loop`): ``clients.md``
(per-client sizes, labeled counts and foreground fractions of the partition) and
``communication.json`` (bytes per client per round). ``metrics.jsonl`` has one
``train`` line per round (losses; for FedWeP the chosen seeds and their similarity).
Checkpoints hold the server state (global networks, server optimizer, round); the
clients' data and batches are pure functions of the config and the round, so a
resumed run continues exactly.
"""

import dataclasses
import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxseg.data import pipeline
from jaxseg.fed import cost, layout, partition, seed_search, simulate
from jaxseg.semi import rwp
from jaxseg.train import loop, optim
from jaxseg.train import state as state_lib
from jaxseg.train.checkpoint import Checkpoints

PLACEMENTS = ("auto", "device", "stream")
CLIENT_MAPS = ("auto", "vmap", "loop")


def load_arrays(source, data_config) -> tuple[dict, np.ndarray]:
  """The training split as model inputs ``{image, labels[, weights]}`` and sites."""
  to_inputs = pipeline.ToModelInputs(pipeline.weight_config(data_config))
  records = [source[i] for i in range(len(source))]
  items = [to_inputs.map(r) for r in records]
  arrays = {k: np.stack([item[k] for item in items]) for k in items[0]}
  return arrays, np.array([int(r["site"]) for r in records])


@dataclasses.dataclass
class Simulation:
  """A compiled federation over the training split: ``run_round(state)``."""

  fed: simulate.Federation
  layout: layout.Layout
  table: str
  communication: dict
  placement: str
  run_round: object
  place_state: object


class FedExperiment(loop.Experiment):
  """A federated config's experiment: the server state is what is trained, saved and
  evaluated; :meth:`simulation` builds the clients and the compiled round."""

  def federation(self, local_steps: int, search=None, perturb=None) -> simulate.Federation:
    """The static parts of the simulation (``local_steps``: the longest client's)."""
    cfg, fc = self.config, self.config.fed
    ctx = loop.make_context(cfg, self.model, self.loss_fn, self.tx, self.image_shape[-1])
    abstract = jax.eval_shape(lambda: self.method.init(ctx, jax.random.key(0)))
    return simulate.Federation(
      ctx=ctx,
      method=self.method,
      server_tx=optim.make(fc.server_optim, fc.rounds),
      scenario=fc.scenario,
      local_steps=local_steps,
      server_steps=fc.server_steps,
      batch_size=cfg.train.batch_size,
      unlabeled_batch_size=cfg.method.unlabeled_batch_size,
      trainable=tuple(n for n, v in abstract.nets.items() if v.opt_state is not None),
      search=search,
      perturb=perturb,
      unroll=unroll_of(fc.unroll, max(local_steps, fc.server_steps)),
    )

  def simulation(self) -> Simulation:
    cfg, fc = self.config, self.config.fed
    if "jpeg" in cfg.data and cfg.data.jpeg.qualities:
      raise ValueError(
        "config.data.jpeg (host-side JPEG weathering) is not supported in federated runs, "
        "whose batches are drawn inside the compiled round; set config.data.jpeg.qualities=()."
      )
    if fc.placement not in PLACEMENTS:
      raise ValueError(
        f"config.fed.placement: unknown {fc.placement!r}; known: {', '.join(PLACEMENTS)}."
      )
    arrays, sites = load_arrays(self.sources["train"], cfg.data)
    foreground = (arrays["labels"] > 0).mean(axis=(1, 2))
    where = layout.assign(fc, cfg.method.labeled_fraction, foreground, sites, cfg.seed)
    devices = jax.devices() if fc.shard_clients else jax.devices()[:1]
    groups = client_groups(fc, len(devices), cfg)
    rows = math.ceil(fc.num_clients / groups) * groups
    data, longest = layout.client_data(
      where,
      rows,
      fc.local_steps,
      fc.local_epochs,
      cfg.train.batch_size,
      cfg.method.unlabeled_batch_size,
    )
    search, perturb_kw, probe = None, None, np.zeros((1,), np.float32)
    if self.method.sends_seeds:
      search = dict(fc.seed_search)
      _check_search(search, fc.scenario)
      kw = rwp.settings(dict(cfg.method.kwargs))
      perturb_kw = {"p": kw["p"], "sigma": kw["sigma"]}
      if search["probe"] == "real":
        probe = arrays["image"][np.resize(where.server, search["probe_size"])]
    if fc.scenario == "label_at_server" and cfg.method.name == "supervised":
      raise ValueError(
        "method 'supervised' with scenario 'label_at_server' gives the clients nothing to "
        "train on; use label_at_client (FedAvg) or a semi-supervised method."
      )
    fed = self.federation(longest, search, perturb_kw)
    nbytes = sum(v.nbytes for v in arrays.values())
    placement = fc.placement
    if placement == "auto":
      placement = "device" if nbytes <= fc.device_budget_mib * 2**20 else "stream"
    client_map = fc.client_map
    if client_map == "auto":  # measured: see `jaxseg bench --clients` in the README
      client_map = "loop" if jax.default_backend() == "cpu" and fc.data_devices == 1 else "vmap"
    run_round, place_state = compile_round(
      fed, data, arrays, probe, self.train_key, placement, devices, client_map, fc.data_devices
    )
    server = (
      f"\nserver: {len(where.server)} labeled images" if fc.scenario == "label_at_server" else ""
    )
    table = partition.table(where.clients, foreground, where.labeled) + server
    comm = cost.communication(self.method, self.abstract_state().nets)
    return Simulation(fed, where, table, comm, f"{placement}, {client_map}", run_round, place_state)


def client_groups(fc, devices: int, cfg) -> int:
  """Groups of ``fc.data_devices`` devices, each training its block of clients with
  every batch split over the group (data parallelism inside a client)."""
  data = fc.data_devices
  if data < 1 or devices % data:
    raise ValueError(
      f"config.fed.data_devices={data} must divide the {devices} devices of the client mesh."
    )
  if data > 1 and fc.client_map == "loop":
    raise ValueError("config.fed.data_devices > 1 needs config.fed.client_map 'vmap' or 'auto'.")
  for key, batch in (
    ("config.train.batch_size", cfg.train.batch_size),
    ("config.method.unlabeled_batch_size", cfg.method.unlabeled_batch_size),
  ):
    if batch % data:
      raise ValueError(f"{key}={batch} does not divide by config.fed.data_devices={data}.")
  return devices // data


def unroll_of(setting: int, steps: int) -> int:
  """``config.fed.unroll``, or with 0 the default: on CPU every local step is unrolled
  (XLA:CPU runs convolutions inside a loop about 9x slower than outside one; measured
  for the U-Net step, see the README), elsewhere none (faster compiles)."""
  if setting:
    return setting
  return max(steps, 1) if jax.default_backend() == "cpu" else 1


def _check_search(search: dict, scenario: str) -> None:
  if search["probe"] not in seed_search.PROBES:
    raise ValueError(
      f"config.fed.seed_search.probe: unknown {search['probe']!r}; known: "
      f"{', '.join(seed_search.PROBES)}."
    )
  if search["probe"] == "real" and scenario != "label_at_server":
    raise ValueError(
      "config.fed.seed_search.probe='real' (FedWeP-Real) needs the server's images: use "
      "scenario 'label_at_server', or probe 'random'."
    )
  if search["criterion"] not in seed_search.CRITERIA:
    raise ValueError(
      f"config.fed.seed_search.criterion: unknown {search['criterion']!r}; known: "
      f"{', '.join(seed_search.CRITERIA)}."
    )


def round_keys(train_key) -> tuple[dict, jax.Array]:
  """``({train, search}, data_key)``: the keys every round folds its index into."""
  keys = {"train": jax.random.fold_in(train_key, 0), "search": jax.random.fold_in(train_key, 1)}
  return keys, jax.random.fold_in(train_key, 2)


def compile_round(
  fed,
  data,
  arrays,
  probe,
  train_key,
  placement: str,
  devices,
  client_map: str = "vmap",
  data_devices: int = 1,
):
  """``(run_round(state) -> (state, metrics), place_state)``.

  ``placement``: ``device`` (the training arrays live on the device; batches are
  gathered inside the round) or ``stream`` (indices drawn on the device, batches
  gathered on the host and sent every round). ``client_map``: ``vmap`` (the whole
  round is one compiled program; with several devices the client axis is sharded
  over a ``clients`` mesh axis) or ``loop`` (compiled server part, one compiled
  client function called per client, compiled aggregation: how frameworks that
  train clients one by one simulate, and faster on CPU). Both give the same result.
  ``data_devices`` > 1 (``vmap``): the mesh is ``clients x data``; each group of
  ``data_devices`` devices trains its clients with every batch split over the group
  (XLA all-reduces the gradients; BatchNorm sees the whole batch). The batch is split
  only where a group holds one client: several vmapped clients make grouped
  convolutions, which XLA keeps whole.
  """
  if client_map not in CLIENT_MAPS[1:]:
    raise ValueError(f"config.fed.client_map: unknown {client_map!r}; known: {CLIENT_MAPS}.")
  if client_map == "loop":
    devices = devices[:1]
  keys, data_key = round_keys(train_key)
  shape = (len(devices) // data_devices, data_devices)
  mesh = jax.make_mesh(
    shape, ("clients", "data"), axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices
  )
  rows, replicated = NamedSharding(mesh, P("clients")), NamedSharding(mesh, P())
  live_rows = np.flatnonzero(np.asarray(data.size) > 0)
  # Client tables split by rows; the server's replicated.
  data_sharding = jax.tree.map(lambda _: rows, data).replace(server=replicated, server_n=replicated)
  data = jax.device_put(data, data_sharding)
  probe = jax.device_put(probe, replicated)
  fetch = simulate.gather if placement == "device" else (lambda _, x: x)
  if data_devices > 1:  # a client's batches split over the data axis of its group
    unsplit, split = fetch, NamedSharding(mesh, P("data"))
    fetch = lambda arrays, x: jax.lax.with_sharding_constraint(unsplit(arrays, x), split)  # noqa: E731
  device_arrays = jax.device_put(arrays, replicated) if placement == "device" else {}

  def indices(step, data):
    server = None
    if fed.scenario == "label_at_server":
      server = simulate.server_indices(fed, data, data_key, step)
    return simulate.client_indices(fed, data, data_key, step), server

  draw = jax.jit(indices)

  def streamed(state):
    """This round's batches, gathered on the host (``stream``), or None."""
    if placement == "device":
      return None
    client_idx, server_idx = jax.device_get(draw(state.step, data))
    client_xs = jax.device_put(simulate.gather(arrays, client_idx), rows)
    return client_xs, None if server_idx is None else simulate.gather(arrays, server_idx)

  def map_clients(block, shared, *client_args):
    if len(devices) == 1:
      return block(shared, *client_args)
    # Each device trains its shard of the clients; their weighted sums are combined.
    summed = lambda *args: jax.lax.psum(block(*args), "clients")  # noqa: E731
    specs = (P(), *(P("clients"),) * len(client_args))
    mapped = jax.shard_map(
      summed,
      mesh=mesh,
      in_specs=specs,
      out_specs=P(),
      axis_names={"clients"},  # manual; the data axis is left to XLA
      check_vma=False,
    )
    return mapped(shared, *client_args)

  if client_map == "vmap":

    @functools.partial(jax.jit, donate_argnums=0)
    def one_program(state, data, arrays, probe, xs):
      client_xs, server_xs = indices(state.step, data) if xs is None else xs
      return simulate.round_(
        fed, state, data, client_xs, server_xs, fetch, probe, keys, arrays, map_clients
      )

    def run_round(state):
      return one_program(state, data, device_arrays, probe, streamed(state))

  else:

    @jax.jit
    def prepare(state, data, arrays, probe, xs):
      client_xs, server_xs = indices(state.step, data) if xs is None else xs
      return client_xs, simulate.broadcast(fed, state, server_xs, fetch, probe, keys, arrays)

    block = jax.jit(functools.partial(simulate.clients, fed, fetch))
    add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))
    finish = jax.jit(functools.partial(simulate.finish, fed), donate_argnums=0)

    # Each live client's row index, steps and size, sliced once (padding rows weigh
    # nothing: skipped).
    per_client = [
      (slice(c, c + 1), jnp.arange(c, c + 1), data.steps[c : c + 1], data.size[c : c + 1])
      for c in live_rows
    ]

    def run_round(state):
      client_xs, (shared, metrics) = prepare(state, data, device_arrays, probe, streamed(state))
      total = None
      for one, row, steps, size in per_client:
        xs = jax.tree.map(lambda x, one=one: x[one], client_xs)
        part = block(shared, row, xs, steps, size)
        total = part if total is None else add(total, part)
      return finish(state, shared, total, metrics)

  return run_round, lambda state: jax.device_put(state, replicated)


def train(config, workdir: str, *, stop_after: int | None = None):
  """Federated training of ``config`` in ``workdir`` (resumes from its latest checkpoint);
  ``stop_after`` ends after that many rounds without saving, as a kill would."""
  loop.prepare_workdir(workdir)
  loop.check_config(config)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  exp = FedExperiment(config)
  sim = exp.simulation()
  fc = config.fed
  with open(os.path.join(workdir, "clients.md"), "w") as f:
    f.write(sim.table + "\n")
  with open(os.path.join(workdir, "communication.json"), "w") as f:
    json.dump(sim.communication, f, indent=2)
  comm = sim.communication
  print(
    f"{fc.num_clients} clients ({fc.partition}, {fc.scenario}), data {sim.placement}:\n"
    f"{sim.table}\n"
    f"communication per client per round: {comm['down_bytes']:,} B down, "
    f"{comm['up_bytes']:,} B up ({comm['text']} of a two-model method)"
  )
  ckpts = Checkpoints(os.path.join(workdir, "checkpoints"))
  record = {"best_dice": -1.0, "evals_since_best": 0}
  if ckpts.latest_step() is not None:
    state, record = ckpts.restore(ckpts.latest_step(), exp.abstract_state())
    print(f"Resumed from {workdir}/checkpoints/{int(state.step)}.")
  else:
    state = exp.init_state()
    params = exp.variables(state)["params"]
    print(f"{config.model.name}: {state_lib.count_params(params):,} parameters.")
  state = sim.place_state(state)
  logger = loop.Logger(workdir)
  start = int(state.step)
  bar = tqdm.tqdm(total=fc.rounds, initial=start, desc="rounds", unit="round", mininterval=1.0)
  try:
    for r in range(start + 1, fc.rounds + 1):
      if stop_after is not None and r - 1 - start >= stop_after:
        return state
      began = time.time()
      state, metrics = sim.run_round(state)
      values = loop.mean_metrics([metrics], r, ckpts)
      for name in ("seed_a", "seed_b"):
        if name in values:
          values[name] = int(values[name])
      values["rounds_per_s"] = 1.0 / (time.time() - began)
      logger.write(r, "train", values)
      bar.set_postfix(loss=f"{values['loss']:.4f}")
      bar.update(r - bar.n)
      if r % config.train.eval_every == 0 or r == fc.rounds:
        if loop.validate_and_save(exp, state, r, record, {}, ckpts, logger, workdir, bar.write):
          break
  finally:
    bar.close()
    logger.close()
    ckpts.close()
  return state
