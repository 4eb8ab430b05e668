"""The one training loop every run kind parameterises — segmentation steps,
federated rounds (one seed's or a stack of seeds'), GAN steps — and what it holds
while it goes: the logger (``metrics.jsonl``, TensorBoard, ``learning_curves.png``),
the progress bar, the preemption watch and the profiler.

A run says what one step is, what its log line holds, what a validation does and
how a preemption checkpoint is written (:class:`Loop`); :func:`run` does the rest
the same way for every kind: log every ``log_every`` steps (metrics reach the host
only then), validate every ``eval_every`` and at the last step (an early stop ends
the loop), checkpoint and stop on SIGTERM, and throughput that leaves validation
time out.
"""

import contextlib
import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Callable

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from tensorboardX import SummaryWriter

from jaxseg.errors import Preempted, UserError
from jaxseg.run import pictures
from jaxseg.run.checkpoint import Checkpoints
from jaxseg.run.skeleton import primary, say
from jaxseg.train import sharding


@dataclasses.dataclass(frozen=True)
class Loop:
  """What one kind of run does in :func:`run`'s loop.

  ``step(state) -> (state, metrics)`` (device values); ``report(pending, step,
  seconds)`` writes the ``train`` line(s) of the steps' ``pending`` metrics, which
  took ``seconds`` of training; ``validate(state, step) -> bool`` scores and
  checkpoints (True: stop early); ``save(state, step)`` writes the checkpoint a
  preemption stops at when the step was not a validation's (``ckpts``: whose write
  the stop waits for and names; ``preemption``: the watch of :func:`outputs`)."""

  total: int
  eval_every: int
  log_every: int
  step: Callable
  report: Callable
  validate: Callable
  save: Callable
  ckpts: Checkpoints
  preemption: "Preemption"
  profile: "Profile | None" = None


def run(loop: Loop, state, done: int, stop_after: int | None):
  """Runs ``loop`` from ``state``, ``done`` steps in, to ``loop.total``, or for
  ``stop_after`` steps (tests stop a run there, as a kill would); the last state."""
  pending, since = [], time.time()
  for step in remaining(done, loop.total, stop_after):
    if loop.profile:
      loop.profile.before(step)
    state, metrics = loop.step(state)
    if loop.profile:
      loop.profile.after(step, metrics)
    pending.append(metrics)
    validate = step % loop.eval_every == 0 or step == loop.total
    if step % loop.log_every == 0 or validate:
      loop.report(pending, step, time.time() - since)
      pending, since = [], time.time()
    if validate:
      if loop.validate(state, step):
        break
      since = time.time()  # validation time is not training throughput
    if loop.preemption.requested(step):
      save = lambda: loop.save(state, step)  # noqa: B023, E731
      loop.preemption.stop(loop.ckpts, step, None if validate else save)
  return state


def reporter(outputs, line: Callable, postfix: Callable) -> Callable:
  """A :attr:`Loop.report` for one run: its ``train`` line ``line(pending, step,
  seconds) -> values`` in the logger, ``postfix(values)`` on the progress bar."""
  logger, bar, _ = outputs

  def report(pending, step, seconds):
    values = line(pending, step, seconds)
    logger.write(step, "train", values)
    bar.set_postfix(**postfix(values))
    bar.update(step - bar.n)

  return report


def step_line(ckpts: Checkpoints, batch_size: int) -> Callable:
  """A step run's ``train`` line: the step metrics' means (:func:`mean_metrics`) and
  ``images_per_s``."""

  def line(pending, step, seconds):
    values = mean_metrics(pending, step, ckpts)
    return {**values, "images_per_s": len(pending) * batch_size / seconds}

  return line


def progress(total: int, initial: int, desc: str, unit: str) -> tqdm.tqdm:
  return tqdm.tqdm(
    total=total, initial=initial, desc=desc, unit=unit, mininterval=1.0, disable=not primary()
  )


@contextlib.contextmanager
def outputs(workdir: str, ckpts: Checkpoints, total: int, done: int, desc: str, unit: str):
  """A run's logger, progress bar and :class:`Preemption` watch; closes them and
  ``ckpts`` however the run ends."""
  logger, bar = Logger(workdir), progress(total, done, desc, unit)
  try:
    with Preemption() as preemption:
      yield logger, bar, preemption
  finally:
    bar.close()
    logger.close()
    ckpts.close()


class Logger:
  """Appends to ``metrics.jsonl``, writes TensorBoard events and draws
  ``learning_curves.png`` (process 0 only). The curves are drawn when the run ends
  and, while it goes, after a validation at most every :attr:`CURVES_EVERY_S`
  seconds: a matplotlib figure costs the training loop ~0.3 s of host time (measured
  on the 2-core CPU machine), which drawing at every validation spent needlessly."""

  CURVES_EVERY_S = 60.0

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.curves = os.path.join(workdir, "learning_curves.png")
    self.enabled = primary()
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard")) if self.enabled else None
    self.drawn, self.stale = time.monotonic(), False

  def write(self, step: int, split: str, values: dict) -> None:
    if not self.enabled:
      return
    try:
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
    except OSError as e:
      raise UserError(f"cannot write {self.path}: {e.strerror or e}.") from e
    for name, value in values.items():
      self.tb.add_scalar(f"{split}/{name}", value, step)
    self.tb.flush()
    if split == "validation":
      self.stale = True
      if time.monotonic() - self.drawn >= self.CURVES_EVERY_S:
        self.draw()

  def draw(self) -> None:
    pictures.save_learning_curves(self.path, self.curves)
    self.drawn, self.stale = time.monotonic(), False

  def close(self) -> None:
    if self.enabled:
      self.tb.close()
      if self.stale:
        self.draw()


def remaining(done: int, total: int, stop_after: int | None) -> range:
  """The steps (or rounds) a run resumed after ``done`` still takes, up to ``total``;
  at most ``stop_after`` of them (tests stop a run there, as a kill would)."""
  end = total if stop_after is None else min(total, done + stop_after)
  return range(done + 1, end + 1)


class Preemption:
  """SIGTERM or SIGINT during a run's loop (``with Preemption() as preemption``): the
  loop finishes the step (round) in flight, then :meth:`stop` checkpoints it, waits
  for the write and raises :class:`~jaxseg.errors.Preempted`; a second signal acts as
  usual. With several processes (``jax.distributed``) JAX's preemption service takes
  the signal and every process stops at the same step
  (``multihost_utils.reached_preemption_sync_point``)."""

  def __enter__(self):
    self.received, self.previous = None, {}
    alone = jax.process_count() == 1
    if alone and threading.current_thread() is threading.main_thread():
      for s in (signal.SIGTERM, signal.SIGINT):
        self.previous[s] = signal.signal(s, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name
    self.__exit__()

  def __exit__(self, *exc):
    for s, handler in self.previous.items():
      signal.signal(s, handler)
    self.previous = {}

  def requested(self, step: int) -> bool:
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received is not None

  def stop(self, ckpts: Checkpoints, step: int, save: Callable | None) -> None:
    """Checkpoints ``step`` (``save()``; None: it was just saved) and raises."""
    if save is not None:
      save()
    ckpts.wait()
    path = os.path.join(ckpts.directory, str(step))
    raise Preempted(
      f"stopped by {self.received or 'preemption'} after step {step}: checkpoint {path} "
      "written; the same command resumes from it."
    )


class Profile:
  """``config.train.profile_steps = (first, last)``: a JAX profiler trace of those
  steps (inclusive) in ``workdir/profile`` (process 0), viewable in TensorBoard's
  profile plugin or Perfetto; ``()`` off."""

  def __init__(self, workdir: str, steps):
    self.directory = os.path.join(workdir, "profile")
    self.first, self.last = tuple(steps) if steps and primary() else (0, -1)
    self.tracing = False

  def before(self, step: int) -> None:
    if not self.tracing and self.first <= step <= self.last:
      jax.profiler.start_trace(self.directory)
      self.tracing = True

  def after(self, step: int, step_metrics) -> None:
    if self.tracing and step == self.last:
      jax.block_until_ready(step_metrics)
      jax.profiler.stop_trace()
      self.tracing = False
      say(f"Profiler trace of steps {self.first}..{self.last} in {self.directory}.")


def mean_metrics(pending: list, step: int, ckpts: Checkpoints) -> dict:
  """Means of the pending step metrics; raises on the first non-finite loss."""
  pending = sharding.fetch(pending)
  losses_ = np.asarray([m["loss"] for m in pending])
  bad = np.flatnonzero(~np.isfinite(losses_))
  if bad.size:
    first = step - len(pending) + 1 + int(bad[0])
    latest = ckpts.latest_step()
    kept = "none was written yet" if latest is None else f"step {latest} is intact"
    raise UserError(
      f"Training diverged: loss is {losses_[bad[0]]} at step {first} (last good checkpoint: "
      f"{kept}); lower config.optim.lr or set config.optim.grad_clip."
    )
  return {k: float(np.mean([m[k] for m in pending])) for k in pending[0]}
