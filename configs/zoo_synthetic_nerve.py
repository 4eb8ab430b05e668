"""The SCAUnet paper's accuracy study on ``synthetic_nerve``: six architectures (and
SCAUnet's two other scale attentions, ``self`` and ``scale_attention``) x 5 folds.

    jaxseg sweep --config configs/zoo_synthetic_nerve.py:cpu --workdir /tmp/zoo

writes ``results.md`` / ``results.json``: precision, recall, Dice and Hausdorff
distance (HD, in pixels; the paper's HD column is on an unstated, probably log,
scale) as mean ± std over the folds, in the layout of the paper's table. Each fold
holds out a fifth of the training images as its test set (seeded k-fold).

Arguments: none — the reference widths (9.4 M-parameter U-Nets, SCAUnet 0.49 M) at
128 px, 3,000 steps per cell (a GPU run); ``cpu`` — widths / 4, 64 px, 400 steps
(about an hour on 2 CPU cores); ``smoke`` — two folds of tiny models, seconds each.

Expect (not yet measured here): all six architectures near the same Dice on this
easy synthetic task; the published ranking (SCAUnet and SCAUnet-A 0.923, U-Net
0.897, U-Net++ 0.889 on HM70A wrist ultrasound; ``../shared/reference/tables.md``)
is on data we do not have.
"""

import ml_collections

from configs import unet_synthetic
from jaxseg.run.sweep import axis

MODELS = ("unet", "unetpp", "attention_unet", "multires_unet", "scaunet", "scaunet_a")
ATTENTIONS = ("self", "scale_attention")  # besides the default "eca"


def model_variants(base_width: int) -> dict:
  widths = tuple(base_width * 2**i for i in range(5))
  kwargs = {name: {"widths": widths} for name in MODELS}
  kwargs["unetpp"]["mode"] = "deep"  # deep supervision in training; evaluated as accurate mode
  kwargs["scaunet_a"]["scale_width"] = base_width // 2  # 2 scales at the top level, as at 32/16
  variants = {name: {"model.name": name, "model.kwargs": kwargs[name]} for name in MODELS}
  # SCAUnet's other two scale attentions (docs/semi-supervised.md, fidelity choices)
  for attention in ATTENTIONS:
    scaunet = {**kwargs["scaunet"], "attention": attention}
    variants[f"scaunet ({attention})"] = {"model.name": "scaunet", "model.kwargs": scaunet}
  return variants


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = unet_synthetic.get_config()
  config.data.kwargs.update(image_size=128, num_train=400, num_validation=64, num_test=8)
  config.data.folds = 5
  config.train.update(steps=3000, eval_every=500)
  base_width, folds = 32, 5
  if arg == "cpu":
    base_width = 8
    config.data.kwargs.update(image_size=64, num_train=240, num_validation=32)
    config.train.update(steps=400, eval_every=200, log_every=50)
  elif arg == "smoke":
    base_width, folds = 4, 2
    config.data.kwargs.update(image_size=32, num_train=16, num_validation=8)
    config.data.folds = 2
    config.train.update(steps=4, eval_every=4, log_every=2)
    config.eval.batch_size = 8
  elif arg:
    raise ValueError(
      f"configs/zoo_synthetic_nerve.py: unknown argument {arg!r}; known: 'cpu', 'smoke'."
    )
  variants = model_variants(base_width)
  config.sweep = ml_collections.ConfigDict(
    dict(
      axes=(
        axis("model", variants),
        axis("fold", {str(k): {"data.fold": k} for k in range(folds)}),
      ),
      average="fold",
      metrics=("precision", "recall", "dice", "hd"),
    )
  )
  return config
