"""``jaxseg train`` on a config with ``config.fed``: the federated simulation.

What a run writes besides the usual files (:mod:`jaxseg.run.train`): ``clients.md``
(per-client sizes, labeled counts and foreground fractions of the partition) and
``communication.json`` (bytes per client per round). ``metrics.jsonl`` has one
``train`` line per round (losses; for FedWeP the chosen seeds and their similarity).
Checkpoints hold the server state (global networks, server optimizer, round); the
clients' data and batches are pure functions of the config and the round, so a
resumed run continues exactly. Only process 0 writes files.
"""

import dataclasses
import math
import os
import time

import jax
import numpy as np

from jaxseg.data import pipeline
from jaxseg.fed import backends, checks, cost, layout, partition, simulate
from jaxseg.run import evaluation, skeleton
from jaxseg.run.checkpoint import Checkpoints
from jaxseg.run.experiment import Experiment, check_config
from jaxseg.train import optim


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
  for the U-Net step, see the README), elsewhere none (faster compiles)."""
  if setting:
    return setting
  return max(steps, 1) if jax.default_backend() == "cpu" else 1


def federation(exp: Experiment, local_steps: int) -> simulate.Federation:
  """The static parts of the simulation (``local_steps``: the longest client's)."""
  cfg, fc = exp.config, exp.config.fed
  abstract = jax.eval_shape(lambda: exp.method.init(exp.ctx, jax.random.key(0)))
  search = dict(fc.seed_search) if exp.method.sends_seeds else None
  return simulate.Federation(
    ctx=exp.ctx,
    method=exp.method,
    server_tx=optim.make(fc.server_optim, fc.rounds),
    scenario=fc.scenario,
    local_steps=local_steps,
    server_steps=fc.server_steps,
    batch_size=cfg.train.batch_size,
    unlabeled_batch_size=cfg.method.unlabeled_batch_size,
    trainable=tuple(n for n, v in abstract.nets.items() if v.opt_state is not None),
    search=search,
    perturb=dict(exp.method.perturb) if exp.method.sends_seeds else None,
    unroll=unroll_of(fc.unroll, max(local_steps, fc.server_steps)),
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


def training_source(exp: Experiment):
  """The images the clients and the server train on: the training split, then the
  dataset's images without masks (its ``unlabeled`` split), if any."""
  if "unlabeled" in exp.sources:
    return pipeline.Concat(exp.sources["train"], exp.sources["unlabeled"])
  return exp.sources["train"]


def client_layout(exp: Experiment, groups: int):
  """``(where, data, longest, foreground)``: who holds what, as padded index tables
  (from the masks and sites alone: no image is read). Images without masks join the
  clients' unlabeled images (:func:`jaxseg.fed.layout.with_unlabeled`)."""
  cfg, fc, source = exp.config, exp.config.fed, exp.sources["train"]
  meta = source.take(np.arange(len(source)), ("mask", "site"))
  foreground, sites = (meta["mask"] > 0).mean(axis=(1, 2)), meta["site"].astype(np.int64)
  where = layout.assign(fc, cfg.method.labeled_fraction, foreground, sites, cfg.seed)
  if "unlabeled" in exp.sources:
    extra = len(exp.sources["unlabeled"])
    where = layout.with_unlabeled(where, len(source), extra, cfg.seed + 1)
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


def simulation(exp: Experiment) -> Simulation:
  fc, source = exp.config.fed, training_source(exp)
  devices = devices_of(fc)
  where, data, longest, foreground = client_layout(exp, len(devices) // fc.data_devices)
  probe = np.zeros((1,), np.float32)
  if exp.method.sends_seeds and fc.seed_search.probe == "real":
    probe = pipeline.model_inputs(source.take(np.resize(where.server, fc.seed_search.probe_size)))
    probe = probe["image"]
  fed = federation(exp, longest)
  placement = fc.placement
  if placement == "auto":
    nbytes = len(source) * sum(v.nbytes for v in pipeline.model_inputs(source[0]).values())
    fits = nbytes <= fc.device_budget_mib * 2**20 or jax.process_count() > 1
    placement = "device" if fits else "stream"
  client_map = fc.client_map
  if client_map == "auto":  # measured: see `jaxseg bench --clients` in the README
    one_device = fc.data_devices == 1 and jax.process_count() == 1
    client_map = "loop" if jax.default_backend() == "cpu" and one_device else "vmap"
  run_round, state_sharding = backends.compile_round(
    fed, data, source, probe, exp.train_key, placement, devices, client_map, fc.data_devices
  )
  server = (
    f"\nserver: {len(where.server)} labeled images" if fc.scenario == "label_at_server" else ""
  )
  table = partition.table(where.clients, foreground, where.labeled) + server
  comm = cost.communication(exp.method, exp.abstract_state().nets)
  placed = f"{placement}, {client_map}"
  return Simulation(fed, where, table, comm, placed, run_round, state_sharding)


def train(config, workdir: str, *, stop_after: int | None = None):
  """Federated training of ``config`` in ``workdir`` (resumes from its latest checkpoint);
  ``stop_after`` ends after that many rounds without saving, as a kill would."""
  exp = skeleton.start_run(config, workdir, check, Experiment)
  config = exp.config
  sim = simulation(exp)
  fc, comm = config.fed, sim.communication
  skeleton.write_text(workdir, "clients.md", sim.table + "\n")
  skeleton.write_json(workdir, "communication.json", comm)
  skeleton.say(
    f"{fc.num_clients} clients ({fc.partition}, {fc.scenario}), data {sim.placement}:\n"
    f"{sim.table}\n"
    f"communication per client per round: {comm['down_bytes']:,} B down, "
    f"{comm['up_bytes']:,} B up ({comm['text']} of a two-model method)"
  )
  ckpts = Checkpoints(os.path.join(workdir, "checkpoints"))
  # Restored or initialised straight onto the mesh (which may span processes).
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sim.state_sharding),
    exp.abstract_state(),
  )
  init = jax.jit(exp.init, out_shardings=sim.state_sharding)
  state, record = skeleton.resume_or_init(
    ckpts, abstract, init, skeleton.describe_nets(config.model.name)
  )
  record = {"best_dice": -1.0, "evals_since_best": 0, **record}
  run_outputs = skeleton.outputs(workdir, ckpts, fc.rounds, int(state.step), "rounds", "round")
  with run_outputs as (logger, bar):
    return _rounds(
      evaluation.evaluator(exp), sim, state, record, ckpts, logger, bar, workdir, stop_after
    )


def _rounds(evaluator, sim, state, record, ckpts, logger, bar, workdir, stop_after):
  exp = evaluator.exp
  rounds = exp.config.fed.rounds
  for r in skeleton.remaining(int(state.step), rounds, stop_after):
    began = time.time()
    state, metrics = sim.run_round(state)
    values = skeleton.mean_metrics([metrics], r, ckpts)
    for name in ("seed_a", "seed_b"):
      if name in values:
        values[name] = int(values[name])
    values["rounds_per_s"] = 1.0 / (time.time() - began)
    logger.write(r, "train", values)
    bar.set_postfix(loss=f"{values['loss']:.4f}")
    bar.update(r - bar.n)
    if r % exp.config.train.eval_every == 0 or r == rounds:
      args = (evaluator, state, r, record, {}, ckpts, logger, workdir, bar.write)
      if evaluation.validate_and_save(*args):
        break
  return state
