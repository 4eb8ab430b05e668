"""The U-Net paper's training strategy: augmentations, weight maps, inference, ISBI metrics."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxseg import infer, metrics
from jaxseg.data import augment, weathering
from jaxseg.data.weight_map import weight_map
from jaxseg.models import get_model


def _example(size=24):
  labels = np.zeros((size, size), np.int32)
  labels[6:14, 8:18] = 1
  return {"image": jnp.asarray(labels, jnp.float32)[..., None], "labels": jnp.asarray(labels)}


@pytest.mark.parametrize(
  "name, kwargs",
  [
    ("elastic_grid", dict(sigma=4.0)),
    ("elastic_dense", dict(alpha=8.0, sigma=3.0)),
    ("affine", dict(max_shift=0.2, max_rotation=30.0)),
    ("random_crop", dict(size=16, pad=4)),
  ],
)
def test_geometric_augmentations_move_image_and_labels_together(name, kwargs):
  fn = jax.jit(lambda key, ex: augment.apply({name: kwargs}, key, ex))
  batch = {k: v[None] for k, v in _example().items()}
  out = fn(jax.random.key(0), batch)
  # The image equals the labels before; after the warp it still does (labels nearest,
  # image linear: equal wherever the image is exactly 0 or 1).
  image, labels = np.asarray(out["image"][0, ..., 0]), np.asarray(out["labels"][0])
  exact = (image == 0) | (image == 1)
  assert exact.mean() > 0.8
  np.testing.assert_array_equal(image[exact], labels[exact])
  assert not np.array_equal(labels, batch["labels"][0][: labels.shape[0], : labels.shape[1]])
  np.testing.assert_array_equal(fn(jax.random.key(0), batch)["image"], out["image"])


def test_elastic_grid_displaces_by_its_field():
  """sigma 0: the identity; a constant coarse field (grid 1, one draw) moves the whole
  image by that draw: the pixel at ``(y, x)`` comes from ``(y + dy, x + dx)`` (labels
  nearest)."""
  ex = _example()
  out = augment.elastic_grid(jax.random.key(0), ex, sigma=0.0)
  np.testing.assert_allclose(out["image"], ex["image"], atol=1e-6)
  key = jax.random.key(5)
  dy, dx = np.asarray(3.0 * jax.random.normal(key, (2, 1, 1))).ravel()
  assert max(abs(dy), abs(dx)) > 1  # the draw moves the box
  shifted = np.asarray(augment.elastic_grid(key, ex, grid=1, sigma=3.0)["labels"])
  labels, (yy, xx) = np.asarray(ex["labels"]), np.mgrid[6:18, 6:18]  # (inside the image)
  expected = labels[np.rint(yy + dy).astype(int), np.rint(xx + dx).astype(int)]
  np.testing.assert_array_equal(shifted[6:18, 6:18], expected)


def test_gray_value_touches_only_the_image():
  ex = _example()
  out = augment.gray_value(jax.random.key(1), ex)
  np.testing.assert_array_equal(out["labels"], ex["labels"])
  assert not np.allclose(out["image"], ex["image"])


def test_mixup_mixes_images_and_labels_with_one_lambda():
  batch = {
    "image": jnp.stack([jnp.zeros((4, 4, 1)), jnp.ones((4, 4, 1))]),
    "labels": jnp.stack([jnp.zeros((4, 4), jnp.int32), jnp.ones((4, 4), jnp.int32)]),
  }
  out = augment.mixup(jax.random.key(3), batch, alpha=0.4)
  np.testing.assert_allclose(out["image"][..., 0], out["soft_labels"], atol=1e-6)
  assert np.all(np.asarray(out["soft_labels"]) >= 0) and np.all(np.asarray(out["soft_labels"]) <= 1)


def test_jpeg_weathering_degrades_and_keeps_shape():
  rng = np.random.default_rng(0)
  image = rng.random((32, 32, 1)).astype(np.float32)
  once = weathering.recompress(image, (30,), 1)
  many = weathering.recompress(image, (30, 20, 10, 5), 1)
  assert once.shape == image.shape and once.dtype == np.float32
  assert np.abs(many - image).mean() > np.abs(once - image).mean() > 0
  np.testing.assert_array_equal(
    weathering.recompress(image, (30,), 4), weathering.recompress(image, (30,), 4)
  )


def test_weight_map_two_touching_objects_closed_form():
  labels = np.zeros((20, 21), np.int32)
  labels[5:15, 2:10] = 1
  labels[5:15, 11:19] = 1  # a one-pixel gap at column 10
  w = weight_map(labels, w0=10.0, sigma=5.0)
  fg, bg = labels.sum(), labels.size - labels.sum()
  wc_bg, wc_fg = labels.size / (2 * bg), labels.size / (2 * fg)
  # In the gap each object is at distance 1: d1 = d2 = 1.
  np.testing.assert_allclose(w[10, 10], wc_bg + 10 * np.exp(-(2.0**2) / 50), rtol=1e-6)
  # Inside an object only the class weight applies.
  np.testing.assert_allclose(w[10, 5], wc_fg, rtol=1e-6)
  # Far corner: d1 = dist to the nearer object, d2 to the other one.
  d1 = np.hypot(5 - 0, 2 - 0)
  d2 = np.hypot(5 - 0, 11 - 0)
  np.testing.assert_allclose(w[0, 0], wc_bg + 10 * np.exp(-((d1 + d2) ** 2) / 50), rtol=1e-5)
  # One object only: no border term.
  single = np.zeros((10, 10), np.int32)
  single[2:5, 2:5] = 1
  assert np.allclose(weight_map(single), np.where(single, 50 / 9, 50 / 91))


@pytest.fixture(scope="session")
def valid_net():
  model = get_model("unet_paper", widths=(2, 4, 8, 16, 32), dropout_rate=0.0)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 188, 188, 1)))
  return infer.make_predict_fn(model, variables)


def test_overlap_tile_equals_whole_image(valid_net):
  """A 512x512 image (the ISBI size) tile by tile equals one pass over the whole
  mirrored image (700 px in, 516 px out, of which the first 512 are the image)."""
  image = np.random.default_rng(0).random((512, 512, 1)).astype(np.float32)
  tiled = infer.overlap_tile(valid_net, image, tile=284, tile_batch=4)
  whole = np.asarray(valid_net(np.pad(image, ((92, 96), (92, 96), (0, 0)), "symmetric")[None]))[0]
  assert tiled.shape == (512, 512, 2)
  np.testing.assert_allclose(tiled, whole[:512, :512], atol=1e-5)


def test_sliding_window_and_tta():
  """A same-padded network: an image no larger than the tile is one whole-image pass;
  larger, overlapping windows blend to nearly the same; test-time transforms invert."""
  model = get_model("unet", widths=(4, 8))
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
  image = np.random.default_rng(1).random((48, 40, 1)).astype(np.float32)
  whole = np.asarray(infer.make_predict_fn(model, variables)(image[None]))[0]
  one = infer.ImagePredictor(model, infer.Tiling(tile=64))
  assert one.mode(variables) == "sliding window"
  np.testing.assert_allclose(one(variables, image), whole, atol=1e-6)
  blended = infer.ImagePredictor(model, infer.Tiling(tile=32, overlap=0.5))(variables, image)
  assert blended.shape == whole.shape and np.abs(blended - whole).mean() < 0.05
  for name in infer.DIHEDRAL:
    back = infer._transform(name, infer._transform(name, image), inverse=True)
    np.testing.assert_array_equal(back, image)
  averaged = infer.ImagePredictor(model, infer.Tiling(64, tta=infer.DIHEDRAL))(variables, image)
  assert averaged.shape == whole.shape and np.all((averaged >= 0) & (averaged <= 1))
  rotated = infer.ImagePredictor(model, infer.Tiling(64, tta=("rotate:0", "rotate:45")))
  assert rotated(variables, image).shape == whole.shape
  with pytest.raises(ValueError, match="unknown test-time transform 'mirror'"):
    infer.ImagePredictor(model, infer.Tiling(64, tta=("mirror",)))(variables, image)
  h = lambda p: 0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(p) + 0.5) / p)  # noqa: E731
  np.testing.assert_allclose(infer.hann_weight((4, 6)), np.outer(h(4), h(6)) + 1e-3, rtol=1e-6)


def _brute_rand_error(pred, gt):
  ps, gs = ndimage.label(pred > 0)[0], ndimage.label(gt > 0)[0]
  pixels = [tuple(p) for p in np.argwhere(gs > 0)]
  both = together_pred = together_gt = 0
  for a, b in itertools.product(pixels, pixels):
    same_gt = gs[a] == gs[b]
    same_pred = a == b or (ps[a] == ps[b] and ps[a] > 0)
    both += same_gt and same_pred
    together_pred += same_pred
    together_gt += same_gt
  precision, recall = both / together_pred, both / together_gt
  return 1 - 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize("seed", range(4))
def test_rand_error_matches_pair_counting(seed):
  rng = np.random.default_rng(seed)
  gt, pred = rng.random((7, 7)) < 0.6, rng.random((7, 7)) < 0.6
  assert metrics.rand_error(pred, gt) == pytest.approx(_brute_rand_error(pred, gt))
  assert metrics.rand_error(gt, gt) == pytest.approx(0.0)


def test_warping_error_forgives_shifts_but_not_splits():
  gt = np.zeros((12, 12), bool)
  gt[2:10, 2:10] = True
  shifted = np.roll(gt, 1, axis=1)
  assert metrics.warping_error(shifted, gt) == 0.0 < np.mean(shifted != gt)
  split = gt.copy()
  split[:, 6] = False  # one object cut in two: a topological error
  assert metrics.warping_error(split, gt) == pytest.approx(8 / 144)
  merged = np.zeros((12, 12), bool)
  merged[2:10, 2:5] = merged[2:10, 7:10] = True
  joined = merged.copy()
  joined[5, 5:7] = True  # a bridge merges two objects
  assert 0 < metrics.warping_error(joined, merged) <= 2 / 144


def test_simple_point_table_against_component_counts():
  table = metrics._simple_point_table()
  four = ndimage.generate_binary_structure(2, 1)
  rng = np.random.default_rng(0)
  for code in rng.choice(256, 40, replace=False):
    patch = np.zeros((5, 5), bool)
    for bit, (dy, dx) in enumerate(
      [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]
    ):
      patch[2 + dy, 2 + dx] = bool(code >> bit & 1)
    counts = []
    for centre in (False, True):
      patch[2, 2] = centre
      fg = ndimage.label(patch, np.ones((3, 3)))[1]
      bg = ndimage.label(np.pad(~patch, 1, constant_values=True), four)[1]
      counts.append((fg, bg))
    # Simple <=> toggling the centre keeps the numbers of objects and of background
    # components (a 5x5 patch with a background frame is enough to see it).
    assert table[code] == (counts[0] == counts[1]) or not patch[1:4, 1:4].any()
