"""The ``jaxseg`` command line: :data:`jaxseg.cli.USAGE` (``jaxseg --help``; each
command's flags: ``jaxseg COMMAND --help``)."""

import importlib
import importlib.util
import json
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxseg import cli
from jaxseg.cli import COMMANDS, USAGE
from jaxseg.errors import PREEMPTED_STATUS, Preempted, UserError

FLAGS = flags.FLAGS
BENCH_INPUT = "1x1x426x545"  # the SCAUnet paper's input for its size table
PIPELINE_INPUT = "8x1x256x256"
config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (FILE[:ARG]).", lock_config=True
)
flags.DEFINE_multi_string(
  "workdir",
  None,
  "Run directory (checkpoints, metrics, pictures); predict: repeat it for an ensemble of "
  "runs (e.g. the k folds).",
)
flags.DEFINE_string("split", "test", "Split that `jaxseg eval` scores.")
flags.DEFINE_string(
  "output", None, "predict: folder for the masks and overlays; synthesize: the new dataset."
)
flags.DEFINE_integer("num", 2500, "synthesize: image/mask pairs to generate.")
flags.DEFINE_string(
  "models", "unet", "bench: comma-separated model specs, name[:key=value,...] each."
)
flags.DEFINE_string(
  "input",
  None,
  "bench: input shape NxCxHxW (default 1x1x426x545); predict: an image file or a folder of images.",
)
flags.DEFINE_integer("batch", None, "bench: batch size (overrides N of --input).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "bench: compute dtype.")
flags.DEFINE_integer("repeats", 5, "bench: timed repeats after one warm-up call.")
flags.DEFINE_string("json", None, "bench, inspect: write the records to this JSON file.")
flags.DEFINE_string(
  "profile",
  None,
  "bench --models: write each model's optimized HLO and a jax.profiler trace of its "
  "forward pass and training step to this directory.",
)
flags.DEFINE_bool(
  "versus_torch",
  False,
  "bench: the reference U-Net's training step and inference in jaxseg, PyTorch eager "
  "and torch.compile, float32 and bfloat16, timed in turn (pip install -e '.[versus-torch]').",
)
flags.DEFINE_list(
  "clients",
  None,
  "bench: federated rounds/s with vmapped clients against a loop over clients, for these "
  "client counts (--config: a federated config, e.g. configs/fedavg_covid_ct.py:synthetic_smoke).",
)
flags.DEFINE_bool(
  "pipeline",
  False,
  "bench: images/s of training batches reaching the device, host path (by grain workers) "
  "and device path, and the train loop against its bare step (--config, default "
  "configs/unet_synthetic.py; --input BxCxHxW).",
)
flags.DEFINE_enum(
  "suite",
  None,
  ["accelerator"],
  "bench: the accelerator report (pipeline, reference step in float32/bfloat16, federated "
  "round, deterministic ops) as --json F and F.md.",
)
flags.DEFINE_list(
  "cells",
  None,
  "sweep: run only these cells (0-based, as the sweep lists them; ranges as 36-41) and "
  "write no table; "
  "a last `jaxseg sweep` without --cells tabulates (cells shared by several processes).",
)
flags.DEFINE_bool(
  "vmap_seeds",
  False,
  "sweep: train the seeds of each federated cell as one compiled program (a leading seed "
  "axis over the round); each seed still writes its own run.",
)
flags.DEFINE_bool(
  "tabulate",
  False,
  "sweep: run no cell, tabulate the finished ones (a sweep still going or cut short).",
)
flags.DEFINE_list(
  "sites", None, "flower: one data folder per site of a local deployment; sites: how many to write."
)
flags.DEFINE_list("fractions", None, "flower: each site's labeled fraction (--sites order).")
flags.DEFINE_string("superlink", None, "flower: the SuperLink of a real federation, HOST:PORT.")
flags.DEFINE_string("root_certificates", None, "flower: the CA certificate of a TLS SuperLink.")
flags.DEFINE_string(
  "serve",
  None,
  "flower: run a federation's SuperLink, its Fleet API for the sites on HOST:PORT "
  "(TLS, SuperNode keys), its operator API on 127.0.0.1 only (docs/flower.md).",
)
flags.DEFINE_string(
  "certificates", None, "flower --serve: a folder of ca.crt, server.pem, server.key."
)
flags.DEFINE_integer("operator_port", 9093, "flower --serve: the operators' port on 127.0.0.1.")
flags.DEFINE_list("register", None, "flower: register these sites' public keys (operators only).")
flags.DEFINE_string("site", None, "flower: run this site's SuperNode (--sites: its data folder).")
flags.DEFINE_string("key", None, "flower --site: the site's private key (its .pub registered).")
flags.DEFINE_bool("verbose", False, "Show the traceback of a user error too.")


RUNNERS = {  # config.kind -> the runner that trains it
  "segmentation": "jaxseg.run.train",
  "federated": "jaxseg.run.federated",
  "gan": "jaxseg.run.gan",
}


def train(config, workdir: str, *, stop_after: int | None = None):
  """Trains ``config`` in ``workdir`` with the runner of its ``config.kind``."""
  from jaxseg.run import skeleton  # noqa: PLC0415

  runner = importlib.import_module(RUNNERS[skeleton.kind(config)])
  return runner.train(config, workdir, stop_after=stop_after)


def evaluate(workdir: str, split: str = "test") -> dict:
  """``jaxseg eval``: the best checkpoint of ``workdir`` scored on ``split``."""
  from jaxseg.run import evaluate as runner  # noqa: PLC0415

  return runner.run(workdir, split)


def synthesize(workdir: str, num: int, output: str) -> str:
  from jaxseg.run import gan  # noqa: PLC0415

  return gan.synthesize(workdir, num, output)


def sweep(
  config, workdir: str, cells=None, command_line=None, tabulate=False, vmap_seeds=False
) -> list[dict]:
  from jaxseg.run import seeds  # noqa: PLC0415
  from jaxseg.run import sweep as runner  # noqa: PLC0415

  runners = runner.Runners(train, evaluate, synthesize, seeds.train if vmap_seeds else None)
  return runner.run(config, workdir, runners, cells, command_line, tabulate)


def _write_json(records) -> None:
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(records, f, indent=2)


def _bench() -> None:
  from jaxseg.bench import models as bench_models  # noqa: PLC0415

  if FLAGS.versus_torch:
    from jaxseg.bench import versus_torch  # noqa: PLC0415

    shape = bench_models.parse_input(FLAGS.input or BENCH_INPUT)
    dtypes = (FLAGS.dtype,) if FLAGS["dtype"].present else versus_torch.DTYPES
    shape = (FLAGS.batch or shape[0], *shape[1:])
    result = versus_torch.run(shape, repeats=FLAGS.repeats, dtypes=dtypes)
    print(versus_torch.report(result))
    _write_json(result)
  elif FLAGS.suite:
    from jaxseg.bench import suite  # noqa: PLC0415

    fed = _default_config("fedavg_covid_ct", "synthetic_smoke")
    suite.run(FLAGS.config or _default_config("unet_synthetic"), fed, FLAGS.json)
  elif FLAGS.pipeline:
    from jaxseg.bench import pipeline  # noqa: PLC0415

    config = FLAGS.config or _default_config("unet_synthetic")
    _write_json(pipeline.run(config, bench_models.parse_input(FLAGS.input or PIPELINE_INPUT)))
  elif FLAGS.clients:
    from jaxseg.bench import federated  # noqa: PLC0415

    if FLAGS.config is None:
      raise UserError(
        "jaxseg bench --clients needs --config, a federated config "
        "(e.g. configs/fedavg_covid_ct.py:synthetic_smoke)."
      )
    _write_json(federated.run(FLAGS.config, [int(c) for c in FLAGS.clients], FLAGS.repeats))
  else:
    bench_models.run(
      bench_models.split_specs(FLAGS.models),
      FLAGS.input or BENCH_INPUT,
      batch=FLAGS.batch,
      dtype=FLAGS.dtype,
      repeats=FLAGS.repeats,
      json_path=FLAGS.json,
      profile=FLAGS.profile,
    )


def _default_config(name: str, arg: str | None = None):
  """``configs/<name>.py`` of a source checkout (the package itself ships no configs)."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  path = os.path.join(path, f"{name}.py")
  if not os.path.exists(path):
    raise UserError(f"{path} not found (not a source checkout): pass --config FILE.")
  if os.path.dirname(os.path.dirname(path)) not in sys.path:  # configs import each other
    sys.path.insert(0, os.path.dirname(os.path.dirname(path)))
  spec = importlib.util.spec_from_file_location(f"configs.{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _require(command: str, **values) -> None:
  for flag, value in values.items():
    if not value:
      raise UserError(f"jaxseg {command}: --{flag} is required.")


def _run(command: str) -> None:
  if command == "bench":
    return _bench()
  if command == "config":  # the resolved config, every key with its value
    _require(command, config=FLAGS.config)
    return print(FLAGS.config)
  if command == "sites":
    return _sites()
  if command == "inspect":
    _require(command, config=FLAGS.config)
    from jaxseg.run import fingerprint  # noqa: PLC0415

    return fingerprint.run(FLAGS.config, FLAGS.json)
  _require(command, workdir=FLAGS.workdir)
  workdirs, workdir = FLAGS.workdir, FLAGS.workdir[0]
  if len(workdirs) > 1 and command != "predict":
    raise UserError(f"jaxseg {command} takes one --workdir, found {len(workdirs)}.")
  if command in ("train", "sweep") or command == "flower" and _flower_submits():
    _require(command, config=FLAGS.config)
  if FLAGS.config is not None:
    from jaxseg.run import runtime  # noqa: PLC0415

    runtime.setup(FLAGS.config)
  if command == "train":
    from jaxseg.run import skeleton  # noqa: PLC0415

    logged = skeleton.validations(workdir)
    with skeleton.removed_on_error(workdir):
      train(FLAGS.config, workdir)
    print(skeleton.summary(workdir, logged))
  elif command == "predict":
    _predict(workdirs)
  elif command == "synthesize":
    _require(command, output=FLAGS.output)
    synthesize(workdir, FLAGS.num, FLAGS.output)
  elif command == "flower":
    from jaxseg.flower import deploy as flower_deploy  # noqa: PLC0415

    flower_deploy.command(FLAGS.config, workdir, {f: FLAGS[f].value for f in FLOWER_FLAGS})
  elif command == "sweep":
    cells = parse_cells(FLAGS.cells) if FLAGS.cells else None
    overrides = config_flags.get_override_values(FLAGS["config"])
    sweep(FLAGS.config, workdir, cells, overrides, FLAGS.tabulate, FLAGS.vmap_seeds)
  else:
    evaluate(workdir, FLAGS.split)


FLOWER_FLAGS = ("sites", "fractions", "superlink", "root_certificates", "serve", "certificates")
FLOWER_FLAGS += ("operator_port", "register", "site", "key", "verbose")


def _sites() -> None:
  _require("sites", config=FLAGS.config, sites=FLAGS.sites, output=FLAGS.output)
  if len(FLAGS.sites) != 1 or not FLAGS.sites[0].isdigit():
    raise UserError(f"jaxseg sites: --sites is a number of sites, found {','.join(FLAGS.sites)}.")
  from jaxseg.run import sites  # noqa: PLC0415

  sites.run(FLAGS.config, int(FLAGS.sites[0]), FLAGS.output)


def _flower_submits() -> bool:
  return not (FLAGS.serve or FLAGS.register or FLAGS.site)


def _predict(workdirs: list[str]) -> None:
  _require("predict", input=FLAGS.input, output=FLAGS.output)
  from jaxseg.run import predict  # noqa: PLC0415

  predict.run(workdirs, FLAGS.input, FLAGS.output)


def _debug() -> bool:
  return "--verbose" in sys.argv or os.environ.get("JAXSEG_DEBUG") == "1"


def _fail(message: str) -> None:
  print(f"jaxseg: error: {' '.join(message.split())}", file=sys.stderr)
  sys.exit(2)


def _unknown_key(argv, error: Exception) -> str:
  """ml_collections' ``'stepz' Did you mean "steps"...`` as ``unknown key
  config.train.stepz (did you mean config.train.steps?)``, the path taken from the
  override on the command line."""
  message = error
  while isinstance(message, BaseException) and message.args:  # AttributeError(KeyError(str))
    message = message.args[0]
  found = re.match(r"""'(\w+)'\s*(?:Did you mean "(\w+)")?""", str(message))
  if found is None:
    return str(error)
  key, near = found.groups()
  for arg in argv:
    path = arg[2:].split("=", 1)[0].split(".")
    if arg.startswith("--config.") and key in path:
      parent = path[: path.index(key)]
      hint = f" (did you mean {'.'.join([*parent, near])}?)" if near else ""
      return f"unknown key {'.'.join([*parent, key])}{hint}"
  return str(error)


def _last_line(error: Exception) -> str:
  """The message of an error that quotes a traceback: its last line, without the
  exception's name."""
  if "Traceback" not in str(error):
    return str(error)
  last = [line for line in str(error).splitlines() if line.strip()][-1].strip()
  return re.sub(r"^\w+(Error|Exception): ", "", last)


def _flag_message(argv, error: Exception) -> str:
  """One line for an error of flag parsing or of loading the config file."""
  if isinstance(error, flags.Error):
    return _last_line(error)
  if isinstance(error, OSError):  # the config file could not be read
    path = config_flags.get_config_filename(FLAGS["config"])
    return f"--config={path}: {str(error).splitlines()[-1].strip()}"
  return _unknown_key(argv, error)  # ml_collections: an override of a missing key


def _parse_flags(argv):
  """absl's flag parsing, with its errors (and the config file's) as one line, exit
  status 2, instead of a traceback or a usage dump."""
  try:
    argv = FLAGS(argv)
    if FLAGS["config"].present:
      FLAGS.config.keys()  # a file that failed to load raises here, not where it is used
    return argv
  except (flags.Error, AttributeError, KeyError, OSError) as e:
    if _debug():
      raise
    _fail(_flag_message(argv, e))


# Libraries whose warnings a user of the command line cannot act on (TFDS's "Using
# custom data configuration", orbax's read-only notes); --verbose shows them.
def _main(argv):
  logging.set_verbosity(logging.WARNING)
  if not (FLAGS.verbose or _debug()):
    from jaxseg.run import runtime  # noqa: PLC0415

    logging.get_absl_handler().addFilter(runtime.quiet)
  try:
    _run(argv[1])
  except UserError as e:
    if FLAGS.verbose or _debug():
      raise
    _fail(str(e))
  except Preempted as e:
    print(f"jaxseg: {e}", file=sys.stderr)
    sys.exit(PREEMPTED_STATUS)


def parse_cells(items) -> list[int]:
  """``--cells 0,3,36-41`` as the cells' numbers (a range includes both ends)."""
  cells = []
  for item in items:
    first, dash, last = item.partition("-")
    if not (first.isdigit() and (not dash or last.isdigit())):
      raise UserError(f"--cells: expected numbers or ranges like 36-41, found {item!r}.")
    cells += range(int(first), int(last if dash else first) + 1)
  return cells


def main(argv=None):
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help"):
    print(USAGE, file=sys.stdout if len(argv) >= 2 else sys.stderr)
    sys.exit(0 if len(argv) >= 2 else 2)
  if argv[1] not in COMMANDS:
    _fail(cli.unknown(argv[1]))
  if any(a in ("-h", "--help") for a in argv[2:]):
    print(cli.help_text(argv[1], FLAGS))
    sys.exit(0)
  # absl parses the flags after the command; the command stays at argv[1] for _main.
  app.run(_main, argv=argv, flags_parser=_parse_flags)
