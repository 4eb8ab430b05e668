"""GANs: pix2pix and DAGAN networks, training, resume, synthesis, and the study sweep."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import augstudy_covid_ct, dagan_covid_ct, pix2pix_covid_ct
from jaxseg import data as datasets
from jaxseg import main
from jaxseg.data import pipeline
from jaxseg.errors import UserError
from jaxseg.gan import get_gan
from jaxseg.gan import step as gan_step
from jaxseg.gan.networks import PatchDiscriminator
from jaxseg.run import skeleton
from jaxseg.run.experiment import Experiment
from jaxseg.train.state import count_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COVID = os.path.join(REPO, "..", "shared", "data", "covid_ct")


def _abstract(name, channels, size, **kwargs):
  spec = get_gan(name, channels, **kwargs)
  init = lambda: gan_step.init(spec, optax.adam(1e-3), jax.random.key(0), (size, size, channels))  # noqa: E731
  return spec, jax.eval_shape(init)


def test_reference_parameter_counts():
  # pix2pix's unet_256 generator and n_layers=3 PatchGAN for one-channel images and
  # masks: the counts of an independent PyTorch build of the same recipe.
  _, state = _abstract("pix2pix", 1, 256)
  assert count_params(state.nets["generator"].params) == 54_407_809
  assert count_params(state.nets["discriminator"].params) == 2_764_609
  # DAGAN: pair in (+1,024), pair out (+2,049), z -> Dense(512) (+51,712) concatenated
  # to the bottleneck (innermost up-convolution 1,024 -> 512: +4,194,304); the
  # discriminator sees two pairs (4 channels) and has biases instead of BatchNorm.
  _, state = _abstract("dagan", 1, 256)
  assert (
    count_params(state.nets["generator"].params) == 54_407_809 + 1024 + 2049 + 51_712 + 4_194_304
  )
  assert (
    count_params(state.nets["discriminator"].params) == 4160 + 131_200 + 524_544 + 2_097_664 + 8193
  )


def test_patchgan_receptive_field_is_70_pixels():
  disc = PatchDiscriminator(widths=(2, 2, 2, 2))  # depth and strides of the default
  x = jax.random.normal(jax.random.key(0), (1, 96, 96, 1))
  variables = disc.init(jax.random.key(1), x)
  out = disc.apply(variables, x)
  assert out.shape == (1, 10, 10, 1)
  grad = jax.grad(lambda x: disc.apply(variables, x)[0, 5, 5, 0])(x)
  rows, cols = np.nonzero(np.asarray(grad[0, ..., 0]))
  assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


def test_spectral_norm_tracks_the_largest_singular_value():
  disc = PatchDiscriminator(widths=(4, 8), norm="spectral")
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = disc.init(jax.random.key(1), x)
  iterate = jax.jit(lambda v: {**v, **disc.apply(v, x, train=True, mutable=["batch_stats"])[1]})
  for _ in range(20):  # power iterations
    variables = iterate(variables)
  for i in range(3):
    kernel = np.asarray(variables["params"][f"conv{i}"]["kernel"])
    sigma = variables["batch_stats"][f"conv{i}_sn"][f"conv{i}/kernel/sigma"]
    expected = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)[0]
    np.testing.assert_allclose(float(sigma), expected, rtol=1e-3)


def _generation_checks(spec, state, batch):
  """Outputs in range and shape; same key -> same pair, other key -> other pair."""
  variables = gan_step.generator_variables(state)
  generate = jax.jit(gan_step.make_generate(spec))
  a, b, c = (generate(variables, batch, jax.random.key(k)) for k in (3, 3, 4))
  assert a["image"].shape == batch["image"].shape and a["labels"].shape == batch["labels"].shape
  assert 0 <= float(a["image"].min()) and float(a["image"].max()) <= 1
  assert set(np.unique(a["labels"])) <= {0, 1}
  np.testing.assert_array_equal(a["image"], b["image"])
  assert not np.array_equal(a["image"], c["image"])  # dropout (and z) is the noise
  return a


def _batch(size=16):
  labels = (jax.random.uniform(jax.random.key(1), (4, size, size)) > 0.6).astype(jnp.int32)
  return {"image": 0.2 + 0.6 * labels[..., None].astype(jnp.float32), "labels": labels}


def test_pix2pix_learns_to_translate_masks():
  """The generator's L1 error to the real images falls on a fixed batch; generated
  images keep their condition's mask."""
  spec = get_gan("pix2pix", 1, generator=dict(widths=(8, 16, 32)), discriminator=dict(widths=(8,)))
  tx = optax.adam(2e-3, b1=0.5)
  state = gan_step.init(spec, tx, jax.random.key(0), (16, 16, 1))
  batch = _batch()
  step = jax.jit(gan_step.make_train_step(spec, tx, {}))
  l1 = []
  for _ in range(40):
    state, metrics = step(state, batch, jax.random.key(2))
    l1.append(float(metrics["l1"]))
  assert all(np.isfinite(l1)) and np.mean(l1[-5:]) < 0.75 * l1[0], l1
  generated = _generation_checks(spec, state, batch)
  np.testing.assert_array_equal(generated["labels"], batch["labels"])
  with pytest.raises(ValueError, match=r"image size \(12, 12\) must divide by 8"):
    spec.generator.init(jax.random.key(0), jnp.zeros((1, 12, 12, 1)))


def test_dagan_generates_keyed_pairs():
  spec = get_gan("dagan", 1, generator=dict(widths=(4, 8)), discriminator=dict(widths=(4,)))
  state = gan_step.init(spec, optax.adam(1e-3), jax.random.key(0), (16, 16, 1))
  _generation_checks(spec, state, _batch())


def _smoke(module, arg="smoke"):
  config = module.get_config(arg)
  config.data.dir = COVID
  return config


def test_gan_trains_resumes_exactly_and_synthesizes_a_dataset(tmp_path):
  config = _smoke(pix2pix_covid_ct)
  full = main.train(config, str(tmp_path / "full"))  # `jaxseg train` dispatches on config.gan
  main.train(config, str(tmp_path / "cut"), stop_after=3)  # killed after step 3 (saved: 2)
  resumed = main.train(config, str(tmp_path / "cut"))
  jax.tree.map(np.testing.assert_array_equal, full, resumed)
  assert sorted(os.listdir(tmp_path / "full" / "samples")) == ["2.png", "4.png"]
  with pytest.raises(ValueError, match="is a GAN run"):
    main.evaluate(str(tmp_path / "full"))

  dagan = _smoke(dagan_covid_ct)
  main.train(dagan, str(tmp_path / "dagan"))
  out = main.synthesize(str(tmp_path / "dagan"), 10, str(tmp_path / "pairs"))
  assert sorted(os.listdir(out)) == ["images", "masks", "synthesis.json"]
  builder = datasets.make_builder("image_folder", source_dir=out, cache_dir=None, image_size=None)
  builder.download_and_prepare(file_format="array_record")
  pairs = builder.as_data_source("train")
  assert len(pairs) == 10 and pairs[0]["image"].shape == (32, 32, 1)
  assert set(np.unique(np.stack([p["mask"] for p in pairs]))) <= {0, 1}
  with pytest.raises(UserError, match="not empty"):
    main.synthesize(str(tmp_path / "dagan"), 4, out)

  # The study's "GAN trained on GAN images": a synthesized folder is a dataset.
  again = _smoke(pix2pix_covid_ct, "folder")
  again.data.dir = out
  again.data.kwargs.image_size = (32, 32)
  again.gan.kwargs.update(_smoke(pix2pix_covid_ct).gan.kwargs)
  again.train.update(batch_size=4, steps=2, epochs=0, eval_every=2, log_every=1)
  assert int(main.train(again, str(tmp_path / "second")).step) == 2
  dagan.gan.name = "cyclegan"
  with pytest.raises(ValueError, match="GAN name 'cyclegan'.*dagan, pix2pix"):
    main.train(dagan, str(tmp_path / "bad"))


def test_augmentation_study_smoke_sweep(tmp_path):
  config = _smoke(augstudy_covid_ct)
  rows = main.sweep(config, str(tmp_path))
  assert len(rows) == 2
  synthetic = str(tmp_path / "synthetic")
  assert json.load(open(os.path.join(synthetic, "synthesis.json")))["num"] == 16
  table = open(tmp_path / "results.md").read()
  assert table.startswith("model = unet, objective = BCE, epochs = 4 steps")
  header = table.index("| augmentation | test loss | F1 | mIoU | n |")
  assert header < table.index("| original |") < table.index("| + GAN + JPEG |")
  # The "+ GAN" cells trained on the training split plus the 16 synthesized pairs.
  cell = skeleton.load_config(
    str(tmp_path / "augmentation=+ GAN + JPEG_objective=BCE_model=unet_epochs=4 steps_seed=0")
  )
  assert cell.data.extra_train_dir == synthetic
  own = len(pipeline.load_splits(config.data)["train"])
  assert len(pipeline.load_splits(cell.data)["train"]) == own + 16
  # Epochs count passes over the augmented training split.
  cell.train.epochs = 2
  steps = Experiment(cell, splits=("train",)).config.train.steps
  assert steps == 2 * -(-(own + 16) // cell.train.batch_size)
