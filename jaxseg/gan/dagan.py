"""DAGAN (Antoniou et al., 2017), data augmentation GAN, for image/mask pairs.

The generator takes a real pair (image and mask as channels) and a noise vector
``z`` and generates a new pair of the same kind, image and mask jointly. The
discriminator, a conditional PatchGAN with spectrally normalised convolutions, sees
the source pair next to either another real pair of the training data (real) or the
generated one (fake), so the generator must make pairs that pass for other members
of the data set rather than copies of its input. Masks are generated in [-1, 1] and
thresholded (or arg-maxed) into classes.

Chosen where the paper is silent for segmentation: the "other real pair" is the
next example of the same shuffled batch; the loss is pix2pix's (non-saturating)
with no L1 term by default (``l1_weight`` adds one towards that other pair).
"""

import jax.numpy as jnp

from jaxseg.gan.networks import (
  Generator,
  PatchDiscriminator,
  Spec,
  decode_mask,
  encode_mask,
  to_unit,
)


def make(
  channels: int,
  classes: int = 2,
  noise_dim: int = 100,
  generator: dict | None = None,
  discriminator: dict | None = None,
  l1_weight: float = 0.0,
) -> Spec:
  """``generator`` / ``discriminator``: kwargs of the networks (widths, dropout)."""

  def condition(batch):
    return jnp.concatenate([batch["image"] * 2 - 1, encode_mask(batch["labels"], classes)], -1)

  def real(batch):
    return jnp.roll(condition(batch), 1, axis=0)

  def decode(generated, batch):
    del batch
    return {
      "image": to_unit(generated[..., :channels]),
      "labels": decode_mask(generated[..., channels:], classes),
    }

  mask_channels = 1 if classes == 2 else classes
  return Spec(
    generator=Generator(
      out_channels=channels + mask_channels, noise_dim=noise_dim, **(generator or {})
    ),
    discriminator=PatchDiscriminator(**{"norm": "spectral", **(discriminator or {})}),
    condition=condition,
    real=real,
    decode=decode,
    noise_dim=noise_dim,
    l1_weight=l1_weight,
    classes=classes,
  )
