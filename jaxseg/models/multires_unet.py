"""MultiRes U-Net (Ibtehaz & Rahman 2020): MultiRes blocks and residual skip paths."""

from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxseg.errors import UserError
from jaxseg.models.interface import Interface
from jaxseg.models.layers import CBA, LeakyReLU, batch_norm, max_pool2, resize_nearest

REFERENCE = dict(in_channels=1, num_classes=1, widths=(32, 64, 128, 256, 512))
ALPHA = 1.67


def branch_widths(units: int, alpha: float = ALPHA) -> tuple[int, int, int]:
  """The three branch widths of a MultiRes block, ``int(0.167 W), int(0.333 W), int(0.5 W)``."""
  w = alpha * units
  return int(0.167 * w), int(0.333 * w), int(0.5 * w)


class ConvBN(nn.Module):
  """k x k conv without bias -> BN (-> LeakyReLU if ``act``)."""

  features: int
  kernel_size: int = 3
  act: bool = True

  @nn.compact
  def __call__(self, x, *, train=False):
    k = self.kernel_size
    x = nn.Conv(self.features, (k, k), padding="SAME", use_bias=False, name="conv")(x)
    x = batch_norm(train, "bn")(x)
    return LeakyReLU(name="act")(x) if self.act else x


class MultiResBlock(nn.Module):
  """Three chained 3x3 convs concatenated (5x5/7x7 receptive fields), plus a 1x1 shortcut."""

  units: int

  @nn.compact
  def __call__(self, x, *, train=False):
    wa, wb, wc = branch_widths(self.units)
    shortcut = ConvBN(wa + wb + wc, 1, act=False, name="shortcut")(x, train=train)
    a = ConvBN(wa, name="a")(x, train=train)
    b = ConvBN(wb, name="b")(a, train=train)
    c = ConvBN(wc, name="c")(b, train=train)
    out = batch_norm(train, "bn")(jnp.concatenate([a, b, c], axis=-1))
    return LeakyReLU(name="act")(out + shortcut)


class ResPath(nn.Module):
  """``length`` residual steps ``LeakyReLU(ConvBN3x3(x) + ConvBN1x1(x))`` on a skip."""

  features: int
  length: int

  @nn.compact
  def __call__(self, x, *, train=False):
    for k in range(self.length):
      residual = ConvBN(self.features, 1, act=False, name=f"shortcut{k}")(x, train=train)
      x = ConvBN(self.features, 3, name=f"conv{k}")(x, train=train)
      x = LeakyReLU(name=f"act{k}")(x + residual)
    return x


class MultiResUNet(nn.Module):
  """MultiRes U-Net at the reference recipe (9,472,862 parameters).

  Encoder of MultiRes blocks (alpha = 1.67); each skip goes through a ResPath of
  length ``depth - 1 - level``; the decoder resizes, applies two conv-BN-LeakyReLU
  (with bias), concatenates the ResPath output and applies a MultiRes block; 1x1
  head without BN. The paper's transposed-conv up-sampling is replaced by the
  reference recipe's nearest resize + convs (the recipe that reproduces the count).

  Attributes:
    widths: the ``U`` of each level.
    num_classes: output channels.
    in_channels: expected input channels.
  """

  # The parameter count of the defaults (the published recipe), pinned by a test.
  REFERENCE_PARAMS: ClassVar[int] = 9_472_862

  widths: Sequence[int] = REFERENCE["widths"]
  num_classes: int = 1
  in_channels: int = 1

  @property
  def interface(self) -> Interface:
    return Interface(
      self.in_channels, self.num_classes, takes_labels=False, stride=2 ** (len(self.widths) - 1)
    )

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if x.shape[-1] != self.in_channels:
      raise UserError(f"MultiResUNet expects {self.in_channels} input channels, got {x.shape}.")
    depth = len(self.widths)
    skips = []
    for level, units in enumerate(self.widths):
      if level:
        x = max_pool2(x)
      x = MultiResBlock(units, name=f"down{level}")(x, train=train)
      if level < depth - 1:
        skips.append(ResPath(units, depth - 1 - level, name=f"respath{level}")(x, train=train))
    for level in reversed(range(depth - 1)):
      units = self.widths[level]
      x = resize_nearest(x, skips[level].shape[1:3])
      x = CBA(units, name=f"up{level}_conv0")(x, train=train)
      x = CBA(units, name=f"up{level}_conv1")(x, train=train)
      x = MultiResBlock(units, name=f"up{level}")(
        jnp.concatenate([skips[level], x], axis=-1), train=train
      )
    return nn.Conv(self.num_classes, (1, 1), name="head")(x)
