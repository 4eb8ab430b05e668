"""Volumes: 3-D models, preparation and its inverse, patches, sliding windows, surface
metrics, and the train/eval/predict commands on volumes."""

import csv
import functools
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from jaxseg import infer, main, metrics
from jaxseg.data import augment, msd, patches, volumes
from jaxseg.errors import UserError
from jaxseg.models import get_model
from jaxseg.run import evaluate, predict
from jaxseg.train.state import count_params
from tests.conftest import sigterm_at

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIPPOCAMPUS = os.path.join(REPO, "..", "shared", "data", "msd_hippocampus")


def _count(name, shape=(1, 16, 16, 16, 1), **kwargs):
  model = get_model(name, **kwargs)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape)), variables)
  return count_params(variables["params"]), out


@pytest.mark.parametrize(
  "name, kwargs, params",
  [
    ("unet", {}, 106_275),
    ("unetpp", {"mode": "deep"}, 97_566),
    ("attention_unet", {}, 106_777),
  ],
)
def test_3d_models_count_and_shape(name, kwargs, params):
  """3x3x3 convolutions at widths 8..32, 3 classes; anisotropic pooling (no pooling
  along z at the first transition) changes no count and keeps the output size."""
  common = dict(widths=(8, 16, 32), spatial_dims=3, num_classes=3, **kwargs)
  count, out = _count(name, **common)
  assert count == params
  count, out = _count(name, (1, 16, 16, 8, 1), pool=((2, 2, 1), (2, 2, 2)), **common)
  logits = out["logits"] if isinstance(out, dict) else out
  assert count == params and logits.shape == (1, 16, 16, 8, 3)
  assert get_model(name, **common, pool=((2, 2, 1), (2, 2, 2))).strides == (4, 4, 2)
  with pytest.raises(UserError, match="expected 2 windows of 3 sizes"):
    _count(name, **common, pool=((2, 2),))


def test_anisotropic_pooling_plan():
  from jaxseg.run.volume import plan_pool  # noqa: PLC0415

  assert plan_pool((1.0, 1.0, 1.0), 3) == [(2, 2, 2), (2, 2, 2)]
  assert plan_pool((0.8, 0.8, 5.0), 4) == [(2, 2, 1), (2, 2, 1), (2, 2, 2)]


def _anisotropic_copy(image, labels, affine):
  """A case as a scanner might store it: 3 mm along z (image linear, labels nearest),
  axes permuted (z, x, y) with x flipped, and a matching non-diagonal affine."""
  z = image.shape[2] // 3
  image = volumes.resample(image, (*image.shape[:2], z), order=1)
  labels = volumes.resample(labels, (*labels.shape[:2], z), order=0)
  scaled = affine @ np.diag([1.0, 1.0, 3.0, 1.0])
  nx = image.shape[0]
  flip = np.eye(4)
  flip[0, 0], flip[0, 3] = -1.0, nx - 1  # array x index i is old index nx-1-i
  perm = np.zeros((4, 4))
  perm[0, 1], perm[1, 2], perm[2, 0], perm[3, 3] = 1.0, 1.0, 1.0, 1.0  # new (z, x, y)
  new_affine = scaled @ flip @ perm
  to_new = lambda a: np.transpose(a[::-1], (2, 0, 1))  # noqa: E731
  return to_new(image), to_new(labels), new_affine


def test_preparation_is_undone_exactly_on_anisotropic_flipped_volumes():
  rng = np.random.default_rng(0)
  image = rng.normal(size=(10, 12, 18)).astype(np.float32) + 3.0
  labels = (rng.random((10, 12, 18)) > 0.6).astype(np.uint8)
  image, labels, affine = _anisotropic_copy(image, labels, np.eye(4))
  assert volumes.canonical_spacing(affine) == (1.0, 1.0, 3.0)
  prepared, plabels, meta = volumes.prepare_case(
    image[..., None], affine, labels, (1.0, 1.0, 1.0), ["MRI"]
  )
  assert prepared.shape[:3] == (10, 12, 18) and abs(float(prepared.mean())) < 1e-5
  onehot = np.eye(2, dtype=np.float32)[plabels]
  np.testing.assert_array_equal(volumes.restore_case(onehot, meta), labels)


def test_surface_metrics_match_a_brute_force_computation():
  """HD95, ASD and NSD from distance transforms against all pairwise distances
  between boundary voxels, on random volumes with anisotropic spacing."""
  rng = np.random.default_rng(1)
  spacing = (0.7, 1.3, 2.5)
  for _ in range(3):
    a = volumes.resample((rng.random((4, 5, 3)) > 0.5).astype(np.uint8), (8, 10, 6), 0) > 0
    b = volumes.resample((rng.random((4, 5, 3)) > 0.5).astype(np.uint8), (8, 10, 6), 0) > 0
    pts = [np.argwhere(metrics._surface(m)) * np.asarray(spacing) for m in (a, b)]
    d = np.sqrt(((pts[0][:, None] - pts[1][None]) ** 2).sum(-1))
    ab, ba = d.min(1), d.min(0)
    hd95 = max(np.percentile(ab, 95), np.percentile(ba, 95))
    assert metrics.hausdorff(a, b, 95, spacing) == pytest.approx(hd95)
    asd = (ab.sum() + ba.sum()) / (ab.size + ba.size)
    assert metrics.average_surface_distance(a, b, spacing) == pytest.approx(asd)
    nsd = ((ab <= 1.5).sum() + (ba <= 1.5).sum()) / (ab.size + ba.size)
    assert metrics.normalized_surface_dice(a, b, 1.5, spacing) == pytest.approx(nsd)
  empty = np.zeros((4, 4, 4), bool)
  assert metrics.normalized_surface_dice(empty, empty, 1.0) == 1.0
  assert metrics.normalized_surface_dice(empty, ~empty, 1.0) == 0.0
  assert metrics.average_surface_distance(empty, ~empty) == float("inf")


def _box_model(variables, x):
  """Logits of a fixed per-voxel linear map: the window cannot change the answer."""
  return jnp.concatenate([-x * variables["w"], x * variables["w"]], -1)


def test_sliding_window_weights_and_bounded_memory():
  patch = (8, 8, 8)
  windows = infer.Windows(patch, overlap=0.5, window_batch=2, bucket=8, mirror=True)
  predict = infer.make_predictor(_box_model, windows, 2)
  volume = np.random.default_rng(0).normal(size=(13, 9, 20, 1)).astype(np.float32)
  probs = infer.sliding_window(predict, {"w": 2.0}, volume, windows)
  np.testing.assert_allclose(probs[..., 1], jax.nn.sigmoid(4.0 * volume[..., 0]), rtol=1e-5)
  weight = infer.gaussian_weight(patch)
  assert weight.max() == 1.0 and weight[0, 0, 0] < 0.01 and weight[3, 4, 4] > 0.9
  # The same window over two spatial axes (an image), mirrored over both.
  flat = infer.Windows((8, 8), overlap=0.5, window_batch=2, bucket=8, mirror=True, blend="hann")
  probs = infer.sliding_window(
    infer.make_predictor(_box_model, flat, 2), {"w": 2.0}, volume[:, :, 0], flat
  )
  np.testing.assert_allclose(probs[..., 1], jax.nn.sigmoid(4.0 * volume[:, :, 0, 0]), rtol=1e-5)

  def temp_bytes(side):
    full = (side, side, side)
    n = len(infer.window_starts(full, patch, 0.5))
    args = (
      {"w": jnp.float32(1.0)},
      jnp.zeros((*full, 1)),
      jnp.zeros((n + n % 2, 3), jnp.int32),
      jnp.zeros((n + n % 2,)),
    )
    compiled = predict.lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes, side**3 * 3 * 4

  (small, out_small), (large, out_large) = temp_bytes(16), temp_bytes(48)
  # The working memory beyond the output (probabilities and weights) does not grow.
  assert large - out_large <= max(small - out_small, 0) + 64 * 1024


def test_patches_are_keyed_and_oversample_foreground():
  labels = np.zeros((20, 20, 20), np.uint8)
  labels[15:17, 2:4, 10:12] = 1
  cases = [{"image": np.ones((20, 20, 20, 1), np.float32), "labels": labels}]
  stack = jax.device_put(patches.stack(cases, (8, 8, 8)))
  draw = jax.jit(functools.partial(patches.sample, batch=4, patch=(8, 8, 8), oversample=0.5))
  a, b = draw(jax.random.key(0), stack), draw(jax.random.key(0), stack)
  np.testing.assert_array_equal(a["labels"], b["labels"])
  for k in range(5):
    batch = draw(jax.random.key(k), stack)
    assert all(batch["labels"][i].sum() > 0 for i in (2, 3))  # centred on foreground
  aug = augment.apply({"volume": {"affine": 1.0}}, jax.random.key(3), a)
  assert aug["image"].shape == (4, 8, 8, 8, 1) and set(np.unique(aug["labels"])) <= {0, 1}


def _write_case(folder, name, image, labels, affine, channels_split=False):
  os.makedirs(os.path.join(folder, "imagesTr"), exist_ok=True)
  os.makedirs(os.path.join(folder, "labelsTr"), exist_ok=True)
  image_name = f"{name}_0000.nii.gz" if channels_split else f"{name}.nii.gz"
  nib.save(nib.Nifti1Image(image, affine), os.path.join(folder, "imagesTr", image_name))
  nib.save(nib.Nifti1Image(labels, affine), os.path.join(folder, "labelsTr", f"{name}.nii.gz"))


def _describe(folder, names, labels=None, test=()):
  description = {
    "test": list(test),
    "modality": {"0": "CT"},
    "labels": labels or {"0": "background", "1": "lesion"},
    "training": [
      {"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names
    ],
  }
  with open(os.path.join(folder, "dataset.json"), "w") as f:
    json.dump(description, f)


def test_msd_reads_the_layout_and_rejects_bad_cases(tmp_path, capsys):
  """nnU-Net channel files, float labels, CT statistics, k-fold by case; clear errors."""
  rng = np.random.default_rng(0)
  names = [f"ct_{i}" for i in range(6)]
  for i, n in enumerate(names):
    image = (rng.normal(size=(8, 8, 4)) * 100).astype(np.int16)
    labels = np.zeros((8, 8, 4), np.float32)
    labels[2:5, 2:5, 1:3] = 1.0
    _write_case(str(tmp_path), n, image, labels, np.diag([0.8, 0.8, 2.5, 1]), i % 2 == 0)
  _describe(str(tmp_path), names)
  data = msd.load(str(tmp_path), str(tmp_path / "cache"))
  assert (
    data.plan["target_spacing"] == pytest.approx([0.8, 0.8, 2.5]) and data.plan["ct_statistics"]
  )
  assert sorted(sum(data.splits.values(), [])) == names and len(data.splits["test"]) == 2
  assert len(os.listdir(tmp_path / "cache" / "volumes")) == 1  # cached once
  msd.load(str(tmp_path), str(tmp_path / "cache"))
  assert len(os.listdir(tmp_path / "cache" / "volumes")) == 1
  # A truncated prepared case is prepared again (one line), the same as the first time.
  (where,) = (tmp_path / "cache" / "volumes").iterdir()
  (where / "ct_0.npz").write_bytes((where / "ct_0.npz").read_bytes()[:-40])
  again = msd.load(str(tmp_path), str(tmp_path / "cache"))
  assert "are damaged" in capsys.readouterr().out
  np.testing.assert_array_equal(again.cases["ct_0"]["image"], data.cases["ct_0"]["image"])
  # Values that would train as NaN are caught where they enter, naming the file.
  poisoned = image.astype(np.float32)
  poisoned[1, 2, 3] = np.nan
  for bad, message in ((poisoned, "1 non-finite voxel"), (image * 0 + 7, "channel 0 is constant")):
    _write_case(str(tmp_path), "ct_0", bad, labels, np.diag([0.8, 0.8, 2.5, 1]), True)
    with pytest.raises(UserError, match=rf"ct_0_0000.nii.gz: {message}"):
      msd.load(str(tmp_path), str(tmp_path / "cache"))
  _write_case(str(tmp_path), "ct_0", image, labels, np.diag([0.8, 0.8, 2.5, 1]), True)
  _write_case(str(tmp_path), "ct_0", image, labels * 3, np.diag([0.8, 0.8, 2.5, 1]))
  with pytest.raises(UserError, match=r"ct_0.nii.gz: label values \[3\] are not among"):
    msd.load(str(tmp_path), str(tmp_path / "cache"))
  os.remove(tmp_path / "labelsTr" / "ct_1.nii.gz")
  with pytest.raises(UserError, match="label file .*ct_1.nii.gz .* not found"):
    msd.load(str(tmp_path), str(tmp_path / "cache"))
  with pytest.raises(UserError, match="does not exist"):
    msd.load(str(tmp_path / "nowhere"), str(tmp_path / "cache"))


def semi_config():
  """The 3-D smoke config, trained by CPS on half the cases labeled."""
  from configs import unet3d_synthetic

  config = unet3d_synthetic.get_config("smoke")
  config.method.update(name="cps", labeled_fraction=0.5)
  return config


def test_msd_reads_unlabeled_cases_and_sites(tmp_path):
  """imagesTs cases (dataset.json's test list) are prepared without labels into the
  ``unlabeled`` split; a sites CSV gives each labeled case its site; a case missing
  from it is named."""
  rng = np.random.default_rng(2)
  names = [f"mr_{i}" for i in range(5)]
  for n in [*names, "mr_x", "mr_y"]:
    labels = np.zeros((8, 8, 4), np.uint8)
    labels[2:5, 2:5, 1:3] = 1
    _write_case(str(tmp_path), n, rng.normal(size=(8, 8, 4)).astype(np.float32), labels, np.eye(4))
  for n in ("mr_x", "mr_y"):  # move to imagesTs, drop the labels
    os.makedirs(tmp_path / "imagesTs", exist_ok=True)
    os.replace(tmp_path / "imagesTr" / f"{n}.nii.gz", tmp_path / "imagesTs" / f"{n}.nii.gz")
    os.remove(tmp_path / "labelsTr" / f"{n}.nii.gz")
  _describe(str(tmp_path), names, test=["./imagesTs/mr_x.nii.gz", "./imagesTs/mr_y.nii.gz"])
  (tmp_path / "sites.csv").write_text(
    "case,site\n" + "".join(f"{n},h{i % 2}\n" for i, n in enumerate(names))
  )
  data = msd.load(str(tmp_path), str(tmp_path / "cache"), sites=str(tmp_path / "sites.csv"))
  assert data.splits["unlabeled"] == ["mr_x", "mr_y"]
  assert not data.cases["mr_x"]["labels"].any() and data.cases["mr_x"]["image"].shape[-1] == 1
  assert sorted(sum((data.splits[s] for s in ("train", "validation", "test")), [])) == names
  assert [data.cases[n]["site"] for n in names] == [0, 1, 0, 1, 0]
  assert msd.load(str(tmp_path), str(tmp_path / "c2"), unlabeled=False).splits["unlabeled"] == []
  (tmp_path / "sites.csv").write_text("mr_0,a\n")
  with pytest.raises(UserError, match="sites.csv: no site for case 'mr_1'"):
    msd.load(str(tmp_path), str(tmp_path / "cache"), sites=str(tmp_path / "sites.csv"))


def test_inspect_fingerprints_a_volume_dataset(tmp_path):
  """``jaxseg inspect`` on volumes: spacings and anisotropy as stored, foreground
  intensities before normalisation, voxels per class, and the run's plan (patch,
  anisotropic pooling)."""
  from configs import unet3d_hippocampus  # noqa: PLC0415
  from jaxseg.run import fingerprint  # noqa: PLC0415

  rng, names, foreground = np.random.default_rng(1), [f"ct_{i}" for i in range(5)], []
  for n in names:
    image = (rng.normal(size=(12, 12, 6)) * 100).astype(np.int16)
    labels = np.zeros((12, 12, 6), np.uint8)
    labels[3:7, 3:8, 1:4] = 1
    foreground.append(image[labels > 0])
    _write_case(str(tmp_path), n, image, labels, np.diag([0.8, 0.8, 2.5, 1]))
  _describe(str(tmp_path), names)
  config = unet3d_hippocampus.get_config("smoke")
  config.data.update(dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
  config.data.kwargs.folds = 5
  config.model.kwargs.widths = (4, 8, 16)
  config.volume.patch_size = ()
  report = fingerprint.run(config, str(tmp_path / "f.json"))
  with open(tmp_path / "f.json") as f:
    assert json.load(f)["plan"] == report["plan"]
  p = report["profile"]
  assert p["median_spacing"] == pytest.approx([0.8, 0.8, 2.5])
  assert p["anisotropy"] == pytest.approx(2.5 / 0.8)
  assert p["voxels_per_class"]["1"] == 5 * 4 * 5 * 3
  values = np.concatenate(foreground).astype(np.float64)
  assert p["foreground_intensity"]["CT"]["mean"] == pytest.approx(values.mean())
  assert report["plan"]["pooling"] == [[2, 2, 1], [2, 2, 2]]
  assert p["cases"] == {"train": 3, "validation": 1, "test": 1, "unlabeled": 0}
  config.data.kwargs.max_cases = 1  # too few for folds: a fingerprint still
  one = fingerprint.run(config, str(tmp_path / "one.json"))
  assert one["profile"]["cases"]["train"] == 1 and "too few for 5 folds" in one["notes"][0]


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory):
  config = semi_config()
  workdir = str(tmp_path_factory.mktemp("vol") / "full")
  return config, workdir, main.train(config, workdir)


def test_3d_semi_supervised_runs_are_reproducible_and_resume_exactly(synthetic_run, tmp_path):
  """A 3-D CPS run killed after step 4 (last checkpoint: 3), resumed: the
  uninterrupted run's networks, bit for bit (the first 3 steps also replay the full
  run exactly)."""
  config, _, state = synthetic_run
  assert set(state.nets) == {"a", "b"}
  partial = main.train(config, str(tmp_path), stop_after=4)
  assert int(partial.step) == 4
  resumed = main.train(config, str(tmp_path))
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", ["mean_teacher", "rwp", "pseudoseg"])
def test_every_method_steps_on_volumes(method):
  """The methods' steps take 3-D batches (shapes only: no compilation); labeled
  fractions split the training cases by case."""
  from jaxseg.run import experiment, volume  # noqa: PLC0415

  config = semi_config()
  config.method.name = method
  exp = experiment.Experiment(config)
  labeled, unlabeled = volume.split_labeled(exp.volumes.data.splits["train"], 0.5, 0)
  assert len(labeled) + len(unlabeled) == len(exp.volumes.data.splits["train"])
  assert not set(labeled) & set(unlabeled)
  state = jax.eval_shape(exp.init)
  batch = {"image": jnp.zeros((2, 16, 16, 8, 1)), "labels": jnp.zeros((2, 16, 16, 8), int)}
  step = lambda s, k: exp.method.step(exp.ctx, s, batch, batch, k)  # noqa: E731
  new, metrics = jax.eval_shape(step, state, jax.random.key(0))
  assert jax.tree.map(lambda a: a.shape, new) == jax.tree.map(lambda a: a.shape, state)
  assert metrics["loss"].shape == ()


def test_3d_fedwep_is_reproducible_and_resumes_exactly(tmp_path, monkeypatch):
  """FedWeP-Real label-at-server on volumes (the server trains on its cases and probes
  the seed pairs with their patches; 2 clients holding cases, patches drawn in the
  round): a run stopped by SIGTERM in round 1 checkpoints it (no validation there)
  and, resumed, ends with the uninterrupted run's global model, having drawn the same
  seed pairs; its communication is what the method sends."""
  from configs import unet3d_synthetic  # noqa: PLC0415
  from configs.fed_common import federated, smoke_fed  # noqa: PLC0415
  from jaxseg.errors import Preempted  # noqa: PLC0415

  config = federated(unet3d_synthetic.get_config("smoke"))
  config.method.update(name="rwp", labeled_fraction=0.5)
  smoke_fed(config)
  config.fed.update(num_clients=2, unroll=1, scenario="label_at_server")
  config.fed.seed_search.probe = "real"
  config.train.eval_every = 2  # one validation (sliding windows), at the end
  full = main.train(config, str(tmp_path / "full"))
  sigterm_at(monkeypatch, 1)
  with pytest.raises(Preempted, match="SIGTERM after step 1"):
    main.train(config, str(tmp_path / "part"))
  monkeypatch.undo()
  resumed = main.train(config, str(tmp_path / "part"))
  assert int(full.step) == 2
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)

  def seeds(run):
    lines = [json.loads(x) for x in open(tmp_path / run / "metrics.jsonl")]
    return [(r["step"], r["seed_a"], r["seed_b"]) for r in lines if r["split"] == "train"]

  assert sorted(set(seeds("part"))) == seeds("full") and len(seeds("full")) == 2
  assert all(a != b for _, a, b in seeds("full"))
  with open(tmp_path / "full" / "communication.json") as f:
    comm = json.load(f)
  assert comm["text"] == "50% + 8 B seeds" and comm["down_bytes"] == comm["up_bytes"] + 8
  assert "labeled images, trained" in open(tmp_path / "full" / "clients.md").read()


def test_3d_training_draws_the_same_batches_on_1_2_and_4_devices():
  """Data parallelism on volumes: the patch feed draws bitwise the same global batches
  on 1, 2 and 4 devices, and a step on 4 devices ends at the one-device parameters
  (up to the order of sums)."""
  code = """
import jax, numpy as np
jax.config.update("jax_num_cpu_devices", 4)
from configs import unet3d_synthetic
from jaxseg.run import feed, train
from jaxseg.run.experiment import Experiment
out, drawn = {}, {}
for devices in (1, 2, 4):
  config = unet3d_synthetic.get_config("smoke")
  config.optim.update(name="sgd", lr=0.05, schedule="constant", warmup_steps=0)
  config.train.batch_size = 4
  config.mesh.devices = devices
  exp = Experiment(config, splits=("train",))
  mesh = train.make_mesh(config)
  data = feed.make(exp, mesh)
  drawn[devices] = [jax.device_get(jax.jit(data.batch)(data.next(), i)) for i in range(3)]
  if devices != 2:
    init, step = train.compile_step(exp, mesh, data)
    out[devices] = jax.device_get(step(init(), data.next(), exp.train_key)[0].nets["model"].params)
close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
for devices in drawn:
  jax.tree.map(np.testing.assert_array_equal, drawn[1], drawn[devices])
jax.tree.map(close, out[1], out[4])
print("3-D data parallel ok")
"""
  env = {**os.environ, "PYTHONPATH": REPO}
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "3-D data parallel ok" in result.stdout


def test_3d_eval_writes_per_case_metrics(synthetic_run):
  _, workdir, _ = synthetic_run
  result = main.evaluate(workdir)
  with open(os.path.join(workdir, "test_cases.csv")) as f:
    rows = list(csv.DictReader(f))
  assert result["cases"] == len(rows) == 2
  assert result["dice"]["mean"] == pytest.approx(np.mean([float(r["dice_1"]) for r in rows]))
  assert {"hd95", "asd", "nsd", "iou"} <= set(result)


@pytest.mark.skipif(not os.path.isdir(HIPPOCAMPUS), reason="needs ../shared/data")
def test_predict_writes_aligned_nifti_whose_dice_is_evals(tmp_path):
  """A hippocampus case and an anisotropic (1x1x3 mm), flipped, axis-permuted copy of
  it: ``predict`` writes each with the input's shape and affine, and its Dice against
  the case's label equals what ``eval`` reports for that case."""
  from configs import unet3d_hippocampus

  source = str(tmp_path / "data")
  names = [f"hippocampus_{i:03d}" for i in (1, 3, 4, 6, 7, 8)]
  for folder in ("imagesTr", "labelsTr"):
    os.makedirs(os.path.join(source, folder))
    for n in names:
      shutil.copy(os.path.join(HIPPOCAMPUS, folder, f"{n}.nii.gz"), os.path.join(source, folder))
  image, affine, _ = volumes.read(os.path.join(source, "imagesTr", f"{names[0]}.nii.gz"))
  labels = volumes.read(os.path.join(source, "labelsTr", f"{names[0]}.nii.gz"))[0]
  copy = _anisotropic_copy(image, labels.astype(np.uint8), affine)
  _write_case(source, "hippocampus_900", copy[0], copy[1], copy[2])
  _describe(source, [*names, "hippocampus_900"], {"0": "bg", "1": "anterior", "2": "posterior"})
  config = unet3d_hippocampus.get_config("smoke")
  config.data.dir = source
  all_names = sorted([*names, "hippocampus_900"])
  fold = next(
    k for k in range(3) if "hippocampus_900" in msd.split_cases(all_names, 3, k, 0.1, 0)["test"]
  )
  config.data.kwargs.update(max_cases=0, folds=3, fold=fold, target_spacing=(1.0, 1.0, 1.0))
  config.train.update(steps=2, eval_every=2)  # what is checked is predict against eval
  config.volume.update(window_batch=8, overlap=0.0)  # fewer windows: the same check
  workdir = str(tmp_path / "run")
  main.train(config, workdir)
  main.evaluate(workdir)
  with open(os.path.join(workdir, "test_cases.csv")) as f:
    rows = {r["case"]: r for r in csv.DictReader(f)}
  inputs = tmp_path / "inputs"  # the test fold's images, predicted in one call
  inputs.mkdir()
  for name in rows:
    shutil.copy(os.path.join(source, "imagesTr", f"{name}.nii.gz"), inputs)
  written = predict.run([workdir], str(inputs), str(tmp_path / "pred"))
  checked = 0
  for out in written:
    name = os.path.basename(out)[: -len(".nii.gz")]
    written, truth = nib.load(out), nib.load(os.path.join(source, "labelsTr", f"{name}.nii.gz"))
    assert written.shape == truth.shape and np.allclose(written.affine, truth.affine)
    pred = np.asarray(written.dataobj)
    spacing = volumes.spacing_of(truth.affine)
    dice = evaluate.case_scores(pred, np.asarray(truth.dataobj), spacing, 3, 1.0)
    assert dice["dice_1"] == pytest.approx(float(rows[name]["dice_1"]))
    assert dice["dice_2"] == pytest.approx(float(rows[name]["dice_2"]))
    checked += name == "hippocampus_900"
  assert checked == 1, f"the anisotropic copy is not in the test fold: {sorted(rows)}"
