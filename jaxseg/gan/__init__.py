"""Augmentation by synthesis: conditional GANs that make new image/mask pairs, and
their name table.

Every entry is a function ``make(channels, **config.gan.kwargs) -> Spec``
(:class:`jaxseg.gan.networks.Spec`): the generator and discriminator and how a
training batch becomes the generator's input, the discriminator's real examples and,
after generation, an image/mask pair. Training (:mod:`jaxseg.gan.step`, pure;
:mod:`jaxseg.run.gan`, I/O) and synthesis are the same for every GAN.
"""

from jaxseg import tables

GANS = {
  "pix2pix": "jaxseg.gan.pix2pix:make",
  "dagan": "jaxseg.gan.dagan:make",
}


def get_gan(name: str, channels: int, **kwargs):
  return tables.resolve(GANS, name, "GAN")(channels, **kwargs)
