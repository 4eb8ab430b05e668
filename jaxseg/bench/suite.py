"""``jaxseg bench --suite accelerator --json F``: one report for the day a GPU or TPU
is available (under 8 minutes on one GPU), written as ``F`` (JSON) and ``F.md``.

* the input pipeline table (:mod:`jaxseg.bench.pipeline`) and its loop/step ratio;
* the reference U-Net training step in float32 and bfloat16: images/s, TFLOP/s, MFU;
* one federated round, vmapped clients against a loop over clients;
* the cost of ``runtime.deterministic`` (XLA's deterministic GPU ops): the float32
  step timed in two fresh processes, with and without ``JAXSEG_DETERMINISTIC=1``
  (XLA reads the flag when its backend starts).

On an accelerator: 256x256 images, batch 64 for the step, 16/64/256 clients. On a
CPU the same code runs at sizes that finish in a few minutes (:data:`SIZES`).
"""

import json
import os
import subprocess
import sys
import tempfile

import jax

from jaxseg.bench import federated, models, pipeline

SIZES = {
  "accelerator": {
    "pipeline": (8, 1, 256, 256),
    "step": (64, 1, 256, 256),
    "clients": (16, 64, 256),
  },
  "cpu": {"pipeline": (8, 1, 64, 64), "step": (2, 1, 64, 64), "clients": (2, 4)},
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
  text = markdown(report, size)
  print(text)
  if json_path:
    with open(json_path, "w") as f:
      json.dump(report, f, indent=2)
    with open(f"{os.path.splitext(json_path)[0]}.md", "w") as f:
      f.write(text + "\n")
  return report


def markdown(report: dict, size: dict) -> str:
  det = report["deterministic"]
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
    ]
  )
