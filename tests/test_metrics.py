"""Metrics: closed forms, empty-mask conventions, Hausdorff against scipy."""

import numpy as np
import pytest
from scipy.spatial.distance import directed_hausdorff

from jaxseg import metrics


def _scores(pred, gt):
  return {k: float(v) for k, v in metrics.scores(metrics.confusion(pred, gt)).items()}


def test_overlap_scores_closed_form():
  gt = np.zeros((4, 4), int)
  gt[:2, :2] = 1  # 4 pixels
  pred = np.zeros((4, 4), int)
  pred[:2, :3] = 1  # 6 pixels, 4 correct
  s = _scores(pred, gt)
  assert s["dice"] == pytest.approx(2 * 4 / (6 + 4))
  assert s["iou"] == pytest.approx(4 / 6)
  assert s["miou"] == pytest.approx((4 / 6 + 10 / 12) / 2)  # background: 10 of 12 pixels
  assert s["precision"] == pytest.approx(4 / 6)
  assert s["recall"] == pytest.approx(1.0)
  assert s["pixel_error"] == pytest.approx(2 / 16)


def test_empty_conventions():
  empty, full = np.zeros((3, 3), int), np.ones((3, 3), int)
  both = _scores(empty, empty)
  assert both == {
    "dice": 1.0,
    "iou": 1.0,
    "miou": 1.0,
    "precision": 1.0,
    "recall": 1.0,
    "pixel_error": 0.0,
  }
  missed = _scores(empty, full)  # nothing predicted, something there
  assert missed["dice"] == missed["iou"] == missed["precision"] == missed["recall"] == 0.0
  false_alarm = _scores(full, empty)  # something predicted, nothing there
  assert false_alarm["dice"] == false_alarm["precision"] == false_alarm["recall"] == 0.0


def test_pooled_differs_from_per_image_mean():
  gt = np.zeros((2, 4, 4), int)
  gt[0, :2, :2] = 1
  gt[1, 0, 0] = 1
  pred = gt.copy()
  pred[1] = 0  # second image: the one-pixel structure is missed
  counts = metrics.confusion(pred, gt)
  per_image = metrics.scores(counts)["dice"]
  np.testing.assert_allclose(per_image, [1.0, 0.0])
  assert float(metrics.pooled(counts)["dice"]) == pytest.approx(2 * 4 / (4 + 5))


def _surface_points(mask):
  from scipy import ndimage

  inner = ndimage.binary_erosion(mask, ndimage.generate_binary_structure(2, 1), border_value=0)
  return np.argwhere(mask & ~inner)


@pytest.mark.parametrize("seed", range(5))
def test_hausdorff_matches_scipy(seed):
  rng = np.random.default_rng(seed)
  pred = rng.random((24, 20)) < 0.15
  gt = rng.random((24, 20)) < 0.15
  a, b = _surface_points(pred), _surface_points(gt)
  expected = max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0])
  assert metrics.hausdorff(pred, gt) == pytest.approx(expected)
  # HD95: larger of the two directed 95th percentiles of nearest-point distances.
  d = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
  hd95 = max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))
  assert metrics.hausdorff(pred, gt, percentile=95) == pytest.approx(hd95)
  # Anisotropic spacing scales the axes.
  d = np.sqrt((((a[:, None] - b[None]) * np.array([2.0, 0.5])) ** 2).sum(-1))
  assert metrics.hausdorff(pred, gt, spacing=(2.0, 0.5)) == pytest.approx(
    max(d.min(1).max(), d.min(0).max())
  )
  # The evaluator's one pass gives each distance metric's own value, empty masks too.
  empty = np.zeros_like(pred)
  for p, g in ((pred, gt), (empty, gt), (empty, empty)):
    assert metrics.surface_scores(p, g, 1.5, (2.0, 0.5)) == {
      "hd": metrics.hausdorff(p, g, None, (2.0, 0.5)),
      "hd95": metrics.hausdorff(p, g, 95, (2.0, 0.5)),
      "asd": metrics.average_surface_distance(p, g, (2.0, 0.5)),
      "nsd": metrics.normalized_surface_dice(p, g, 1.5, (2.0, 0.5)),
    }


def test_hausdorff_empty_cases():
  empty, blob = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
  blob[2:4, 2:4] = True
  assert metrics.hausdorff(empty, empty) == 0.0
  assert metrics.hausdorff(empty, blob) == float("inf")  # missed structure: never 0
  assert metrics.hausdorff(blob, empty) == float("inf")
  assert metrics.hausdorff(blob, blob) == 0.0
  with pytest.raises(ValueError, match="shape"):
    metrics.hausdorff(blob, blob[:4])


def test_hard_labels():
  import jax.numpy as jnp

  np.testing.assert_array_equal(metrics.hard_labels(jnp.array([[-1.0], [2.0]])), [0, 1])
  np.testing.assert_array_equal(metrics.hard_labels(jnp.array([[0.1, 3.0, 0.2]])), [1])


def _iou_distance(a, b):  # independent: sets of foreground pixels
  a, b = set(zip(*np.nonzero(a), strict=True)), set(zip(*np.nonzero(b), strict=True))
  return 0.0 if not a | b else 1.0 - len(a & b) / len(a | b)


def test_ged_closed_forms_and_conventions():
  a = np.zeros((1, 4, 4), bool)
  a[0, :2] = True
  b = np.zeros((1, 4, 4), bool)
  b[0, 1:3] = True  # IoU(a, b) = 4 / 12
  empty = np.zeros((1, 4, 4), bool)
  assert float(metrics.ged(a, a)) == 0.0
  assert float(metrics.ged(a, ~a)) == 2.0  # disjoint
  assert float(metrics.ged(empty, empty)) == 0.0  # both empty: distance 0
  assert float(metrics.ged(empty, a)) == 2.0  # one empty: distance 1
  x = 1 - 4 / 12
  # samples {a, b}, annotation {a}: 2 * x/2 - (0 + x + x + 0)/4 - 0 = x/2
  np.testing.assert_allclose(metrics.ged(np.concatenate([a, b]), a), x / 2, rtol=1e-6)
  np.testing.assert_allclose(metrics.diversity(np.concatenate([a, b])), x / 2, rtol=1e-6)


def test_ged_matches_an_independent_implementation():
  rng = np.random.default_rng(0)
  samples = rng.random((5, 8, 8)) > 0.6
  annotations = rng.random((3, 8, 8)) > 0.5
  annotations[2] = False  # a rater who marked nothing
  d = lambda xs, ys: np.mean([_iou_distance(x, y) for x in xs for y in ys])  # noqa: E731
  expected = 2 * d(samples, annotations) - d(samples, samples) - d(annotations, annotations)
  np.testing.assert_allclose(metrics.ged(samples, annotations), expected, rtol=1e-5)


def test_multi_class_runs_score_each_class_and_keep_the_union():
  """One vocabulary: dice_<k> per foreground class, dice their mean, dice_fg the union
  (validation and test alike); a missed structure's distance is the diagonal."""
  from jaxseg.run import evaluate, evaluators  # noqa: PLC0415

  pred, gt = np.array([[[1, 2, 0, 0]]]), np.array([[[1, 1, 2, 0]]])
  classes = metrics.class_counts(pred, gt, 3, batched=True)
  per_image = {
    "loss": np.zeros(1),
    "pred": pred,
    "labels": gt,
    **metrics.confusion(pred, gt),
    **{f"class_{k}": np.asarray(v) for k, v in classes.items()},
  }
  # class 1: tp 1, fn 1 -> 2/3; class 2: fp 1, fn 1 -> 0; union: tp 2, fn 1 -> 4/5
  val = evaluators.summarize(per_image)
  assert val["dice_1"] == pytest.approx(2 / 3) and val["dice_2"] == 0.0
  assert val["dice"] == pytest.approx(1 / 3) and val["dice_fg"] == pytest.approx(0.8)
  table = evaluate.metrics_table(per_image, (1, 4))
  assert table["dice"]["pooled"] == pytest.approx(1 / 3)
  assert table["dice_fg"]["mean"] == pytest.approx(0.8)
  assert table["iou_1"]["mean"] == pytest.approx(0.5)
  binary = {**per_image, **{f"class_{k}": v[:, :1] for k, v in classes.items()}}
  assert "dice_fg" not in evaluators.summarize(binary)  # one class: dice is the union's
  np.testing.assert_array_equal(metrics.bounded([1.0, np.inf], 5.0), [1.0, 5.0])
