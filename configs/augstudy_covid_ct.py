"""The augmentation study on COVID-19 CT lesions (SPEC §4): which augmentation helps?

    jaxseg sweep --config configs/augstudy_covid_ct.py --workdir /tmp/augstudy \\
        --config.data.dir=/path/to/covid_ct

first trains pix2pix on the training split and synthesizes its pairs (``DIR/gan``,
``DIR/synthetic``), then trains and tests every combination of

* augmentation: original (control); + GAN; + GAN + elastic; + GAN + JPEG;
  flip/rotate + elastic; flip/rotate + mixup; mixup + JPEG; flip/rotate + mixup +
  JPEG ("+ GAN": the synthesized pairs join the training split; elastic: the dense
  Gaussian-smoothed field; JPEG: "digital weathering", quality 30 applied 4 times to
  half of the training images; mixup α = 0.4);
* objective (loss): BCE, Dice;  model: U-Net, SegFormer-B0;  epochs: 50, 100,

and writes ``results.md`` / ``results.json``: one table per (model, objective, epochs) in
the published layout — test loss, F1 (lesion Dice) and mIoU (mean of background and
lesion IoU), both from the test split's pooled pixel counts.

The study's settings by default: slices resized to 256 px, train/validation 0.75 /
0.25 of the training slices (the test split is the dataset's own), batch 8, Adam at
lr 1e-3, epochs counted over the (augmented) training split, the reference U-Net
(9,421,569 parameters), pix2pix as ``configs/pix2pix_covid_ct.py`` (50 epochs), 2,500
synthetic pairs. Published (U-Net, BCE, 50 epochs): original F1 0.7489, + GAN 0.8333,
mixup combinations 0.28-0.36 (``../shared/reference/tables.md``).

Arguments: ``cpu`` — 64 px, U-Net widths 8..64, 300 steps per cell for every
augmentation (an equal budget, one epoch count), pix2pix at 64 px for 600 steps, 200
synthetic pairs; ``smoke`` — two augmentations, BCE, U-Net only, tiny GAN and networks.

At ``cpu`` scale we measured (one seed) U-Net/BCE test F1 0.627 original, 0.573 + GAN,
0.679 flip/rotate + elastic (docs/raters-and-synthesis.md): the published ranking is not
reproduced at that scale.
"""

import ml_collections

from configs import pix2pix_covid_ct, unet_covid_ct
from jaxseg.run.sweep import SYNTHETIC, axis

FLIP_ROTATE = {"flip": {}, "rot90": {}}
ELASTIC = {"elastic_dense": {}}
MIXUP = {"mixup": {"alpha": 0.4}}
JPEG = {"qualities": (30,), "repeats": 4, "p": 0.5}
NO_JPEG = {"qualities": (), "repeats": 1, "p": 1.0}


def _row(augment: dict, jpeg: bool = False, gan: bool = False) -> dict:
  return {
    "augment": augment,
    "data.jpeg": JPEG if jpeg else NO_JPEG,
    "data.extra_train_dir": SYNTHETIC if gan else "",
  }


AUGMENTATIONS = {
  "original": _row({}),
  "+ GAN": _row({}, gan=True),
  "+ GAN + elastic": _row(ELASTIC, gan=True),
  "+ GAN + JPEG": _row({}, jpeg=True, gan=True),
  "flip/rotate + elastic": _row({**FLIP_ROTATE, **ELASTIC}),
  "flip/rotate + mixup": _row({**FLIP_ROTATE, **MIXUP}),
  "mixup + JPEG": _row(MIXUP, jpeg=True),
  "flip/rotate + mixup + JPEG": _row({**FLIP_ROTATE, **MIXUP}, jpeg=True),
}
ARGS = ("cpu", "smoke")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg is not None and arg not in ARGS:
    raise ValueError(f"configs/augstudy_covid_ct.py: unknown argument {arg!r}; known: {ARGS}.")
  smoke = arg == "smoke"
  config = unet_covid_ct.get_config("smoke" if smoke else None)
  gan = pix2pix_covid_ct.get_config("smoke" if smoke else None)
  unet = {"model.name": "unet", "model.kwargs": {"widths": (32, 64, 128, 256, 512)}}
  segformer = {"model.name": "segformer", "model.kwargs": {"variant": "b0"}}
  augmentations, models, epochs, num = list(AUGMENTATIONS), [unet, segformer], (50, 100), 2500
  objectives = ["BCE", "Dice"]
  config.optim.update(lr=1e-3, schedule="constant", warmup_steps=0)
  config.train.update(batch_size=8, epochs=50, eval_every=500, log_every=50)
  if arg is None:
    config.data.kwargs.image_size = config.infer.tile = 256
  elif arg == "cpu":
    config.data.kwargs.image_size = config.infer.tile = gan.data.kwargs.image_size = 64
    unet["model.kwargs"] = {"widths": (8, 16, 32, 64)}
    config.train.update(steps=300, epochs=0, eval_every=100)
    epochs, num = (0,), 200
    gan.gan.kwargs.generator = dict(widths=(32, 64, 128, 256, 256, 256))
    gan.gan.kwargs.discriminator = dict(widths=(32, 64, 128))
    gan.train.update(steps=600, epochs=0, eval_every=200, log_every=50)
  else:
    augmentations, objectives = ["original", "+ GAN + JPEG"], ["BCE"]
    models, epochs, num = [unet], (0,), 16
    unet["model.kwargs"] = {"widths": (4, 8, 16)}
    config.train.update(steps=4, epochs=0, eval_every=4, log_every=2)
  config.sweep = ml_collections.ConfigDict()
  config.sweep.axes = (
    axis("augmentation", {name: AUGMENTATIONS[name] for name in augmentations}),
    axis("objective", {name: {"loss.name": name.lower()} for name in objectives}),
    axis("model", {m["model.name"]: m for m in models}),
    axis("epochs", {str(e or f"{config.train.steps} steps"): {"train.epochs": e} for e in epochs}),
    axis("seed", {"0": {"seed": 0}}),
  )
  config.sweep.average = "seed"
  config.sweep.metrics = ("loss", "dice:pooled", "miou:pooled")
  config.sweep.headers = ("test loss", "F1", "mIoU")
  config.sweep.sections = ("model", "objective", "epochs")
  config.sweep.synthesis = ml_collections.ConfigDict(dict(gan=gan, num=num))
  return config
