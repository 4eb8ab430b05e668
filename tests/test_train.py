"""The training loop: artefacts, determinism, exact resume, divergence, bad input."""

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxseg import main
from jaxseg.errors import UserError
from jaxseg.run import predict, skeleton
from jaxseg.run.checkpoint import Checkpoints
from jaxseg.run.experiment import Experiment
from tests.conftest import make_tiny_config, sigterm_at

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.nets))]


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
  """One uninterrupted run of the tiny config, shared by the tests below: its training
  data on the device (what ``auto`` picks for it), batches drawn inside the step."""
  config = make_tiny_config()
  config.data.placement = "device"
  workdir = str(tmp_path_factory.mktemp("reference"))
  return config, workdir, main.train(config, workdir)


def test_run_writes_every_artefact(reference_run):
  _, workdir, state = reference_run
  assert int(state.step) == 6
  for name in (
    "config.json",
    "metrics.jsonl",
    "validation_overlays.png",
    "learning_curves.png",
    "tensorboard",
  ):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert os.listdir(os.path.join(workdir, "checkpoints"))
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows if r["split"] == "validation"] == [3, 6]
  assert all(np.isfinite(r["loss"]) for r in rows)
  assert json.load(open(os.path.join(workdir, "config.json")))["model"]["name"] == "unet"


def test_learning_curves_are_drawn_at_most_once_a_minute_and_at_the_end(tmp_path, monkeypatch):
  from jaxseg.run import loop  # noqa: PLC0415

  drawn = []
  monkeypatch.setattr(loop.pictures, "save_learning_curves", lambda *a: drawn.append(a))
  logger = loop.Logger(str(tmp_path))
  for step in (1, 2, 3):
    logger.write(step, "train", {"loss": 1.0})
    logger.write(step, "validation", {"loss": 1.0, "dice": 0.5})
  assert drawn == []  # within the first minute
  logger.drawn -= logger.CURVES_EVERY_S
  logger.write(4, "validation", {"loss": 1.0, "dice": 0.5})
  assert len(drawn) == 1
  logger.write(5, "train", {"loss": 1.0})
  logger.close()  # nothing validated since: not drawn again
  assert drawn == [(logger.path, str(tmp_path / "learning_curves.png"))]
  logger = loop.Logger(str(tmp_path))
  logger.write(6, "validation", {"loss": 1.0, "dice": 0.5})
  logger.close()
  assert len(drawn) == 2


def test_same_config_is_bitwise_reproducible(reference_run, tmp_path):
  config, _, state = reference_run
  again = main.train(config, str(tmp_path))
  for a, b in zip(_leaves(state), _leaves(again), strict=True):
    np.testing.assert_array_equal(a, b)


def test_interrupted_run_resumes_exactly(reference_run, tmp_path):
  config, _, state = reference_run
  # Stop after 4 steps without saving (as a kill would): the last checkpoint is step 3.
  partial = main.train(config, str(tmp_path), stop_after=4)
  assert int(partial.step) == 4
  resumed = main.train(config, str(tmp_path))
  assert int(resumed.step) == 6
  for a, b in zip(_leaves(state), _leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)


def test_host_path_with_workers_is_reproducible_and_resumes_exactly(reference_run, tmp_path):
  """grain with 2 worker processes, prefetched to the device: a run stopped after 4
  steps resumes (from grain's iterator state) to the uninterrupted run's parameters,
  bit for bit — so the stopped run also drew the uninterrupted run's first 4 batches
  (two runs with workers are bitwise equal)."""
  config = make_tiny_config()
  config.data.update(placement="host", workers="2")
  full = main.train(config, str(tmp_path / "full"))
  main.train(config, str(tmp_path / "cut"), stop_after=4)
  resumed = main.train(config, str(tmp_path / "cut"))
  for a, b in zip(_leaves(full), _leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)


def test_truncated_latest_checkpoint_is_set_aside_and_the_run_resumes(reference_run, tmp_path):
  """Latest checkpoint 6 truncated, 3 intact beside it: the resume reports 6, renames
  it ``6.damaged``, continues from 3 and ends at the uninterrupted parameters; with
  every checkpoint damaged it stops with one line saying so."""
  config, _, state = reference_run
  workdir, ckdir = str(tmp_path / "run"), tmp_path / "run" / "checkpoints"
  main.train(config, workdir, stop_after=3)  # saves step 3
  shutil.copytree(ckdir / "3", tmp_path / "3")
  main.train(config, workdir)  # saves 6; the preservation policy drops 3 (no better Dice)
  if not (ckdir / "3").exists():
    shutil.copytree(tmp_path / "3", ckdir / "3")
  _truncate(ckdir / "6")
  resumed = main.train(config, workdir)
  assert (ckdir / "6.damaged").is_dir()
  for a, b in zip(_leaves(state), _leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)
  assert main.evaluate(workdir)["cases"] == 4  # eval restores the new step 6
  for path in ckdir.iterdir():
    if path.name.isdigit():
      _truncate(path)
  with pytest.raises(UserError, match="no checkpoint in .* restores"):
    main.evaluate(workdir)
  names = sorted(p.name for p in ckdir.iterdir())
  assert "6.damaged+" in names and all(".damaged" in n for n in names), names


def _truncate(checkpoint) -> None:
  for path in checkpoint.rglob("*"):
    if path.is_file() and "d" in path.parts[-2:-1]:
      os.truncate(path, path.stat().st_size // 2)


def test_kill_during_an_async_save_keeps_the_previous_checkpoint(reference_run, tmp_path):
  """The process dies (SIGKILL-like ``os._exit``) right after the step-6 save is
  started, while orbax writes it in the background: a resume finds an intact
  checkpoint and ends at the uninterrupted run's parameters."""
  config, _, state = reference_run
  code = f"""
import os
from jaxseg import main
from jaxseg.run import checkpoint
from tests.conftest import make_tiny_config
save = checkpoint.Checkpoints.save
def save_then_die(self, step, *args):
  save(self, step, *args)
  if step == 6:
    os._exit(9)
checkpoint.Checkpoints.save = save_then_die
main.train(make_tiny_config(), {str(tmp_path)!r})
"""
  env = {**os.environ, "PYTHONPATH": REPO}
  killed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert killed.returncode == 9, killed.stderr[-3000:]
  assert any(p.name in ("3", "6") for p in (tmp_path / "checkpoints").iterdir())
  resumed = main.train(config, str(tmp_path))
  for a, b in zip(_leaves(state), _leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)


def _main_in_process(monkeypatch, args) -> int:
  """The exit status of the command line run in this process (flags reset around it)."""
  from absl import flags  # noqa: PLC0415

  flags.FLAGS.unparse_flags()
  monkeypatch.setattr(sys, "argv", ["jaxseg", *args])
  try:
    with pytest.raises(SystemExit) as exit_:
      main.main()
  finally:
    flags.FLAGS.unparse_flags()
  return exit_.value.code


def _tiny_config_file(folder) -> str:
  """The reference run's config as a config file, for the command line."""
  path = folder / "tiny.py"
  path.write_text(
    "from tests.conftest import make_tiny_config\n"
    "def get_config():\n  c = make_tiny_config()\n  c.data.placement = 'device'\n  return c\n"
  )
  return str(path)


def test_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(
  reference_run, tmp_path, monkeypatch, capsys
):
  """No room for the checkpoint of step 6 (an injected full disk): exit 2, one line with
  the path and `No space left on device`; step 3's checkpoint intact, and the run
  resumes from it once there is room."""
  from jaxseg.run import checkpoint  # noqa: PLC0415

  config, _, state = reference_run
  workdir = tmp_path / "run"
  real, calls = shutil.disk_usage, []

  def disk_usage(path):
    calls.append(path)
    usage = real(path)
    return usage._replace(free=2**20) if len(calls) > 1 else usage

  monkeypatch.setattr(checkpoint.shutil, "disk_usage", disk_usage)
  args = ["train", "--config", _tiny_config_file(tmp_path), "--workdir", str(workdir)]
  code = _main_in_process(monkeypatch, args)
  err = capsys.readouterr().err.strip()
  assert code == 2 and "Traceback" not in err, err
  line = err.splitlines()[-1]
  assert f"cannot write checkpoint {workdir}/checkpoints/6: No space left on device" in line
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3"]
  monkeypatch.undo()
  resumed = main.train(config, str(workdir))
  for a, b in zip(_leaves(state), _leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)


def test_sigterm_checkpoints_the_step_reached_and_the_run_resumes_exactly(
  reference_run, tmp_path, monkeypatch, capsys
):
  """`jaxseg train` (the command line, in this process) gets SIGTERM as step 4 runs
  (between validations at 3 and 6): it finishes the step, checkpoints it, exits with
  status 3 in one line; the next run (which also clears a temporary folder a killed
  save left) ends where the uninterrupted one does."""

  config, _, state = reference_run
  workdir = tmp_path / "run"
  sigterm_at(monkeypatch, 4)
  args = ["train", "--config", _tiny_config_file(tmp_path), "--workdir", str(workdir)]
  code = _main_in_process(monkeypatch, args)
  line = capsys.readouterr().err.strip().splitlines()[-1]
  assert code == 3, line
  assert line.startswith("jaxseg: stopped by SIGTERM after step 4: checkpoint "), line
  monkeypatch.undo()
  ckdir = workdir / "checkpoints"
  assert sorted(p.name for p in ckdir.iterdir()) == ["3", "4"]
  (ckdir / "7.orbax-checkpoint-tmp-1234").mkdir()  # what a kill mid-save leaves
  resumed = main.train(config, str(workdir))
  assert not (ckdir / "7.orbax-checkpoint-tmp-1234").exists()
  for a, b in zip(_leaves(state), _leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)


def test_a_truncated_prepared_array_is_decoded_again(reference_run, tmp_path, monkeypatch, capsys):
  """The prepared training images cut short (a disk that filled up, a copy cut short):
  `jaxseg train` says so in one line, decodes them again and ends where the run on the
  fresh cache did."""
  from jaxseg.data import arrays as data  # noqa: PLC0415
  from jaxseg.data import pipeline  # noqa: PLC0415

  config, _, state = reference_run
  arrays = os.path.join(pipeline.prepare(config.data).data_dir, "arrays", "train")
  image = os.path.join(arrays, "image.npy")
  size = os.path.getsize(image)
  with open(image, "r+b") as f:
    f.truncate(size - 100)
  workdir = tmp_path / "run"
  args = ["train", "--config", _tiny_config_file(tmp_path), "--workdir", str(workdir)]
  assert _main_in_process(monkeypatch, args) in (0, None)  # sys.exit() of a finished run
  out = capsys.readouterr().out
  notes = [line for line in out.splitlines() if "damaged" in line]
  assert notes == [
    f"Prepared arrays {arrays} are damaged (image.npy has {size - 100:,} bytes, "
    f"{size:,} were written); decoding them again."
  ], out
  assert os.path.getsize(image) == size
  os.remove(os.path.join(arrays, "manifest.json"))  # as an earlier jaxseg left them
  data.open_split(pipeline.prepare(config.data), "train")
  assert capsys.readouterr().out.splitlines()[-1] == (
    f"Prepared arrays {arrays} predate manifest.json; decoding them again, once."
  )
  assert data.damage(arrays, [f"{name}.npy" for name in data.FIELDS]) is None
  resumed = main.train(config, str(workdir))  # the finished run, restored
  for a, b in zip(_leaves(state), _leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)


def test_an_altered_prepared_array_is_found(tmp_path):
  """A flipped byte (size unchanged) is caught by the manifest's CRC-32."""
  from jaxseg.data import arrays  # noqa: PLC0415

  np.save(tmp_path / "image.npy", np.arange(10, dtype=np.uint8))
  arrays._write_manifest(str(tmp_path), ["image.npy"])
  assert arrays.damage(str(tmp_path), ["image.npy"]) is None
  with open(tmp_path / "image.npy", "r+b") as f:
    f.seek(-1, os.SEEK_END)
    f.write(b"\xff")
  assert "altered" in arrays.damage(str(tmp_path), ["image.npy"])
  assert "is not in" in arrays.damage(str(tmp_path), ["mask.npy"])


def test_a_relative_workdir_checkpoints(tmp_path, monkeypatch):
  """`--workdir W` relative to the current folder (orbax takes absolute paths only)."""
  from jaxseg.run.checkpoint import Checkpoints  # noqa: PLC0415

  monkeypatch.chdir(tmp_path)
  ckpts = Checkpoints("W/checkpoints")
  ckpts.save(1, {"x": np.zeros(2, np.float32)}, {}, {"dice": 0.5})
  ckpts.close()
  assert (tmp_path / "W" / "checkpoints" / "1").is_dir()


def test_eval_prints_test_metrics(reference_run, capsys):
  _, workdir, _ = reference_run
  result = main.evaluate(workdir)
  out = capsys.readouterr().out
  assert "| dice |" in out and "| hd95 |" in out
  assert "| dice_1 |" not in out and "dice_1" in result  # one class: the same row, once
  assert result["cases"] == 4
  assert 0.0 <= result["dice"]["mean"] <= 1.0
  assert os.path.exists(os.path.join(workdir, "test_metrics.json"))
  # One row per image (the volumes' schema): its Dice agrees with the counts' Dice.
  assert "| asd |" in out and "| nsd |" in out
  with open(os.path.join(workdir, "test_cases.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [r["image"] for r in rows] == ["0", "1", "2", "3"]
  assert {"dice_1", "iou_1", "hd95_1", "asd_1", "nsd_1"} <= set(rows[0])
  dice = np.mean([float(r["dice_1"]) for r in rows])
  assert dice == pytest.approx(result["dice"]["mean"], abs=1e-6)
  # The table's distances are the cases' (one computation): a missed image counts as
  # its diagonal, and is counted.
  config, _, _ = reference_run
  size = config.data.kwargs.image_size
  for name in ("hd", "hd95"):
    values = np.array([float(r[f"{name}_1"]) for r in rows])
    bounded = np.where(np.isfinite(values), values, np.hypot(size, size))
    assert result[name]["mean"] == pytest.approx(bounded.mean())
  assert result["hd_missed"] == int(np.sum(~np.isfinite(values)))


def test_predict_images_one_run_or_an_ensemble(reference_run, tmp_path):
  """Images of a size that is not the tile's nor a multiple of the stride; the same run
  twice is an ensemble that writes the same masks; a folder without images is refused."""
  _, workdir, _ = reference_run
  rng = np.random.default_rng(0)
  os.makedirs(tmp_path / "in")
  for name, shape in (("a", (37, 30)), ("b", (70, 45))):
    Image.fromarray(rng.integers(0, 255, shape, np.uint8)).save(tmp_path / "in" / f"{name}.png")
  one = predict.run([workdir], str(tmp_path / "in"), str(tmp_path / "one"))
  two = predict.run([workdir, workdir], str(tmp_path / "in"), str(tmp_path / "two"))
  for a, b, shape in zip(one, two, ((37, 30), (70, 45)), strict=True):
    mask = np.asarray(Image.open(a))
    assert mask.shape == shape and set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask, np.asarray(Image.open(b)))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(UserError, match="no image files"):
    predict.run([workdir], str(tmp_path / "empty"), str(tmp_path / "out"))


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tiny_config, tmp_path):
  """A run that diverges after its checkpoint of step 4 names the step and that
  checkpoint, which still holds the parameters step 4 had."""
  tiny_config.train.update(steps=4, eval_every=2)
  tiny_config.optim.grad_clip = 0.0
  good = main.train(tiny_config, str(tmp_path))
  tiny_config.train.steps = 8
  tiny_config.optim.lr = 1e30  # diverges within a few steps of the resumed run
  with pytest.raises(UserError, match=r"loss is (nan|inf) at step [5-8] .*step 4 is intact"):
    main.train(tiny_config, str(tmp_path))
  exp = Experiment(skeleton.load_config(str(tmp_path)))
  ckpts = Checkpoints(os.path.join(tmp_path, "checkpoints"), read_only=True, best=None)
  step, state, _ = ckpts.restore_usable(exp.abstract_state())
  assert step == 4
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(good.nets), state.nets)


def test_unknown_names_fail_before_any_work(tiny_config, tmp_path):
  for section, value, pattern in (
    ("model", "resnet", "model name 'resnet'"),
    ("loss", "focal", "loss name 'focal'"),
    ("data", "isbi", "dataset name 'isbi'"),
  ):
    config = tiny_config.copy_and_resolve_references()
    config[section].name = value
    with pytest.raises(ValueError, match=pattern):
      main.train(config, str(tmp_path / section))
    assert not os.path.exists(tmp_path / section / "checkpoints")


def test_unwritable_workdir(tiny_config, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  with pytest.raises(ValueError, match="workdir .*file/run.* is not writable"):
    main.train(tiny_config, str(blocker / "run"))


def _cli(*args, timeout=300):
  env = {**os.environ, "PYTHONPATH": REPO}
  return subprocess.run(
    [sys.executable, "-m", "jaxseg", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_a_busy_workdir_is_refused_and_a_dead_runs_lock_taken_over(tmp_path, monkeypatch, capsys):
  """A second run on a workdir whose run is alive: exit 2, one line naming the holder;
  after kill -9 of the holder the workdir is free (the OS drops its lock)."""
  import time  # noqa: PLC0415

  from jaxseg.run import skeleton  # noqa: PLC0415

  holder = subprocess.Popen(
    [sys.executable, "-c", "import sys, time\nfrom jaxseg.run import skeleton\n"
     f"skeleton.lock_workdir({str(tmp_path)!r}); print('held', flush=True); time.sleep(600)"],
    cwd=REPO, stdout=subprocess.PIPE, text=True,
  )  # fmt: skip
  try:
    assert holder.stdout.readline().strip() == "held"
    args = ["train", "--config", "configs/unet_synthetic.py:smoke", "--workdir", str(tmp_path)]
    code = _main_in_process(monkeypatch, args)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2, line
    assert "is in use by jaxseg on host" in line and f"(pid {holder.pid})" in line, line
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  time.sleep(0.1)
  skeleton.lock_workdir(str(tmp_path))  # taken over: no error
  assert f"pid {os.getpid()}" in (tmp_path / ".lock").read_text()


def test_cli_wrong_override_type_names_key_and_type(tmp_path):
  result = _cli(
    "train",
    "--config",
    "configs/unet_synthetic.py:smoke",
    "--workdir",
    str(tmp_path),
    "--config.train.steps=many",
  )
  assert result.returncode != 0
  assert "config.train.steps" in result.stderr and "int" in result.stderr


def test_cli_unknown_config_argument(tmp_path):
  result = _cli("train", "--config", "configs/unet_synthetic.py:huge", "--workdir", str(tmp_path))
  assert result.returncode != 0 and "unknown argument 'huge'" in result.stderr


def test_cli_smoke_train_and_eval(tmp_path):
  """README command (a) on the smoke config, then `jaxseg eval`, as a user runs them."""
  workdir = str(tmp_path / "run")
  train = _cli(
    "train",
    "--config",
    "configs/unet_synthetic.py:smoke",
    "--workdir",
    workdir,
    "--config.train.steps=10",
    "--config.train.eval_every=5",
  )
  assert train.returncode == 0, train.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  best = max(
    (json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))),
    key=lambda r: r.get("dice", -1),
  )
  assert train.stdout.splitlines()[-1] == (
    f"jaxseg: the run in {workdir} finished: best validation Dice {best['dice']:.4f} at step "
    f"{best['step']}; next: jaxseg eval --workdir {workdir}"
  )
  again = _cli(
    "train", "--config", "configs/unet_synthetic.py:smoke", "--workdir", workdir,
    "--config.train.steps=10", "--config.train.eval_every=5",
  )  # fmt: skip
  assert again.returncode == 0 and f"{workdir} was already complete" in again.stdout, again.stderr
  evaluate = _cli("eval", "--workdir", workdir)
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  assert "| dice |" in evaluate.stdout
  assert evaluate.stdout.splitlines()[-1] == (
    f"written to {workdir}/test_metrics.json (its first images drawn in "
    f"{workdir}/test_overlays.png; one row per case in {workdir}/test_cases.csv)"
  )
  assert os.path.getsize(os.path.join(workdir, "test_overlays.png")) > 0
  for run in (train, evaluate):  # quiet: no absl/TFDS/orbax lines a user cannot act on
    text = run.stdout + run.stderr
    assert not re.search(r"^[WI]\d{4} ", text, re.M) and "Downloading" not in text, text[-2000:]


def test_semi_supervised_run_resumes_exactly(tmp_path):
  """Two loaders (labeled, unlabeled) and two networks resume bit for bit too."""
  import ml_collections

  config = make_tiny_config()
  config.method = ml_collections.ConfigDict(
    dict(name="cps", kwargs={"weight": 1.5}, labeled_fraction=0.5, unlabeled_batch_size=4)
  )
  config.train.batch_size = 4
  full = main.train(config, str(tmp_path / "full"))
  main.train(config, str(tmp_path / "cut"), stop_after=4)
  resumed = main.train(config, str(tmp_path / "cut"))
  for a, b in zip(jax.tree.leaves(full.nets), jax.tree.leaves(resumed.nets), strict=True):
    np.testing.assert_array_equal(a, b)
  assert main.evaluate(str(tmp_path / "full"))["cases"] == 4
