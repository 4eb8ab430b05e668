"""``jaxseg sweep --vmap_seeds``: the seeds of one federated cell trained as one compiled
program — a leading seed axis over the round (whose clients are already stacked), so
3 seeds cost one compilation and one dispatch per round instead of three.

The seeds differ in everything a seed decides (the partition, the labeled images, the
initial networks, every key), and every run keeps its own workdir, written as ``jaxseg
train`` writes it (``config.json``, ``clients.md``, ``communication.json``,
``metrics.jsonl``, checkpoints picked by its own validation Dice), so ``jaxseg eval``,
resuming and the sweep's tables see ordinary runs. A seed's result equals its separate
run to float tolerance (vmapped convolutions round differently from one client's;
tests/test_fed.py, with SGD: Adam turns the rounding noise in gradients that are
mathematically zero — a convolution's bias before BatchNorm — into lr-sized steps, so
with Adam those parameters differ, the model's outputs not). The seeds of a group
resume together from one round; early stopping is refused (the seeds would stop at
different rounds).
"""

import contextlib
import dataclasses

import jax
import jax.numpy as jnp

from jaxseg.errors import UserError
from jaxseg.fed import backends
from jaxseg.run import evaluators, federated, loop, skeleton
from jaxseg.run.experiment import Experiment
from jaxseg.train import sharding


@dataclasses.dataclass
class Run:
  """One seed's run: its checkpoints, record, outputs (logger, progress bar,
  preemption), validation and ``train`` line (:mod:`jaxseg.run.loop`)."""

  ckpts: object
  record: dict
  outputs: tuple
  validate: object
  line: object


def _captured(*args):
  """A ``compile_round`` that compiles nothing: what one seed's round is built from."""
  return args, None


def check(configs) -> None:
  """The group's configs are federated and differ only in ``config.seed``."""

  def without_seed(config):
    values = config.to_dict()
    values.pop("seed")
    return values

  if any(skeleton.kind(c) != "federated" for c in configs):
    raise UserError("--vmap_seeds stacks the seeds of federated cells only.")
  if any(without_seed(c) != without_seed(configs[0]) for c in configs[1:]):
    raise UserError("--vmap_seeds: the cells of a group must differ only in config.seed.")
  if configs[0].train.early_stopping_patience:
    raise UserError(
      "--vmap_seeds trains the seeds together: set config.train.early_stopping_patience=0."
    )


def placed_seed(exp: Experiment, workdir: str) -> backends.Placed:
  """One seed's federation placed on the first device (its files written)."""
  sim = federated.simulation(exp, compile_round=_captured)
  federated.announce(exp, sim, workdir)
  fed, data, source, probe, key, where = sim.run_round
  # On CPU the clients run one after another inside each seed, as `loop` would.
  fed = dataclasses.replace(fed, sequential=where.client_map in ("scan", "loop"))
  one = backends.Placement(devices=tuple(where.devices)[:1], reader=where.reader)
  return backends.place(fed, data, source, probe, key, one)


def program(placed: list[backends.Placed]):
  """``run(states) -> (states, metrics)``: the round vmapped over the seeds' stacked
  states, tables, arrays, probes and keys (one compiled program)."""
  stack = lambda *x: jnp.stack(x)  # noqa: E731
  per_seed = [(p.data, p.server_arrays, p.client_arrays, p.probe, p.keys) for p in placed]
  stacked = jax.tree.map(stack, *per_seed)
  body = backends.round_program(placed[0].fed, placed[0].fetch)
  seeds_body = jax.vmap(
    lambda state, data, sa, ca, probe, keys: body(state, data, sa, ca, probe, None, keys)
  )
  compiled = jax.jit(seeds_body, donate_argnums=0)
  return lambda states: compiled(states, *stacked)


def train(configs: list, workdirs: list[str], *, stop_after: int | None = None) -> list:
  """Federated training of one cell's seeds (``configs``, one per ``workdirs``) as one
  compiled program; each seed's final server state."""
  check(configs)
  exps = [
    skeleton.start_run(c, w, federated.check, Experiment)
    for c, w in zip(configs, workdirs, strict=True)
  ]
  placed = [placed_seed(e, w) for e, w in zip(exps, workdirs, strict=True)]
  run_round = program(placed)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  resumed = [federated.resume(e, w, device) for e, w in zip(exps, workdirs, strict=True)]
  done = {int(state.step) for _, state, _ in resumed}
  if len(done) > 1:
    raise UserError(
      f"--vmap_seeds: the seeds' runs stopped at rounds {sorted(done)}; resume each alone "
      "(without --vmap_seeds)."
    )
  states = jax.tree.map(lambda *x: jnp.stack(x), *[state for _, state, _ in resumed])
  rounds, done = configs[0].fed.rounds, done.pop()
  with contextlib.ExitStack() as stack:
    runs = []
    for exp, (ckpts, _, record), w in zip(exps, resumed, workdirs, strict=True):
      outputs = stack.enter_context(loop.outputs(w, ckpts, rounds, done, "rounds", "round"))
      validate = evaluators.validator(evaluators.evaluator(exp), record, ckpts, outputs, w)
      line = federated.round_line(placed[0].fed, exp, ckpts, outputs[1].write)
      runs.append(Run(ckpts, record, outputs, validate, line))
    first, cfg = runs[0], configs[0].train
    steps = loop.Loop(
      total=rounds,
      eval_every=cfg.eval_every,
      log_every=cfg.log_every,
      step=run_round,
      report=lambda pending, r, seconds: _report(runs, sharding.fetch(pending), r, seconds),
      validate=lambda states, r: _validate(runs, states, r),
      save=lambda states, r: _save(runs, states, r),
      ckpts=first.ckpts,
      preemption=first.outputs[2],
    )
    states = loop.run(steps, states, done, stop_after)
  return [_seed(states, i) for i in range(len(configs))]


def _seed(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)


def _report(runs: list[Run], pending: list, r: int, seconds: float) -> None:
  """Each seed's ``train`` line, in its own workdir, from the stacked rounds' metrics."""
  for i, run in enumerate(runs):
    mine = [_seed(m, i) for m in pending]
    loop.reporter(run.outputs, run.line, federated.postfix)(mine, r, seconds)


def _validate(runs: list[Run], states, r: int) -> bool:
  """Each seed's validation and checkpoint (the seeds run on together: no early stop)."""
  for i, run in enumerate(runs):
    run.validate(_seed(states, i), r)
  return False


def _save(runs: list[Run], states, r: int) -> None:
  for i, run in enumerate(runs):
    run.ckpts.save(r, _seed(states, i), run.record, None)
