"""Mistakes on the command line, in a config or in the data: one line, exit status 2."""

import os
import subprocess
import sys

import pytest
from absl import flags

from jaxseg import main
from jaxseg.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = f"{REPO}/configs/unet_synthetic.py:smoke"
FED = f"{REPO}/configs/fedavg_covid_ct.py:synthetic_smoke"
CPS = f"{REPO}/configs/cps_covid_ct.py:synthetic_smoke"
VOLUME = f"{REPO}/configs/unet3d_synthetic.py:smoke"


@pytest.fixture(autouse=True)
def _fresh_flags():
  yield
  flags.FLAGS.unparse_flags()


@pytest.mark.parametrize(
  "args, message",
  [
    (
      ["train", f"--config={SMOKE}", "--workdir=W", "--config.train.stepz=3"],
      "unknown key config.train.stepz (did you mean config.train.steps?)",
    ),
    (
      ["train", f"--config={SMOKE}", "--workdir=W", "--config.trian.steps=3"],
      "unknown key config.trian (did you mean config.train?)",
    ),
    (
      ["train", f"--config={SMOKE}", "--workdir=W", "--config.train.steps=abc"],
      "flag --config.train.steps=abc: invalid literal for int() with base 10: 'abc'",
    ),
    (
      ["train", f"--config={SMOKE[:-1]}", "--workdir=W"],
      "unknown argument 'smok'; known: 'smoke'.",
    ),
    (
      ["train", f"--config={REPO}/configs/nope.py", "--workdir=W"],
      f"--config={REPO}/configs/nope.py: [Errno 2] No such file or directory",
    ),
    (["train", f"--config={SMOKE}"], "jaxseg train: --workdir is required."),
    (
      ["train", f"--config={SMOKE}", "--workdir=W", "--bogus=1"],
      "Unknown command line flag 'bogus'",
    ),
    (["eval", "--workdir=/no/such/run"], "'/no/such/run' is not a jaxseg run directory."),
    (
      ["train", f"--config={SMOKE}", "--workdir=W", "--config.model.name=resnet"],
      "Unknown model name 'resnet'",
    ),
    (
      [
        "train",
        f"--config={REPO}/configs/unet_covid_ct.py:smoke",
        "--workdir=W",
        "--config.data.dir=/no/such/data",
      ],
      "/no/such/data",
    ),
    (
      ["train", f"--config={FED}", "--workdir=W", "--config.fed.num_clients=40"],
      "config.fed.num_clients=40: need 1 <= clients <= 32 (the images to partition).",
    ),
    (
      ["train", f"--config={CPS}", "--workdir=W", "--config.method.labeled_fraction=0.001"],
      "config.method.labeled_fraction=0.001 of 32 training images leaves no labeled example",
    ),
    (
      [
        "train",
        f"--config={SMOKE}",
        "--workdir=W",
        "--config.data.kwargs.num_validation=0",
        "--config.data.validation_fraction=0.0",
      ],
      "config.data.validation_fraction=0.0 leaves no validation or no training examples",
    ),
    (
      ["train", f"--config={SMOKE}", "--workdir=W", "--config.optim.lr=1e30"],
      "Training diverged: loss is nan at step",
    ),
    (  # a federated run places client data by config.fed.placement
      ["train", f"--config={FED}", "--workdir=W", "--config.data.placement=host"],
      "unknown key config.data.placement",
    ),
    (
      ["train", f"--config={VOLUME}", "--workdir=W", "--config.augment.flip.p=0.5"],
      "unknown key config.augment.flip",
    ),
    (  # the command line reaches every cell, but not a key the sweep sets itself
      [
        "sweep",
        f"--config={REPO}/configs/fedwep_tables.py:smoke",
        "--workdir=W",
        "--config.seed=3",
      ],
      "--config.seed: the sweep sets seed in its cells",
    ),
  ],
)
def test_a_user_mistake_is_one_line_and_exit_status_2(args, message, tmp_path, capsys, monkeypatch):
  """The real command line, in this process (config overrides are read from sys.argv)."""
  args = [a.replace("--workdir=W", f"--workdir={tmp_path / 'run'}") for a in args]
  monkeypatch.setattr(sys, "argv", ["jaxseg", *args])
  with pytest.raises(SystemExit) as exit_:
    main.main()
  err = capsys.readouterr().err.strip()
  assert exit_.value.code == 2, err
  # One line (after the progress bar, for an error found while training), no traceback.
  assert err.splitlines()[-1].startswith("jaxseg: error: ") and "Traceback" not in err, err
  assert message in err.splitlines()[-1], err
  if args[0] == "train":  # a failed first run leaves no workdir
    assert not os.path.exists(tmp_path / "run")


def _exit(monkeypatch, *args) -> int:
  monkeypatch.setattr(sys, "argv", ["jaxseg", *args])
  with pytest.raises(SystemExit) as exit_:
    main.main()
  return exit_.value.code


@pytest.mark.parametrize("command", main.COMMANDS)
def test_each_command_has_its_own_help(command, capsys, monkeypatch):
  assert _exit(monkeypatch, command, "--help") == 0
  out = capsys.readouterr().out
  assert out.startswith(f"jaxseg {command} ") and len(out.splitlines()) <= 80, out
  assert all(f"--{name}:" in out for name in main.cli.FLAGS[command]), out
  other = {"train": "--cells:", "eval": "--config:", "bench": "--serve:"}.get(command)
  assert other is None or other not in out


def test_a_misspelt_command_is_named_with_the_nearest(capsys, monkeypatch):
  assert _exit(monkeypatch, "trian") == 2
  err = capsys.readouterr().err.strip()
  assert err == (
    "jaxseg: error: unknown command 'trian' (did you mean train?); commands: "
    + ", ".join(main.COMMANDS)
    + " (jaxseg --help)."
  )
  assert _exit(monkeypatch, "--help") == 0 and "jaxseg train --config" in capsys.readouterr().out


def test_config_prints_the_resolved_config():
  """Run as a user runs it (absl keeps the override flags of a config it parsed)."""
  jaxseg = os.path.join(os.path.dirname(sys.executable), "jaxseg")
  command = [jaxseg, "config", f"--config={SMOKE}", "--config.train.steps=7"]
  out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
  assert "  steps: 7\n" in out and "  eval_every: " in out


def test_verbose_shows_the_traceback(monkeypatch):
  misspelt = ["train", f"--config={SMOKE}", "--workdir=W", "--config.train.stepz=3"]
  for args, error in (
    (["eval", "--workdir=/no/such/run", "--verbose"], UserError),
    ([*misspelt, "--verbose"], AttributeError),  # ml_collections' own error, unchanged
  ):
    monkeypatch.setattr(sys, "argv", ["jaxseg", *args])
    with pytest.raises(error):
      main.main()
    flags.FLAGS.unparse_flags()


def test_a_section_its_run_kind_does_not_read_is_refused(tmp_path):
  """Sections are declared by ``config.kind`` and the kind of data; a config built in
  Python (no command-line override can add a section) is refused naming the section,
  and so is a centralized key a federated run cannot honour."""
  from configs import fedavg_covid_ct, unet3d_synthetic  # noqa: PLC0415

  volume = unet3d_synthetic.get_config("smoke")
  volume.infer = {"tile": 64}  # 2-D tiling: volumes use config.volume's sliding window
  with pytest.raises(UserError, match=r"^config.infer: a segmentation run of volumes does not"):
    main.train(volume, str(tmp_path / "v"))
  fed = fedavg_covid_ct.get_config("synthetic_smoke")
  fed.mesh = {"devices": 2}
  with pytest.raises(UserError, match=r"^config.mesh: a federated run of images does not"):
    main.train(fed, str(tmp_path / "f"))
  del fed["mesh"]
  with fed.data.unlocked():
    fed.data.placement = "host"
  with pytest.raises(UserError, match=r"^config.data.placement: a federated run does not read"):
    main.train(fed, str(tmp_path / "f"))
  volume = unet3d_synthetic.get_config("smoke")
  volume.kind = "federated"
  with pytest.raises(UserError, match=r"^config.fed: "):
    main.train(volume, str(tmp_path / "k"))


def test_sites_writes_a_federation_of_folders_and_says_the_next_command(tmp_path, capsys):
  from configs import fed_image_folders, unet_synthetic
  from jaxseg.data import pipeline
  from jaxseg.run import sites

  config = unet_synthetic.get_config("smoke")
  sites.run(config, 2, str(tmp_path / "D"))
  out = capsys.readouterr().out
  assert f"--config.data.dir={tmp_path}/D/server " in out and "jaxseg flower" in out
  counts = {
    folder: len(os.listdir(tmp_path / "D" / folder / "images"))
    for folder in ("site_1/train", "site_2/train", "server/train", "server/validation")
  }
  assert sum(counts[f] for f in ("site_1/train", "site_2/train", "server/train")) == 32
  assert counts["server/validation"] == 8 and min(counts.values()) > 0, counts
  server = fed_image_folders.get_config("cps,smoke").data
  server.dir = str(tmp_path / "D" / "server")
  splits = pipeline.load_splits(server)
  assert {k: len(v) for k, v in splits.items()} == {
    "train": counts["server/train"], "validation": 8, "test": 8
  }  # fmt: skip
  with pytest.raises(UserError, match="exists and is not empty"):
    sites.run(config, 2, str(tmp_path / "D"))


def test_sweep_cells_take_numbers_and_ranges():
  assert main.parse_cells(["0", "3", "36-38"]) == [0, 3, 36, 37, 38]
  with pytest.raises(UserError, match=r"--cells: expected .* found '3-x'"):
    main.parse_cells(["3-x"])
