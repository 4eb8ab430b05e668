"""``jaxseg train`` on a federated config (``config.kind = "federated"``): the
simulation, on images or volumes (clients hold cases; patches are drawn inside the
round, :func:`jaxseg.data.patches.gather`).

What a run writes besides the usual files (:mod:`jaxseg.run.train`): ``clients.md``
(per-client sizes, labeled counts and foreground fractions of the partition) and
``communication.json`` (bytes per client per round). ``metrics.jsonl`` has one
``train`` line every ``config.train.log_every`` rounds (means over them; for FedWeP
the last round's seeds and the means of their similarity).
Checkpoints hold the server state (global networks, server optimizer, round); the
clients' data and batches are pure functions of the config and the round, so a
resumed run continues exactly. Only process 0 writes files.
"""

import copy
import dataclasses
import math
import os

import jax
import numpy as np

from jaxseg.data import patches, pipeline, unlabeled_folder
from jaxseg.errors import UserError
from jaxseg.fed import (
  algorithms,
  backends,
  checks,
  cost,
  layout,
  partition,
  privacy,
  recipe,
  simulate,
)
from jaxseg.run import evaluators, loop, skeleton, volume
from jaxseg.run.checkpoint import Checkpoints
from jaxseg.run.experiment import Experiment, check_config
from jaxseg.train import optim, sharding


def devices_of(fc) -> list:
  """The devices of the client mesh: all of them with ``shard_clients`` or several
  processes (each process trains the clients of its own devices), else the first."""
  return jax.devices() if fc.shard_clients or jax.process_count() > 1 else jax.devices()[:1]


def check(config) -> None:
  check_config(config)
  checks.check(config, len(devices_of(config.fed)), jax.process_count())
  skeleton.check_positive(config.train, ("batch_size", "eval_every", "log_every"))


def unroll_of(setting: int, steps: int) -> int:
  """``config.fed.unroll``, or with 0 the default: on CPU every local step is unrolled
  (XLA:CPU runs convolutions inside a loop about 9x slower than outside one; measured
  for the U-Net step, see docs/performance.md), elsewhere none (faster compiles)."""
  if setting:
    return setting
  return max(steps, 1) if jax.default_backend() == "cpu" else 1


def client_map_of(fc, volumes: bool) -> str:
  """``config.fed.client_map``, or with ``auto`` what measured fastest (docs/performance.md): on one
  CPU device ``loop`` (XLA:CPU's grouped convolutions are slow; ``jaxseg bench
  --clients``); elsewhere ``vmap``, but ``scan`` for 3-D networks, whose vmapped
  (grouped) convolutions XLA:GPU runs slowly (H200, 4 hippocampus clients: 4.07 s a
  round vmapped, 1.10 in sequence)."""
  if fc.client_map != "auto":
    return fc.client_map
  if jax.default_backend() == "cpu" and fc.data_devices == 1 and jax.process_count() == 1:
    return "loop"
  return "scan" if volumes else "vmap"


def federation(exp: Experiment, local_steps: int) -> simulate.Federation:
  """The static parts of the simulation (``local_steps``: the longest client's)."""
  cfg, fc = exp.config, exp.config.fed
  abstract = jax.eval_shape(lambda: exp.method.init(exp.ctx, jax.random.key(0)))
  hook = exp.method.broadcast
  rc = recipe.of(cfg)
  return simulate.Federation(
    # Ramp-ups count a client's steps over the run: with local_epochs, the data's.
    ctx=dataclasses.replace(
      exp.ctx, total_steps=fc.rounds * local_steps, tx=algorithms.client_tx(rc, exp.ctx.tx)
    ),
    method=exp.method,
    server_tx=optim.make(fc.server_optim, fc.rounds),
    scenario=fc.scenario,
    local_steps=local_steps,
    server_steps=fc.server_steps,
    batch_size=cfg.train.batch_size,
    unlabeled_batch_size=cfg.method.unlabeled_batch_size,
    trainable=tuple(n for n, v in abstract.nets.items() if v.opt_state is not None),
    broadcast_settings=None if hook is None else hook.settings_of(fc),
    unroll=unroll_of(fc.unroll, max(local_steps, fc.server_steps)),
    sampling=fc.sampling,
    server_training=fc.server_training,
    recipe=rc,
  )


@dataclasses.dataclass
class Simulation:
  """A compiled federation over the training split: ``run_round(state)``."""

  fed: simulate.Federation
  layout: layout.Layout
  table: str
  communication: dict
  placement: str
  run_round: object
  state_sharding: object  # where the server state lives (replicated over the mesh)

  def place_state(self, state):
    return jax.device_put(state, self.state_sharding)


def site_config(data_config, folder: str):
  """``data_config`` (its ``auto`` settings resolved) reading the folder ``folder``."""
  data_config = copy.deepcopy(data_config)
  with data_config.unlocked():
    data_config.dir = folder
  return data_config


def site_folders(exp: Experiment) -> list:
  """``(source, images, pool)`` of each ``config.fed.client_dirs`` folder (a site)."""
  return [site_data(exp, d) for d in exp.config.fed.client_dirs]


def site_data(exp: Experiment, folder: str, plan: dict | None = None) -> tuple:
  """``(source, images, pool)``: a site's training images, then its images without
  masks; volumes: its cases, prepared as the server's ``plan`` (default: this
  experiment's) says."""
  if exp.volumes is None:
    return pipeline.site_images(site_config(exp.config.data, folder))
  data = volume.site_config(exp.config.data, folder, plan or exp.volumes.plan)
  labeled, pool = volume.site_cases(data)
  return volume.Cases(labeled + pool, exp.volumes.patch), len(labeled), len(pool)


def training_source(exp: Experiment):
  """The images (volumes: cases) the clients and the server train on: the training
  split, then the dataset's images without masks (its ``unlabeled`` split), if any.
  With ``config.fed.client_dirs``: every site's training images, then every site's
  images without masks."""
  if exp.config.fed.client_dirs:
    held = site_folders(exp)
    if exp.volumes is not None:  # one stack of every site's cases
      trains = [c for src, n, _ in held for c in src.cases[:n]]
      pools = [c for src, n, _ in held for c in src.cases[n:]]
      return volume.Cases(trains + pools, exp.volumes.patch)
    trains = [pipeline.Subset(src, np.arange(n)) for src, n, _ in held]
    pools = [pipeline.Subset(src, n + np.arange(p)) for src, n, p in held if p]
    return pipeline.Concat(*trains, *pools)
  if exp.volumes is not None:
    cases = exp.volumes.cases("train") + exp.volumes.cases("unlabeled")
    return volume.Cases(cases, exp.volumes.patch)
  if "unlabeled" in exp.sources:
    return pipeline.Concat(exp.sources["train"], exp.sources["unlabeled"])
  return exp.sources["train"]


def labeled_meta(exp: Experiment) -> tuple[np.ndarray, np.ndarray, int]:
  """``(foreground fraction, site, unlabeled count)``: per training image (volume:
  case) with a mask, what the partition reads, and how many more have none."""
  if exp.config.fed.client_dirs:  # site k's images are client k's
    held = site_folders(exp)
    if exp.volumes is not None:
      foreground = np.concatenate([src.foreground()[:n] for src, n, _ in held])
    else:
      masks = [src.take(np.arange(n), ("mask",))["mask"] for src, n, _ in held]
      foreground = np.concatenate([(m > 0).mean(axis=(1, 2)) for m in masks])
    site_ids = np.repeat(np.arange(len(held)), [n for _, n, _ in held])
    return foreground, site_ids, sum(p for _, _, p in held)
  if exp.volumes is not None:
    fc, data = exp.config.fed, exp.config.data
    by_site = fc.partition == "site" or fc.attribute == "site" and fc.partition == "dirichlet"
    if by_site and not data.kwargs.get("sites"):  # (sites as folders or nodes need none)
      raise UserError(
        f"config.fed.partition={fc.partition!r} by site on volumes needs each case's site: "
        "config.data.kwargs.sites (a case,site CSV file; dataset msd)."
      )
    cases = exp.volumes.cases("train")
    sites = np.array([c.get("site", 0) for c in cases], np.int64)  # msd's `sites` setting
    foreground = volume.Cases(cases, exp.volumes.patch).foreground()
    return foreground, sites, len(exp.volumes.cases("unlabeled"))
  source = exp.sources["train"]
  meta = source.take(np.arange(len(source)), ("mask", "site"))
  foreground, sites = (meta["mask"] > 0).mean(axis=(1, 2)), meta["site"].astype(np.int64)
  return foreground, sites, len(exp.sources.get("unlabeled", ()))


def pool_groups(exp: Experiment, by: str):
  """Per image of the ``config.data.unlabeled_dir`` pool, its patient or source (``by``;
  None for ``iid``): the pool's records keep the patient in ``site``."""
  if exp.config.fed.client_dirs:  # each site's pool stays with the site
    held = site_folders(exp)
    return np.repeat(np.arange(len(held)), [p for _, _, p in held])
  if by == "iid":
    return None
  pool = exp.sources["unlabeled"]
  patients = pool.take(np.arange(len(pool)), ("site",))["site"].astype(np.int64)
  if by == "patient":
    return patients
  return unlabeled_folder.source_ids(exp.config.data.unlabeled_dir)[patients]


def client_layout(exp: Experiment, groups: int):
  """``(where, data, longest, foreground)``: who holds what, as padded index tables
  (from the masks and sites alone: no image is read). Images without masks join the
  clients' unlabeled images (:func:`jaxseg.fed.layout.with_unlabeled`)."""
  cfg, fc = exp.config, exp.config.fed
  foreground, sites, extra = labeled_meta(exp)
  where = layout.assign(fc, cfg.method.labeled_fraction, foreground, sites, cfg.seed)
  if extra:
    pool = pool_groups(exp, fc.pool_partition)
    held = bool(fc.client_dirs)
    where = layout.with_unlabeled(where, len(foreground), extra, cfg.seed + 1, pool, held)
    foreground = np.concatenate([foreground, np.zeros(extra)])
  rows = math.ceil(fc.num_clients / groups) * groups
  data, longest = layout.client_data(
    where,
    rows,
    fc.local_steps,
    fc.local_epochs,
    cfg.train.batch_size,
    cfg.method.unlabeled_batch_size,
  )
  return where, data, longest, foreground


def reader(exp: Experiment) -> backends.Reader:
  """How the round reads the training arrays: images as they are, volumes as patches."""
  if exp.volumes is None:
    return backends.Reader()
  patch_gather = patches.gather(exp.volumes.patch, exp.config.volume.oversample)
  return backends.Reader(inputs=lambda stacked: stacked, gather=patch_gather)


def probe_images(exp: Experiment, source, server: np.ndarray) -> np.ndarray:
  """The server's images its method's hook reads (FedWeP-Real's probe; volumes: a
  patch of each of its cases, drawn with the run's seed), or a placeholder."""
  hook = exp.method.broadcast
  count = 0 if hook is None else hook.server_images(hook.settings_of(exp.config.fed))
  if not count:
    return np.zeros((1,), np.float32)
  chosen = np.resize(server, count)
  if exp.volumes is None:
    return pipeline.model_inputs(source.take(chosen))["image"]
  stack = jax.device_put(source.take(chosen))  # (indexed by traced case numbers)
  key = jax.random.key(exp.config.seed)
  cases = np.arange(len(chosen))
  drawn = patches.sample(key, stack, len(chosen), exp.volumes.patch, 1.0, cases)
  return np.asarray(drawn["image"])


def simulation(exp: Experiment, compile_round=backends.compile_round) -> Simulation:
  """The simulated federation of ``exp``: who holds what, and its round compiled by
  ``compile_round`` (its arguments are what :mod:`jaxseg.run.seeds` stacks)."""
  fc, source = exp.config.fed, training_source(exp)
  devices = devices_of(fc)
  where, data, longest, foreground = client_layout(exp, len(devices) // fc.data_devices)
  probe = probe_images(exp, source, where.server)
  fed = federation(exp, longest)
  placement = fc.placement
  if exp.volumes is not None:  # patches are drawn inside the round, from the cases
    placement = "device"
  elif placement == "auto":
    nbytes = len(source) * sum(v.nbytes for v in pipeline.model_inputs(source[0]).values())
    fits = nbytes <= fc.device_budget_mib * 2**20 or jax.process_count() > 1
    placement = "device" if fits else "stream"
  client_map = client_map_of(fc, volumes=exp.volumes is not None)
  runs_on = backends.Placement(placement, tuple(devices), client_map, fc.data_devices, reader(exp))
  run_round, state_sharding = compile_round(fed, data, source, probe, exp.train_key, runs_on)
  server = (
    f"\nserver: {len(where.server)} labeled images, trained {fc.server_training.replace('_', ' ')}"
    if fc.scenario == "label_at_server"
    else ""
  )
  table = partition.table(where.clients, foreground, where.labeled) + server
  comm = cost.communication(exp.method, exp.abstract_state().nets, fed.recipe)
  placed = f"{placement}, {client_map}"
  return Simulation(fed, where, table, comm, placed, run_round, state_sharding)


def train(config, workdir: str, *, stop_after: int | None = None, make_simulation=None):
  """Federated training of ``config`` in ``workdir`` (resumes from its latest checkpoint);
  ``stop_after`` ends after that many rounds without saving, as a kill would.
  ``make_simulation(exp)``: the round (default :func:`simulation`; a real federation:
  :func:`jaxseg.flower.server.federation`)."""
  exp = skeleton.start_run(config, workdir, check, Experiment)
  sim = (make_simulation or simulation)(exp)
  announce(exp, sim, workdir)
  ckpts, state, record = resume(exp, workdir, sim.state_sharding)
  rounds = exp.config.fed.rounds
  with loop.outputs(workdir, ckpts, rounds, int(state.step), "rounds", "round") as outputs:
    steps = loop.Loop(
      total=rounds,
      eval_every=exp.config.train.eval_every,
      log_every=exp.config.train.log_every,
      step=sim.run_round,
      report=loop.reporter(outputs, round_line(sim.fed, exp, ckpts, outputs[1].write), postfix),
      validate=evaluators.validator(evaluators.evaluator(exp), record, ckpts, outputs, workdir),
      save=lambda state, r: ckpts.save(r, state, record, None),
      ckpts=ckpts,
      preemption=outputs[2],
    )
    return loop.run(steps, state, int(state.step), stop_after)


def postfix(values: dict) -> dict:
  return {"loss": f"{values['loss']:.4f}"}


def announce(exp: Experiment, sim: Simulation, workdir: str) -> None:
  """Writes ``clients.md`` and ``communication.json`` and says who holds what."""
  fc, comm = exp.config.fed, sim.communication
  skeleton.write_text(workdir, "clients.md", sim.table + "\n")
  skeleton.write_json(workdir, "communication.json", comm)
  skeleton.say(
    f"{fc.num_clients} clients ({fc.partition}, {fc.scenario}), data {sim.placement}:\n"
    f"{sim.table}\n"
    f"communication per client per round: {comm['down_bytes']:,} B down, "
    f"{comm['up_bytes']:,} B up ({comm['text']} of a two-model method)"
  )


def resume(exp: Experiment, workdir: str, state_sharding):
  """``(checkpoints, server state, record)``: the latest checkpoint's, or a fresh state,
  restored or initialised straight onto ``state_sharding`` (which may span processes)."""
  ckpts = Checkpoints(os.path.join(workdir, "checkpoints"))
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=state_sharding),
    exp.abstract_state(),
  )
  init = jax.jit(exp.init, out_shardings=state_sharding)
  state, record = skeleton.resume_or_init(
    ckpts, abstract, init, skeleton.describe_nets(exp.config.model.name)
  )
  return ckpts, state, {"best_dice": -1.0, "evals_since_best": 0, **record}


def round_line(fed, exp: Experiment, ckpts, say):
  """A federated run's ``train`` line (:func:`log_line`) with ``rounds_per_s``."""

  def line(pending, r, seconds):
    values = log_line(sharding.fetch(pending), r, fed, exp, ckpts, say)
    return {**values, "rounds_per_s": len(pending) / seconds}

  return line


def log_line(pending: list, r: int, fed, exp: Experiment, ckpts, say) -> dict:
  """The values of one ``train`` line from the rounds' metrics since the last (on the
  host): their means, the refused updates (each named by ``say``), ε with DP, the
  last round's integers (FedWeP's seeds)."""
  rejected = [m.pop("rejected") for m in pending]
  report_rejected(rejected, r, say)
  values = loop.mean_metrics(pending, r, ckpts)
  values["rejected"] = int(sum((np.asarray(x) >= 0).sum() for x in rejected))
  if fed.recipe.dp:
    values["epsilon"] = privacy.epsilon(fed.recipe, r, exp.config.fed.num_clients)
  for name, value in pending[-1].items():  # e.g. FedWeP's seeds
    if np.issubdtype(np.asarray(value).dtype, np.integer):  # the last round's
      values[name] = int(value)
  return values


def report_rejected(rejected: list, last_round: int, say) -> None:
  """One line per round whose updates were refused (a non-finite value), naming the
  clients; ``rejected``: per round of the log line, the clients' numbers (-1: accepted)."""
  first = last_round - len(rejected) + 1
  for r, ids in enumerate(rejected, start=first):
    bad = [int(c) for c in np.asarray(ids).ravel() if c >= 0]
    if bad:
      say(
        f"round {r}: rejected the update of client {', '.join(map(str, bad))} (non-finite "
        "values); aggregated the others."
      )
