"""U-Net on COVID-19 CT lesion slices (the augmentation study's task, SPEC §4).

    jaxseg train --config configs/unet_covid_ct.py --workdir /tmp/covid \\
        --config.data.dir=/path/to/covid_ct
    jaxseg eval --workdir /tmp/covid

The reference U-Net recipe at reduced widths (16..256) on slices resized to 128 px,
BCE (the study's better U-Net loss at 50 epochs), Adam at lr 1e-3, flips and
rotations; the validation split is a seeded 25% of the training slices (the study's
75/25), the test split the dataset's own. ``--config.data.kwargs.image_size=256
--config.model.kwargs.widths='(32,64,128,256,512)'`` is the study's full scale.

Expect: the augmentation study's U-Net control F1 0.7489 (BCE, 256 px, 50 epochs;
``../shared/reference/tables.md``); at 64 px and 300 steps we measured test F1 0.627
(docs/raters-and-synthesis.md, augmentation study at CPU scale). This config's
128 px / 600 steps is not yet measured.
"""

import ml_collections

from configs import unet_synthetic


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = unet_synthetic.get_config()
  config.model.kwargs.widths = (16, 32, 64, 128, 256)
  config.data.name = "covid_ct_lesion"
  config.data.dir = ""  # required: --config.data.dir=/path/to/covid_ct
  config.data.kwargs = ml_collections.ConfigDict(dict(image_size=128, variant="binary"))
  config.data.validation_fraction = 0.25
  config.loss.name = "bce"
  config.optim.update(lr=1e-3, warmup_steps=20)
  config.train.update(batch_size=8, steps=600, eval_every=100, log_every=20)
  config.infer.tile = 128
  if arg == "smoke":
    config.model.kwargs.widths = (4, 8, 16)
    config.data.kwargs.image_size = 32
    config.train.update(steps=6, eval_every=3, log_every=3)
    config.eval.batch_size = 8
    config.infer.tile = 32
  elif arg:
    raise ValueError(f"configs/unet_covid_ct.py: unknown argument {arg!r}; known: 'smoke'.")
  return config
