"""``jaxseg bench --suite accelerator --json F``: one report for the day a GPU or TPU
is available, written as ``F`` (JSON) and ``F.md`` (its first four parts took 494 s
on one H200).

* the input pipeline table (:mod:`jaxseg.bench.pipeline`) and its loop/step ratio;
* the reference U-Net training step in float32 and bfloat16: images/s, TFLOP/s, MFU;
* one federated round, vmapped clients against a loop over clients;
* the cost of ``runtime.deterministic`` (XLA's deterministic GPU ops): the float32
  step timed in two fresh processes, with and without ``JAXSEG_DETERMINISTIC=1``
  (XLA reads the flag when its backend starts);
* nnU-Net's benchmark shapes in bfloat16: the 2-D step at 192x160, batch 128, and a
  3-D U-Net at a 128³ patch, batch 2 (NVIDIA's nnU-Net benchmark: about 926 images/s
  and 9.5 volumes/s with AMP on an A100 — an order of magnitude, not a target);
* the same U-Net against PyTorch eager and ``torch.compile`` on the same device
  (:mod:`jaxseg.bench.versus_torch`), float32 and bfloat16, batch 16 and 64 of
  256x256 — when PyTorch is installed (``pip install -e '.[versus-torch]'``).

On an accelerator: 256x256 images, batch 64 for the step, 16/64/256 clients. On a
CPU the same code runs at sizes that finish in a few minutes (:data:`SIZES`).
"""

import json
import os
import subprocess
import sys
import tempfile

import jax

from jaxseg.bench import federated, models, pipeline, versus_torch
from jaxseg.errors import UserError

SIZES = {
  "accelerator": {
    "pipeline": (8, 1, 256, 256),
    "step": (64, 1, 256, 256),
    "clients": (16, 64, 256),
    "nnunet": ((128, 1, 192, 160), (2, 1, 128, 128, 128)),
    "versus": ((16, 1, 256, 256), (64, 1, 256, 256)),
  },
  "cpu": {
    "pipeline": (8, 1, 64, 64),
    "step": (2, 1, 64, 64),
    "clients": (2, 4),
    "nnunet": ((2, 1, 64, 64), (1, 1, 32, 32, 32)),
    "versus": ((2, 1, 64, 64),),
  },
}
REPEATS = 3


def sizes() -> dict:
  return SIZES["cpu" if jax.default_backend() == "cpu" else "accelerator"]


def deterministic_cost(shape, model: str) -> dict:
  """``model``'s float32 train-step images/s in fresh processes, flag off and on."""
  rates = {}
  for flag in ("0", "1"):
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
      command = [sys.executable, "-m", "jaxseg", "bench", "--models", model, "--input"]
      command += ["x".join(map(str, shape)), "--repeats", str(REPEATS), "--json", out.name]
      env = {**os.environ, "JAXSEG_DETERMINISTIC": flag}
      subprocess.run(command, env=env, check=True, capture_output=True)
      rates[flag] = json.load(open(out.name))[0]["train_img_s"]
  cost = 1 - rates["1"] / rates["0"]
  return {"img_s": rates["0"], "deterministic_img_s": rates["1"], "cost": cost}


def run(
  pipeline_config, fed_config, json_path: str | None, size: dict | None = None, model="unet"
) -> dict:
  """Runs every part, prints the markdown report and writes it (``json_path`` + ``.md``).
  ``size``: :data:`SIZES` of this backend unless given; ``model``: the step's model
  spec (the reference U-Net)."""
  size = size or sizes()
  report = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend()}
  report["pipeline"] = pipeline.run(pipeline_config, size["pipeline"])
  loop = report["pipeline"][-1]
  report["loop_step_ratio"] = loop["loop_images_per_s"] / loop["step_images_per_s"]
  report["step"] = [
    models.bench_model(model, size["step"], dtype=dtype, repeats=REPEATS)
    for dtype in ("float32", "bfloat16")
  ]
  report["federated"] = federated.run(fed_config, list(size["clients"]), REPEATS)
  report["deterministic"] = deterministic_cost(size["step"], model)
  report["nnunet"] = [
    models.bench_model(model, shape, dtype="bfloat16", repeats=REPEATS) for shape in size["nnunet"]
  ]
  report["versus_torch"] = versus(size["versus"], model)
  text = markdown(report, size)
  print(text)
  if json_path:
    with open(json_path, "w") as f:
      json.dump(report, f, indent=2)
    with open(f"{os.path.splitext(json_path)[0]}.md", "w") as f:
      f.write(text + "\n")
  return report


def versus(shapes, model: str) -> dict | str:
  """:func:`jaxseg.bench.versus_torch.run` at each shape, its rows joined; without
  PyTorch the line that says how to install it."""
  try:
    versus_torch.import_torch()
  except UserError as e:
    return f"versus PyTorch: not measured ({e})"
  widths = models.parse_model(model)[1].get("widths")
  results = [versus_torch.run(shape, widths=widths, repeats=REPEATS) for shape in shapes]
  return {**results[0], "rows": [row for r in results for row in r["rows"]]}


def markdown(report: dict, size: dict) -> str:
  det, vs = report["deterministic"], report["versus_torch"]
  return "\n\n".join(
    [
      f"# jaxseg accelerator suite: {report['device']} ({report['backend']}), "
      f"jax {jax.__version__}",
      pipeline.markdown(report["pipeline"], size["pipeline"]),
      f"Train loop / bare step: {report['loop_step_ratio']:.2f}.",
      f"Training step of {report['step'][0]['model']}, input "
      + "x".join(map(str, size["step"]))
      + ":",
      models.markdown(report["step"]),
      f"Federated round, clients {', '.join(str(r['clients']) for r in report['federated'])}:",
      federated.markdown(report["federated"]),
      f"runtime.deterministic: {det['img_s']:.1f} -> {det['deterministic_img_s']:.1f} "
      f"images/s (cost {100 * det['cost']:.1f}%).",
      *[
        f"nnU-Net's benchmark shape {r['input']}, bfloat16 (a volume's img/s are volumes/s):\n\n"
        + models.markdown([r])
        for r in report["nnunet"]
      ],
      vs if isinstance(vs, str) else "Versus PyTorch:\n\n" + versus_torch.report(vs),
    ]
  )
