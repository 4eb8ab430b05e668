"""pix2pix (Isola et al., 2017) as a mask-to-image translator: the generator turns a
segmentation mask into an image, so every (real or deformed) mask of the training
split yields a new training pair. The discriminator judges (mask, image) pairs
patch by patch; the generator's loss adds ``l1_weight`` (λ = 100) times the L1
distance to the mask's real image. Noise comes from dropout only, as in the paper.
"""

import jax.numpy as jnp

from jaxseg.gan.networks import Generator, PatchDiscriminator, Spec, encode_mask, to_unit


def make(
  channels: int,
  classes: int = 2,
  generator: dict | None = None,
  discriminator: dict | None = None,
  l1_weight: float = 100.0,
) -> Spec:
  """``generator`` / ``discriminator``: kwargs of the networks (widths, dropout)."""

  def condition(batch):
    return encode_mask(batch["labels"], classes)

  def real(batch):
    return batch["image"] * 2 - 1

  def decode(generated, batch):
    return {"image": to_unit(generated), "labels": batch["labels"].astype(jnp.int32)}

  return Spec(
    generator=Generator(out_channels=channels, **(generator or {})),
    discriminator=PatchDiscriminator(**(discriminator or {})),
    condition=condition,
    real=real,
    decode=decode,
    l1_weight=l1_weight,
    classes=classes,
  )
