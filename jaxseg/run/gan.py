"""GAN training and synthesis (I/O): ``jaxseg train`` on a config with ``config.gan``,
and ``jaxseg synthesize``.

A GAN run trains on the training split of ``config.data`` (the same images a
segmentation run of that data trains on; its validation and test images are never
seen) and writes in its workdir ``config.json``, ``metrics.jsonl`` and
``tensorboard/`` (both players' losses, the discriminator's mean output on real and
generated examples), ``checkpoints/<step>/`` (the latest; orbax, with the data
iterator's state, so a resumed run continues exactly) and ``samples/<step>.png``:
one row per fixed training example — its image and mask, then a generated image and
mask (pix2pix: for that mask).

``synthesize(workdir, num, output)`` writes ``num`` pairs as an ``image_folder``
dataset: ``output/images/00000.png``, ``output/masks/00000.png`` (0/255 for two
classes) and ``output/synthesis.json`` (provenance and the mask encoding). pix2pix
generates images for the training split's masks after ``config.gan.source_augment``
(deformed masks; ``{}``: the masks as they are); DAGAN generates new pairs from the
training pairs. The folder appears only when complete.
"""

import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import tqdm
from PIL import Image

from jaxseg import gan, tables
from jaxseg.data import augment, pipeline
from jaxseg.errors import UserError
from jaxseg.gan import step as gan_step
from jaxseg.run import checkpoint, loop, pictures, skeleton
from jaxseg.run.checkpoint import Checkpoints
from jaxseg.train import optim

SHOWN = 4  # examples in the sample grid


def check_config(config: ml_collections.ConfigDict) -> None:
  tables.check(gan.GANS, config.gan.name, "GAN")
  augment.check(config.augment)
  augment.check(config.gan.source_augment)
  optim.check(config.optim)
  skeleton.check_positive(config.train, ("batch_size", "steps", "eval_every", "log_every"))


class GanExperiment:
  """Networks, data and compiled functions of a GAN config."""

  notes = ()  # nothing chosen from the data to report

  def __init__(self, config: ml_collections.ConfigDict):
    check_config(config)
    self.config = config
    self.source = pipeline.load_splits(config.data)["train"]
    self.image_shape = self.source[0]["image"].shape
    self.spec = gan.get_gan(config.gan.name, self.image_shape[-1], **config.gan.kwargs)
    tx = optim.make(config.optim, config.train.steps)
    init_key, self.train_key = jax.random.split(jax.random.key(config.seed))
    self.init_state = jax.jit(lambda: gan_step.init(self.spec, tx, init_key, self.image_shape))
    self.train_step = jax.jit(
      gan_step.make_train_step(self.spec, tx, config.augment), donate_argnums=0
    )
    self.generate = jax.jit(gan_step.make_generate(self.spec))
    self.deform = jax.jit(lambda key, batch: augment.apply(config.gan.source_augment, key, batch))

  def abstract_state(self):
    return jax.eval_shape(self.init_state)

  def sample_rows(self, state, batch: dict) -> list:
    """Grid rows: training image and mask, generated image and mask (fixed key)."""
    variables = gan_step.generator_variables(state)
    out = jax.device_get(self.generate(variables, batch, jax.random.key(self.config.seed)))
    rows = []
    for i in range(len(batch["image"])):
      real = [batch["image"][i], batch["labels"][i] > 0]
      rows.append([*real, out["image"][i], out["labels"][i] > 0])
    return rows


def train(config: ml_collections.ConfigDict, workdir: str, *, stop_after: int | None = None):
  """Trains the GAN of ``config`` in ``workdir``; resumes from its latest checkpoint.

  ``stop_after``: end after that many steps of this call without saving (as a kill).
  """
  exp = skeleton.start_run(config, workdir, check_config, GanExperiment)
  ckpts = Checkpoints(os.path.join(workdir, "checkpoints"), best=None)
  loader = iter(
    pipeline.train_loader(exp.source, config.train.batch_size, config.seed, config.data)
  )
  state, record = skeleton.resume_or_init(
    ckpts, exp.abstract_state(), exp.init_state, skeleton.describe_nets(config.gan.name)
  )
  if "loader" in record:
    loader.set_state(record["loader"].encode())
  shown = next(pipeline.eval_batches(exp.source, min(SHOWN, len(exp.source))))
  shown.pop("valid")
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  cfg = config.train
  with loop.outputs(workdir, ckpts, cfg.steps, int(state.step), "gan", "step") as outputs:
    save = lambda state, step: ckpts.save(step, state, {"loader": loader.get_state().decode()}, {})  # noqa: E731

    def validate(state, step: int) -> bool:  # a checkpoint and samples; never stops early
      save(state, step)
      path = os.path.join(workdir, "samples", f"{step}.png")
      if outputs[0].enabled:
        pictures.save_grid(path, exp.sample_rows(state, shown))
      outputs[1].write(f"step {step}: checkpoint and {path}")
      return False

    steps = loop.Loop(
      total=cfg.steps,
      eval_every=cfg.eval_every,
      log_every=cfg.log_every,
      step=lambda state: exp.train_step(state, next(loader), exp.train_key),
      report=loop.reporter(outputs, loop.step_line(ckpts, cfg.batch_size), _postfix),
      validate=validate,
      save=save,
      ckpts=ckpts,
      preemption=outputs[2],
    )
    return loop.run(steps, state, int(state.step), stop_after)


def _postfix(values: dict) -> dict:
  return {"g": f"{values['loss']:.3f}", "d": f"{values['d_loss']:.3f}"}


def synthesize(workdir: str, num: int, output: str) -> str:
  """Writes ``num`` synthetic pairs from the GAN run in ``workdir`` to ``output``."""
  config = skeleton.load_config(workdir)
  if skeleton.kind(config) != "gan":
    raise UserError(f"{workdir} is not a GAN run (its config.kind is {config.kind!r}).")
  if num <= 0:
    raise UserError(f"--num must be positive, found {num}.")
  if os.path.exists(output) and os.listdir(output):
    raise UserError(f"--output {output!r} exists and is not empty; choose a new folder.")
  with checkpoint.finished(workdir, "train the GAN first", best=None) as ckpts:
    exp = GanExperiment(config)
    step, state, _ = ckpts.restore_usable(exp.abstract_state())
  variables = gan_step.generator_variables(state)
  partial = output.rstrip("/") + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  for sub in ("images", "masks"):
    os.makedirs(os.path.join(partial, sub))
  classes = exp.spec.classes
  scale = 255 if classes == 2 else 1
  key = jax.random.fold_in(jax.random.key(config.seed), 11)
  sources = pipeline.Subset(exp.source, source_order(len(exp.source), num, key))
  batch_size = config.train.batch_size  # BatchNorm normalises by the generated batch
  batches = pipeline.eval_batches(sources, batch_size)
  total = -(-num // batch_size)
  for b, batch in enumerate(tqdm.tqdm(batches, total=total, desc="synthesize", unit="batch")):
    batch = exp.deform(jax.random.fold_in(key, 2 * b), {k: batch[k] for k in ("image", "labels")})
    out = jax.device_get(exp.generate(variables, batch, jax.random.fold_in(key, 2 * b + 1)))
    for j in range(min(batch_size, num - b * batch_size)):
      image = (out["image"][j] * 255).round().astype(np.uint8)
      name = f"{b * batch_size + j:05d}.png"
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
        os.path.join(partial, "images", name)
      )
      mask = (out["labels"][j] * scale).astype(np.uint8)
      Image.fromarray(mask).save(os.path.join(partial, "masks", name))
  provenance = {
    "gan": config.gan.name,
    "gan_workdir": os.path.abspath(workdir),
    "step": step,
    "num": num,
    "seed": config.seed,
    "source_augment": config.gan.source_augment.to_dict(),
    "mask_values": [[k * scale, k] for k in range(classes)],
  }
  with open(os.path.join(partial, "synthesis.json"), "w") as f:
    json.dump(provenance, f, indent=2)
  if os.path.exists(output):
    os.rmdir(output)  # empty (checked above)
  os.rename(partial, output)
  print(f"Wrote {num} {config.gan.name} pairs (step {step}) to {output}.")
  return output


def source_order(size: int, num: int, key: jax.Array) -> np.ndarray:
  """``num`` training indices: seeded permutations of the split, one after another."""
  epochs = -(-num // size)
  return np.concatenate(
    [np.asarray(jax.random.permutation(jax.random.fold_in(key, e), size)) for e in range(epochs)]
  )[:num]
