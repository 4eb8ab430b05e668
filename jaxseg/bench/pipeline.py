"""``jaxseg bench --pipeline``: how fast training batches reach the device.

In one run, side by side, for the config's dataset at ``--input BxCxHxW`` (batch
``B``, ``H x W`` images):

* ``path: host`` at 0, 1, 2, ... grain workers and ``path: device`` — augmented
  batches ready on the device per second (``block_until_ready``, no training step),
  each with and without the U-Net weight map;
* ``path: train_loop`` — ``loop_images_per_s`` of the real ``jaxseg train`` loop
  (logging on, validation only at the end, outside the timed steps: the mean of the
  loop's own ``images_per_s`` lines after the first, which holds the compilation),
  and ``step_images_per_s`` of the bare compiled step on one fixed batch.
"""

import copy
import json
import os
import statistics
import tempfile
import time

import jax

from jaxseg.errors import UserError
from jaxseg.run import feed, train
from jaxseg.run.experiment import Experiment
from jaxseg.train import step as step_lib

MIN_IMAGES = 2048  # timed per record, after one warm-up batch
LOOP_LOGS = 6  # log lines of the timed train loop (the first is not counted)


def worker_counts() -> list[int]:
  """0, 1, 2, then powers of two up to the CPU count (at most 8)."""
  cpus = os.cpu_count() or 1
  return [0, 1, 2] + [w for w in (4, 8) if w <= cpus]


def sized(config, shape) -> object:
  """``config`` with the batch and image size of ``shape`` (B, C, H, W)."""
  b, c, h, w = shape
  if h != w:
    raise UserError(f"--input {b}x{c}x{h}x{w}: bench --pipeline takes square images (H == W).")
  config = copy.deepcopy(config)
  with config.unlocked():
    config.train.batch_size = b
    config.data.kwargs.image_size = h
    config.model.kwargs.in_channels = c
  return config


def _variant(config, placement: str, workers: int, weight_map: bool):
  config = copy.deepcopy(config)
  config.data.update(placement=placement, workers=str(workers))
  config.data.weight_map.w0 = 10.0 if weight_map else 0.0
  return config


def feed_rate(config) -> float:
  """Augmented batches on the device per second, in images/s."""
  exp = Experiment(config, splits=("train",))
  mesh = train.make_mesh(config)
  data = feed.make(exp, mesh)

  def augmented(inputs, step, key):
    batch = data.batch(inputs, step)["labeled"]
    return step_lib.augmented(exp.ctx, jax.random.fold_in(key, step), batch)[0]

  fn = jax.jit(augmented, in_shardings=(data.input_sharding, None, None))
  batches = -(-MIN_IMAGES // config.train.batch_size)
  try:
    jax.block_until_ready(fn(data.next(), 0, exp.train_key))  # compile, start workers
    start = time.perf_counter()
    for step in range(1, batches + 1):
      out = fn(data.next(), step, exp.train_key)
    jax.block_until_ready(out)
    return batches * config.train.batch_size / (time.perf_counter() - start)
  finally:
    data.close()


def step_rate(config) -> float:
  """The bare compiled training step on one fixed batch, in images/s."""
  exp = Experiment(config, splits=("train",))
  mesh = train.make_mesh(config)
  data = feed.make(exp, mesh)
  batch = jax.jit(data.batch)(data.next(), 0)
  data.close()
  fixed = feed.Fixed(mesh)
  init, step = train.compile_step(exp, mesh, fixed)
  state = init()
  state, out = step(state, batch, exp.train_key)  # compile
  jax.block_until_ready(out)
  steps = max(3, -(-MIN_IMAGES // config.train.batch_size) // 4)
  start = time.perf_counter()
  for _ in range(steps):
    state, out = step(state, batch, exp.train_key)
  jax.block_until_ready(out)
  return steps * config.train.batch_size / (time.perf_counter() - start)


def loop_rate(config) -> float:
  """The ``jaxseg train`` loop's own throughput (mean of its log lines after the first)."""
  config = copy.deepcopy(config)
  log_every = max(2, -(-MIN_IMAGES // config.train.batch_size) // (LOOP_LOGS - 1))
  steps = log_every * LOOP_LOGS
  config.train.update(steps=steps, log_every=log_every, eval_every=steps, epochs=0)
  with tempfile.TemporaryDirectory() as workdir:
    train.train(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f]
  rates = [r["images_per_s"] for r in rows if r["split"] == "train"][1:]
  return statistics.mean(rates)


def run(config, shape) -> list[dict]:
  """The records (see the module docstring); prints their table."""
  config = sized(config, shape)
  feed.check(config.data)
  records = []
  for weight_map in (False, True):
    for placement, workers in [("host", w) for w in worker_counts()] + [("device", 0)]:
      rate = feed_rate(_variant(config, placement, workers, weight_map))
      records.append(
        {"path": placement, "workers": workers, "weight_map": weight_map, "images_per_s": rate}
      )
      print(f"{placement}, {workers} workers, weight map {weight_map}: {rate:,.0f} images/s")
  loop = {
    "path": "train_loop",
    "workers": feed.workers(config.data.workers),
    "weight_map": config.data.weight_map.w0 > 0,
    "loop_images_per_s": loop_rate(config),
    "step_images_per_s": step_rate(config),
  }
  records.append(loop)
  print(markdown(records, shape))
  return records


def markdown(records: list[dict], shape) -> str:
  device = jax.devices()[0].device_kind
  lines = [
    f"Input pipeline, batch x channels x height x width {'x'.join(map(str, shape))}, "
    f"{device}, {os.cpu_count()} CPUs:",
    "",
    "| path | workers | weight map | images/s | loop images/s | step images/s |",
    "|---|---|---|---|---|---|",
  ]
  for r in records:
    cells = [r["path"], str(r["workers"]), "yes" if r["weight_map"] else "no"]
    cells += [f"{r[k]:,.0f}" if k in r else "" for k in ("images_per_s", "loop_images_per_s")]
    cells.append(f"{r['step_images_per_s']:,.0f}" if "step_images_per_s" in r else "")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)
