"""synthetic_nerve, the cache, the grain pipeline, augmentations and input checks."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import unet_synthetic
from jaxseg import data as datasets
from jaxseg.data import augment, nerve_render, pipeline, records

SMALL = dict(image_size=32, num_train=16, num_validation=4, num_test=4)


def _data_config(folds=0, fold=0, **kwargs):
  """The data config every experiment starts from, on small synthetic data."""
  config = unet_synthetic.get_config().data
  config.update(folds=folds, fold=fold, validation_fraction=0.2, test_fraction=0.2)
  config.kwargs = ml_collections.ConfigDict({**SMALL, **kwargs})
  return config


def test_render_is_deterministic_and_nerve_is_small():
  keys = jax.random.split(jax.random.key(0), 16)
  sites = nerve_render.site_params(jax.random.key(1), 2)[jnp.arange(16) % 2]
  img, mask, ann = nerve_render.render(keys, sites, 64, 0.5, 3, 0.06)
  img2, mask2, _ = nerve_render.render(keys, sites, 64, 0.5, 3, 0.06)
  np.testing.assert_array_equal(img, img2)
  np.testing.assert_array_equal(mask, mask2)
  assert img.shape == (16, 64, 64) and ann.shape == (16, 3, 64, 64)
  assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
  fraction = np.asarray(mask).mean(axis=(1, 2))
  assert np.all(fraction > 0.008) and np.all(fraction < 0.035)  # 1-3% up to pixelation
  # Annotators disagree a little with the truth and with each other.
  ann, mask = np.asarray(ann), np.asarray(mask)
  iou = [(ann[:, k] & mask).sum() / (ann[:, k] | mask).sum() for k in range(3)]
  assert all(0.6 < x < 1.0 for x in iou)
  assert not np.array_equal(ann[:, 0], ann[:, 1])


def test_intensity_threshold_baseline_is_poor():
  """The best global threshold (either polarity, tuned on the data) scores Dice <= 0.3."""
  keys = jax.random.split(jax.random.key(7), 48)
  sites = nerve_render.site_params(jax.random.key(1), 1)[jnp.zeros(48, int)]
  img, mask, _ = jax.device_get(nerve_render.render(keys, sites, 64, 0.5, 1, 0.06))
  best = 0.0
  for threshold in np.linspace(0, 1, 51):
    for pred in (img > threshold, img < threshold):
      best = max(best, 2 * (pred & mask).sum() / (pred.sum() + mask.sum()))
  assert best <= 0.3, best


def test_sites_shift_the_intensity_distribution():
  keys = jax.random.split(jax.random.key(3), 32)
  params = nerve_render.site_params(jax.random.key(1), 3)
  means = [
    float(
      nerve_render.render(keys, jnp.broadcast_to(params[s], (32, 3)), 32, 0.5, 1, 0.06)[0].mean()
    )
    for s in range(3)
  ]
  assert len({round(m, 3) for m in means}) == 3


def test_prepared_splits_and_cache_key():
  cache = os.environ["JAXSEG_CACHE"]
  sources = pipeline.load_splits(_data_config())
  assert {k: len(v) for k, v in sources.items()} == {"train": 16, "validation": 4, "test": 4}
  example = sources["train"][0]
  assert example["image"].shape == (32, 32, 1) and example["image"].dtype == np.uint8
  assert set(np.unique(example["mask"])) <= {0, 1}
  assert example["annotators"].shape == (1, 32, 32)
  folders = set(os.listdir(os.path.join(cache, "tfds", "synthetic_nerve")))
  pipeline.load_splits(_data_config())  # same settings: reused
  assert set(os.listdir(os.path.join(cache, "tfds", "synthetic_nerve"))) == folders
  pipeline.load_splits(_data_config(difficulty=0.7))  # changed setting: new folder
  assert len(os.listdir(os.path.join(cache, "tfds", "synthetic_nerve"))) == len(folders) + 1


def test_making_a_builder_leaves_no_temporary_folder(tmp_path, monkeypatch):
  """TFDS makes an empty temporary folder for every builder of an unprepared dataset
  and keeps it; jaxseg removes it."""
  monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
  datasets.make_builder("synthetic_nerve", source_dir=None, cache_dir=str(tmp_path / "c"), **SMALL)
  assert set(os.listdir(tmp_path)) <= {"c"}


def test_loader_is_seeded_and_resumable():
  source = pipeline.load_splits(_data_config(), splits=("train",))["train"]
  first = iter(pipeline.train_loader(source, 4, seed=0))
  batches = [next(first) for _ in range(6)]  # crosses an epoch boundary (16 / 4)
  assert batches[0]["image"].shape == (4, 32, 32, 1) and batches[0]["labels"].dtype == np.int32
  again = iter(pipeline.train_loader(source, 4, seed=0))
  next(again), next(again)
  state = again.get_state()
  resumed = iter(pipeline.train_loader(source, 4, seed=0))
  resumed.set_state(state)
  for expected in batches[2:]:
    np.testing.assert_array_equal(next(resumed)["image"], expected["image"])
  other = next(iter(pipeline.train_loader(source, 4, seed=1)))
  assert not np.array_equal(other["image"], batches[0]["image"])


def test_cross_validation_folds_partition_the_training_split():
  held_out = []
  for fold in range(4):
    sources = pipeline.load_splits(_data_config(folds=4, fold=fold))
    assert len(sources["train"]) == 12 and len(sources["test"]) == 4
    assert len(sources["validation"]) == 4
    train, test = set(sources["train"].indices), set(sources["test"].indices)
    assert not train & test
    held_out.append(test)
  assert set().union(*held_out) == set(range(16))
  with pytest.raises(ValueError, match="config.data.fold=4 with config.data.folds=4"):
    pipeline.load_splits(_data_config(folds=4, fold=4))


def test_loader_repeats_a_source_smaller_than_a_batch():
  source = pipeline.load_splits(_data_config(), splits=("train",))["train"]
  small = pipeline.Subset(source, [0, 1, 2])
  batch = next(iter(pipeline.train_loader(small, 8, seed=0)))
  assert batch["image"].shape[0] == 8
  assert len({b.tobytes() for b in batch["image"]}) == 3


def test_eval_batches_pad_and_flag():
  source = pipeline.load_splits(_data_config(), splits=("train",))["train"]
  batches = list(pipeline.eval_batches(source, 6))
  assert [b["valid"].sum() for b in batches] == [6, 6, 4]
  assert all(b["image"].shape[0] == 6 for b in batches)


def test_bad_data_inputs():
  config = _data_config(num_test=0)
  config.test_fraction = 0.0  # no stored test split and none to carve
  with pytest.raises(ValueError, match="test_fraction=0.0 leaves no test"):
    pipeline.load_splits(config)
  with pytest.raises(ValueError, match="unknown synthetic_nerve settings \\['image_szie'\\]"):
    pipeline.load_splits(
      ml_collections.ConfigDict(
        dict(name="synthetic_nerve", dir="", cache_dir="", folds=0, kwargs=dict(image_szie=32))
      )
    )
  with pytest.raises(ValueError, match="is generated, not read"):
    datasets.make_builder("synthetic_nerve", source_dir="/data/nerve", cache_dir=None)
  with pytest.raises(ValueError, match="Unknown dataset name 'isbi'"):
    datasets.make_builder("isbi", source_dir=None, cache_dir=None)
  with pytest.raises(
    ValueError,
    match=r"case_7.png: mask size \(30, 32\) does not match "
    r"image size \(32, 32\)",
  ):
    records.check_pair(np.zeros((32, 32, 1)), np.zeros((30, 32)), "case_7.png")


def test_augmentations_move_image_and_labels_together():
  image = jnp.arange(2 * 6 * 6, dtype=jnp.float32).reshape(2, 6, 6, 1)
  batch = {"image": image, "labels": image[..., 0].astype(jnp.int32), "weights": image[..., 0]}
  chain = {"flip": {}, "rot90": {}}
  out = augment.apply(chain, jax.random.key(0), batch)
  np.testing.assert_array_equal(out["image"][..., 0].astype(jnp.int32), out["labels"])
  np.testing.assert_array_equal(out["image"][..., 0], out["weights"])
  seen = {
    np.asarray(augment.apply(chain, jax.random.key(k), batch)["labels"][0]).tobytes()
    for k in range(40)
  }
  assert len(seen) == 8  # all dihedral transforms of a square image occur
  again = augment.apply(chain, jax.random.key(0), batch)
  np.testing.assert_array_equal(again["image"], out["image"])
  # Non-square images are only flipped or turned by 180 degrees.
  rect = {"image": jnp.arange(24.0).reshape(1, 4, 6, 1), "labels": jnp.zeros((1, 4, 6), int)}
  # A run of dihedral transforms is applied as the one permutation it composes to:
  # the same pixels as applying them one by one with the chain's keys.
  for key in map(jax.random.key, range(6)):
    for b in (batch, rect):
      merged = augment.apply(chain, key, b)["image"]
      for i, k in enumerate(jax.random.split(key, len(b["image"]))):
        one = {"image": b["image"][i], "labels": b["labels"][i]}
        one = augment.rot90(jax.random.fold_in(k, 1), augment.flip(jax.random.fold_in(k, 0), one))
        np.testing.assert_array_equal(merged[i], one["image"])
  with pytest.raises(ValueError, match="Unknown augmentation name 'warp'"):
    augment.check({"warp": {}})


def test_image_folder_literal_settings_are_checked_against_their_form():
  from jaxseg.data.image_folder import _literal
  from jaxseg.errors import UserError

  assert _literal(tuple("auto"), "mask_values") == "auto"  # a tuple default's override
  assert _literal("(32, 32)", "image_size") == (32, 32) and _literal(None, "image_size") is None
  assert _literal("((0, 0), (255, 1))", "mask_values") == ((0, 0), (255, 1))
  assert _literal(3, "channels") == 3
  for value, key in (
    ("auto2", "image_size"),
    ("(32,)", "image_size"),
    ("((0, 0), (255))", "mask_values"),
    (tuple("rgb"), "channels"),
    ("2", "channels"),
  ):
    with pytest.raises(UserError, match=rf"config.data.kwargs.{key}: expected 'auto' or"):
      _literal(value, key)
