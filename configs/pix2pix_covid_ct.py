"""pix2pix on COVID-19 CT lesion slices: lesion masks -> CT images (SPEC §4).

    jaxseg train --config configs/pix2pix_covid_ct.py --workdir /tmp/pix2pix \\
        --config.data.dir=/path/to/covid_ct
    jaxseg synthesize --workdir /tmp/pix2pix --num 2500 --output /tmp/pix2pix_pairs

The augmentation study's settings: slices at 256 px, the training split of
``configs/unet_covid_ct.py`` (75% of the training slices; the 25% validation and
the test slices are never seen), batch 8, 50 epochs, Adam lr 2e-4 with β1 = 0.5,
L1 weight λ = 100, random flips; the reference networks (U-Net generator
54,407,809 parameters, 70×70 PatchGAN 2,764,609 — the counts of pix2pix's
``unet_256`` / ``n_layers=3`` for one-channel images). ``jaxseg synthesize``
generates an image for each training mask after a flip, rotation and dense elastic
deformation (``config.gan.source_augment``; ``{}`` keeps the masks as they are).
Expect the sample grids in ``/tmp/pix2pix/samples/`` to show lung texture around
the lesions after a few epochs.

Arguments: ``smoke`` — 32 px, tiny networks, 4 steps; ``folder`` — a GAN on any
``image_folder`` dataset (``--config.data.dir``), e.g. pairs this GAN synthesized:
the study's "GAN trained on GAN images".
"""

import ml_collections

from configs import unet_covid_ct

ARGS = ("smoke", "folder")


def gan_config(name: str, kwargs: dict, source_augment: dict, arg: str | None):
  """The shared body of the GAN configs (pix2pix, DAGAN)."""
  if arg is not None and arg not in ARGS:
    raise ValueError(f"configs/{name}_covid_ct.py: unknown argument {arg!r}; known: {ARGS}.")
  smoke = arg == "smoke"
  config = ml_collections.ConfigDict()
  config.kind = "gan"  # the run: segmentation, federated or gan
  config.seed = 0
  config.data = unet_covid_ct.get_config("smoke" if smoke else None).data
  config.data.kwargs.image_size = 32 if smoke else 256
  if arg == "folder":
    config.data.name = "image_folder"
    config.data.kwargs = ml_collections.ConfigDict(dict(image_size=(256, 256)))
  config.augment = ml_collections.ConfigDict({"flip": {}})
  config.gan = ml_collections.ConfigDict(
    dict(name=name, kwargs=kwargs, source_augment=source_augment)
  )
  config.optim = ml_collections.ConfigDict(
    dict(name="adam", lr=2e-4, schedule="constant", warmup_steps=0, grad_clip=0.0, kwargs={})
  )
  config.optim.kwargs.b1 = 0.5
  config.train = ml_collections.ConfigDict(
    dict(batch_size=8, steps=0, epochs=50, eval_every=500, log_every=50)
  )
  if smoke:
    config.gan.kwargs.generator = dict(widths=(8, 16, 32))
    config.gan.kwargs.discriminator = dict(widths=(8, 16))
    config.train.update(batch_size=4, steps=4, epochs=0, eval_every=2, log_every=2)
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return gan_config(
    "pix2pix",
    dict(classes=2, l1_weight=100.0),
    {"flip": {}, "rot90": {}, "elastic_dense": {}},
    arg,
  )
