"""U-Net: the reference recipe of the SCAUnet paper's size table."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxseg.models.layers import CBA, max_pool2, resize_nearest

REFERENCE = dict(in_channels=1, num_classes=1, widths=(32, 64, 128, 256, 512))
REFERENCE_PARAMS = 9_421_569


class UNet(nn.Module):
  """U-Net with same-padded convolutions (Ronneberger et al. 2015, modernised).

  The recipe of ``shared/reference/architectures.md``: every conv is a 3x3 conv with
  bias -> BatchNorm -> LeakyReLU(0.01); 2x2 max-pool between encoder levels; the
  decoder resizes (nearest neighbour, to the skip's size, so odd sizes work), applies
  two convs (the "up-conv"), concatenates the skip and applies two more convs; a 1x1
  head. At the reference widths (32..512, 1 input channel, 1 class) it has exactly
  9,421,569 parameters.

  Attributes:
    widths: channels per level, top to bottom; the depth is ``len(widths)``.
    num_classes: output channels (1: binary logits).
    in_channels: expected input channels; checked, since the parameter count and a
      checkpoint depend on it.
  """

  widths: Sequence[int] = REFERENCE["widths"]
  num_classes: int = 1
  in_channels: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if x.shape[-1] != self.in_channels:
      raise ValueError(f"UNet expects {self.in_channels} input channels, got shape {x.shape}.")
    skips = []
    for level, width in enumerate(self.widths):
      if level:
        x = max_pool2(x)
      x = CBA(width, name=f"down{level}_conv0")(x, train=train)
      x = CBA(width, name=f"down{level}_conv1")(x, train=train)
      skips.append(x)
    x = skips.pop()
    for level in reversed(range(len(skips))):
      skip, width = skips[level], self.widths[level]
      x = resize_nearest(x, skip.shape[1:3])
      x = CBA(width, name=f"up{level}_conv0")(x, train=train)
      x = CBA(width, name=f"up{level}_conv1")(x, train=train)
      x = jnp.concatenate([skip, x], axis=-1)
      x = CBA(width, name=f"up{level}_conv2")(x, train=train)
      x = CBA(width, name=f"up{level}_conv3")(x, train=train)
    return nn.Conv(self.num_classes, (1, 1), name="head")(x)
