"""U-Net: the reference recipe of the SCAUnet paper's size table."""

from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxseg.errors import UserError
from jaxseg.models.interface import Interface
from jaxseg.models.layers import CBA, max_pool, pool_kernels, resize_nearest, strides

REFERENCE = dict(in_channels=1, num_classes=1, widths=(32, 64, 128, 256, 512))


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
    up_convs: convs after the resize and before the concatenation (2 in the
      reference recipe; 1 gives the common U-Net, 8,636,769 parameters at 32..512).
    spatial_dims: 2 (images ``[B, H, W, C]``) or 3 (volumes ``[B, D, H, W, C]``, 3x3x3
      convolutions, 2x2x2 pooling).
    pool: the pooling window of each level transition (anisotropic volumes, as
      nnU-Net plans them: e.g. ``((2, 2, 1), (2, 2, 2))`` pools a thick-sliced axis
      later); ``None``: 2 along every axis.
  """

  # The parameter count of the defaults (the published recipe), pinned by a test.
  REFERENCE_PARAMS: ClassVar[int] = 9_421_569

  widths: Sequence[int] = REFERENCE["widths"]
  num_classes: int = 1
  in_channels: int = 1
  up_convs: int = 2
  spatial_dims: int = 2
  pool: Sequence | None = None

  @property
  def interface(self) -> Interface:
    stride = max(strides(self.pool, len(self.widths), self.spatial_dims))
    return Interface(self.in_channels, self.num_classes, takes_labels=False, stride=stride)

  @property
  def strides(self) -> tuple[int, ...]:
    """The total down-sampling along each spatial axis (input sizes divide by it)."""
    return strides(self.pool, len(self.widths), self.spatial_dims)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if x.shape[-1] != self.in_channels:
      raise UserError(f"UNet expects {self.in_channels} input channels, got shape {x.shape}.")
    skips, kernels = [], pool_kernels(self.pool, len(self.widths), self.spatial_dims)
    for level, width in enumerate(self.widths):
      if level:
        x = max_pool(x, kernels[level - 1])
      x = self.block(width, f"down{level}_conv0")(x, train=train)
      x = self.block(width, f"down{level}_conv1")(x, train=train)
      skips.append(x)
    x = skips.pop()
    self.sow("intermediates", "features", x)  # the deepest encoder map (PseudoSeg's CAM)
    for level in reversed(range(len(skips))):
      skip, width = skips[level], self.widths[level]
      x = resize_nearest(x, skip.shape[1:-1])
      for k in range(self.up_convs):
        x = self.block(width, f"up{level}_conv{k}")(x, train=train)
      x = jnp.concatenate([self.gate_skip(level, skip, x, train=train), x], axis=-1)
      for k in range(self.up_convs, self.up_convs + 2):
        x = self.block(width, f"up{level}_conv{k}")(x, train=train)
    return nn.Conv(self.num_classes, (1,) * self.spatial_dims, name="head")(x)

  def block(self, width: int, name: str) -> nn.Module:
    """The conv block used everywhere (conv-BN-LeakyReLU; SCA-conv in SCAUnet)."""
    return CBA(width, spatial_dims=self.spatial_dims, name=name)

  def gate_skip(self, level: int, skip: jax.Array, g: jax.Array, *, train: bool) -> jax.Array:
    """The skip as it enters the concatenation (identity; gated in Attention U-Net)."""
    del level, g, train
    return skip


# The UNet++ paper's "wide U-Net" baseline: the common U-Net (one conv after the
# resize) with widths raised until its size matches U-Net++ (9,162,753): 9,184,660.
WIDE_REFERENCE = dict(in_channels=1, num_classes=1, widths=(33, 66, 132, 264, 528), up_convs=1)


class WideUNet(UNet):
  """:class:`UNet` with the wide U-Net defaults (:data:`WIDE_REFERENCE`)."""

  # The parameter count of the defaults (the published recipe), pinned by a test.
  REFERENCE_PARAMS: ClassVar[int] = 9_184_660

  widths: Sequence[int] = WIDE_REFERENCE["widths"]
  up_convs: int = 1
