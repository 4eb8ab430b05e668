"""DAGAN on COVID-19 CT lesion slices: new image/mask pairs from training pairs.

    jaxseg train --config configs/dagan_covid_ct.py --workdir /tmp/dagan \\
        --config.data.dir=/path/to/covid_ct
    jaxseg synthesize --workdir /tmp/dagan --num 2500 --output /tmp/dagan_pairs

The settings of ``configs/pix2pix_covid_ct.py`` (256 px, batch 8, 50 epochs, Adam
2e-4 β1 0.5) with DAGAN's networks: the U-Net generator takes a training pair (image
and mask as two channels) and a 100-dimensional noise vector and generates a pair;
the conditional PatchGAN has spectrally normalised convolutions and no BatchNorm.
No L1 term (the real partner is another training pair). Arguments as pix2pix's:
``smoke``, ``folder``.

Expect sample grids (``samples/``) whose generated masks stay lesion-shaped and whose
images show lung texture after a few epochs; DAGAN's paper has no segmentation number
for this dataset, so the test is the augmentation study's "+ GAN" cell trained on
these pairs.
"""

import ml_collections

from configs.pix2pix_covid_ct import gan_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return gan_config(
    "dagan",
    dict(classes=2, noise_dim=100, l1_weight=0.0, discriminator=dict(norm="spectral")),
    {},
    arg,
  )
