"""Attention U-Net (Oktay et al. 2018): additive attention gates on the skips."""

from collections.abc import Sequence
from typing import ClassVar

import jax
from flax import linen as nn

from jaxseg.models.layers import LeakyReLU, batch_norm
from jaxseg.models.unet import UNet

REFERENCE = dict(in_channels=1, num_classes=1, widths=(32, 64, 128, 256, 512))


class AttentionGate(nn.Module):
  """``x * sigmoid(BN(psi(LeakyReLU(BN(W_g g) + BN(W_x x)))))`` with 1x1 convs."""

  inner: int
  spatial_dims: int = 2

  @nn.compact
  def __call__(self, g: jax.Array, x: jax.Array, *, train: bool = False) -> jax.Array:
    one = (1,) * self.spatial_dims
    wg = batch_norm(train, "bn_g")(nn.Conv(self.inner, one, name="w_g")(g))
    wx = batch_norm(train, "bn_x")(nn.Conv(self.inner, one, name="w_x")(x))
    psi = nn.Conv(1, one, name="psi")(LeakyReLU(name="act")(wg + wx))
    return x * jax.nn.sigmoid(batch_norm(train, "bn_psi")(psi))


class AttentionUNet(UNet):
  """The reference U-Net (:class:`~jaxseg.models.unet.UNet`) with a gate on each skip.

  The gate on level ``l`` takes the up-conv output ``g`` and the skip ``x`` (both
  ``widths[l]`` channels); its inner width is ``max(widths[l] // 2, widths[0])``
  (128, 64, 32, 32 at the reference widths: the last is 32, not 16 as in the widely
  copied implementation, which is what reproduces 9,511,437 parameters).

  Attributes: those of :class:`~jaxseg.models.unet.UNet`.
  """

  # The parameter count of the defaults (the published recipe), pinned by a test.
  REFERENCE_PARAMS: ClassVar[int] = 9_511_437

  widths: Sequence[int] = REFERENCE["widths"]

  def gate_skip(self, level: int, skip: jax.Array, g: jax.Array, *, train: bool) -> jax.Array:
    inner = max(self.widths[level] // 2, self.widths[0])
    return AttentionGate(inner, self.spatial_dims, name=f"gate{level}")(g, skip, train=train)
