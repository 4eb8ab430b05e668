"""``jaxseg train`` on a segmentation config (``config.kind = "segmentation"``): any
method, supervised or semi-supervised, on images or volumes — one loop over a *feed*
(:mod:`jaxseg.run.feed`: where batches come from) and an *evaluator*
(:func:`jaxseg.run.evaluators.evaluator`: validation scores and the checkpoint they pick).

``train(config, workdir)`` trains ``config`` in ``workdir`` and resumes automatically
from the latest checkpoint there. What a run writes in ``workdir``:

* ``config.json`` — the resolved config;
* ``checkpoints/<step>/`` — orbax checkpoints, the latest and the best by Dice;
* ``metrics.jsonl`` — one JSON line per log/validation event; ``tensorboard/`` events;
* ``learning_curves.png`` (when: :class:`jaxseg.run.loop.Logger`); images:
  ``validation_overlays.png`` (image, truth green, prediction red); volumes:
  ``plan.json`` (how the cases were prepared, which ``jaxseg predict`` applies to new
  files).

The training step is jitted over a ``data`` mesh of ``config.mesh.devices`` devices
(:mod:`jaxseg.train.sharding`): batches split over the devices, the state replicated
or, with ``config.mesh.fsdp``, split.
"""

import contextlib
import json
import os

import jax
import ml_collections

from jaxseg.run import evaluators, feed, loop, skeleton
from jaxseg.run.checkpoint import Checkpoints
from jaxseg.run.experiment import Experiment, check_config
from jaxseg.train import sharding

KEYS = ("batch_size", "steps", "eval_every", "log_every")


def check(config) -> None:
  check_config(config)
  skeleton.check_positive(config.train, KEYS)


def compile_step(exp: Experiment, mesh, feed):
  """``(init_state, train_step)`` jitted over the data mesh; ``train_step(state, inputs,
  key)`` takes what ``feed.next()`` gives (a batch, or the resident split)."""
  cfg, method = exp.config, exp.method
  shardings = sharding.state_shardings(exp.abstract_state(), mesh, cfg.mesh.fsdp)
  replicated = sharding.replicated(mesh)

  def step(state, inputs, key):
    batch = feed.batch(inputs, state.step)
    return method.step(exp.ctx, state, batch["labeled"], batch.get("unlabeled"), key)

  train_step = jax.jit(
    step,
    in_shardings=(shardings, feed.input_sharding, replicated),
    out_shardings=(shardings, replicated),
    donate_argnums=0,
  )
  return jax.jit(exp.init, out_shardings=shardings), train_step


def make_mesh(config):
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch(config.train.batch_size, mesh)
  if "method" in config and config.method.name != "supervised":  # an unlabeled stream
    sharding.check_batch(
      config.method.unlabeled_batch_size, mesh, "config.method.unlabeled_batch_size"
    )
  return mesh


def train(config: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None):
  """Trains ``config`` in ``workdir``; resumes from its latest checkpoint if any.

  Args:
    config: an experiment config (see ``configs/``).
    workdir: output folder (created).
    stop_after: end after this many steps of this invocation *without saving*, as a
      kill would (tests use it to prove that resuming is exact).

  Returns:
    The final training state.
  """
  exp = skeleton.start_run(config, workdir, check, Experiment)
  config = exp.config  # every `auto` and train.epochs resolved
  if exp.volumes is not None:
    skeleton.write_json(workdir, "plan.json", exp.volumes.plan)
  mesh = make_mesh(config)
  data = feed.make(exp, mesh)
  evaluator = evaluators.evaluator(exp, data)
  skeleton.say(f"Training data on the {data.where} ({data.why}).")
  init_state, train_step = compile_step(exp, mesh, data)
  ckpts = Checkpoints(os.path.join(workdir, "checkpoints"))
  state, record = skeleton.resume_or_init(
    ckpts, jax.eval_shape(init_state), init_state, skeleton.describe_nets(config.model.name)
  )
  data.restore(json.loads(record.pop("loader", "{}")))
  record = {"best_dice": -1.0, "evals_since_best": 0, **record}
  cfg = config.train
  with loop.outputs(workdir, ckpts, cfg.steps, int(state.step), "train", "step") as outputs:
    with contextlib.closing(data):
      extra = lambda: {"loader": json.dumps(data.state())}  # noqa: E731
      steps = loop.Loop(
        total=cfg.steps,
        eval_every=cfg.eval_every,
        log_every=cfg.log_every,
        step=lambda state: train_step(state, data.next(), exp.train_key),
        report=loop.reporter(outputs, loop.step_line(ckpts, cfg.batch_size), _postfix),
        validate=evaluators.validator(evaluator, record, ckpts, outputs, workdir, extra),
        save=lambda state, step: ckpts.save(step, state, {**record, **extra()}, None),
        ckpts=ckpts,
        preemption=outputs[2],
        profile=loop.Profile(workdir, cfg.profile_steps),
      )
      return loop.run(steps, state, int(state.step), stop_after)


def _postfix(values: dict) -> dict:
  return {"loss": f"{values['loss']:.4f}", "img_s": f"{values['images_per_s']:.1f}"}
