"""The ``jaxseg`` command line.

jaxseg train --config FILE[:ARG] --workdir DIR [--config.key=value ...]
jaxseg eval  --workdir DIR [--split test]
jaxseg predict --workdir DIR --input FILE_OR_DIR --output DIR
jaxseg sweep --config FILE[:ARG] --workdir DIR [--config.key=value ...]
jaxseg synthesize --workdir GAN_RUN --num N --output DIR
jaxseg bench --models unet,unetpp:mode=l2,... --input NxCxHxW [--batch N]
             [--dtype float32|bfloat16] [--repeats N] [--json FILE]
jaxseg bench --versus_torch --input NxCxHxW [--repeats N] [--json FILE]
jaxseg bench --clients 4,16,64 [--config FILE[:ARG]] [--repeats N] [--json FILE]
"""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("train", "eval", "bench", "sweep", "predict", "synthesize")
USAGE = __doc__

FLAGS = flags.FLAGS
BENCH_INPUT = "1x1x426x545"  # the SCAUnet paper's input for its size table
config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (FILE[:ARG]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, pictures).")
flags.DEFINE_string("split", "test", "Split that `jaxseg eval` scores.")
flags.DEFINE_string(
  "output", None, "predict: folder for the masks and overlays; synthesize: the new dataset."
)
flags.DEFINE_integer("num", 2500, "synthesize: image/mask pairs to generate.")
flags.DEFINE_list("models", ["unet"], "bench: model specs, name[:key=value,...].")
flags.DEFINE_string(
  "input",
  None,
  "bench: input shape NxCxHxW (default 1x1x426x545); predict: an image file or a folder of images.",
)
flags.DEFINE_integer("batch", None, "bench: batch size (overrides N of --input).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "bench: compute dtype.")
flags.DEFINE_integer("repeats", 5, "bench: timed repeats after one warm-up call.")
flags.DEFINE_string("json", None, "bench: write the records to this JSON file.")
flags.DEFINE_bool(
  "versus_torch",
  False,
  "bench: time the reference U-Net training step "
  "in jaxseg and in PyTorch, alternately (needs torch).",
)
flags.DEFINE_list(
  "clients",
  None,
  "bench: federated rounds/s with vmapped clients against a loop over clients, for these "
  "client counts (--config: a federated config; default fedavg_covid_ct.py:synthetic_smoke).",
)
FED_BENCH_CONFIG = "fedavg_covid_ct"


def _main(argv):
  logging.set_verbosity(logging.WARNING)
  command = argv[1]
  if command == "bench" and FLAGS.versus_torch:
    from jaxseg.bench import models as bench_models  # noqa: PLC0415
    from jaxseg.bench import versus_torch  # noqa: PLC0415

    shape = bench_models.parse_input(FLAGS.input or BENCH_INPUT)
    result = versus_torch.run((FLAGS.batch or shape[0], *shape[1:]), repeats=FLAGS.repeats)
    print(versus_torch.report(result))
    if FLAGS.json:
      with open(FLAGS.json, "w") as f:
        json.dump(result, f, indent=2)
    return
  if command == "bench" and FLAGS.clients:
    import importlib  # noqa: PLC0415

    from jaxseg.bench import federated  # noqa: PLC0415

    config = FLAGS.config
    if config is None:
      config = importlib.import_module(f"configs.{FED_BENCH_CONFIG}").get_config("synthetic_smoke")
    records = federated.run(config, [int(c) for c in FLAGS.clients], FLAGS.repeats)
    if FLAGS.json:
      with open(FLAGS.json, "w") as f:
        json.dump(records, f, indent=2)
    return
  if command == "bench":
    from jaxseg.bench import models as bench_models  # noqa: PLC0415

    bench_models.run(
      FLAGS.models,
      FLAGS.input or BENCH_INPUT,
      batch=FLAGS.batch,
      dtype=FLAGS.dtype,
      repeats=FLAGS.repeats,
      json_path=FLAGS.json,
    )
    return
  if FLAGS.workdir is None:
    raise app.UsageError(f"jaxseg {command}: --workdir is required.")
  from jaxseg.train import loop  # noqa: PLC0415  (keeps `--help` fast)

  if command in ("train", "sweep") and FLAGS.config is None:
    raise app.UsageError(f"jaxseg {command}: --config FILE[:ARG] is required.")
  if FLAGS.config is not None:
    from jaxseg.train import runtime  # noqa: PLC0415

    runtime.setup(FLAGS.config)
  if command == "train":
    loop.train(FLAGS.config, FLAGS.workdir)
  elif command == "predict":
    if not FLAGS.input or not FLAGS.output:
      raise app.UsageError("jaxseg predict: --input FILE_OR_DIR and --output DIR are required.")
    from jaxseg.train import predict  # noqa: PLC0415

    predict.run(FLAGS.workdir, FLAGS.input, FLAGS.output)
  elif command == "synthesize":
    if not FLAGS.output:
      raise app.UsageError("jaxseg synthesize: --output DIR is required.")
    from jaxseg.gan import loop as gan_loop  # noqa: PLC0415

    gan_loop.synthesize(FLAGS.workdir, FLAGS.num, FLAGS.output)
  elif command == "sweep":
    from jaxseg.train import sweep  # noqa: PLC0415

    sweep.run(FLAGS.config, FLAGS.workdir)
  else:
    loop.evaluate(FLAGS.workdir, FLAGS.split)


def main(argv=None):
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] not in COMMANDS:
    print(USAGE.strip(), file=sys.stderr)
    sys.exit(0 if len(argv) >= 2 and argv[1] in ("-h", "--help") else 2)
  # absl parses the flags after the command; the command stays at argv[1] for _main.
  app.run(_main, argv=argv)
