"""SCAUnet and SCAUnet-A: U-Nets whose 3x3 convs are scale-attentional convolutions."""

import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxseg.errors import UserError
from jaxseg.models.layers import GlobalAvgPool, LeakyReLU, batch_norm
from jaxseg.models.unet import UNet

REFERENCE = dict(in_channels=1, num_classes=1, widths=(32, 64, 128, 256, 512))
ATTENTIONS = ("eca", "self", "scale_attention")


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
  """ECA-Net's adaptive 1-D kernel: the odd number nearest ``(log2 C + b) / gamma``."""
  t = int(abs((math.log2(channels) + b) / gamma))
  return t if t % 2 else t + 1


class ECA(nn.Module):
  """Efficient channel attention: GAP -> 1-D conv across channels -> sigmoid -> rescale."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    k = eca_kernel_size(c)
    pooled = GlobalAvgPool(name="gap")(x).reshape(x.shape[0], c, 1)  # channels as a sequence
    weights = nn.Conv(1, (k,), padding="SAME", use_bias=False, name="conv")(pooled)
    return x * jax.nn.sigmoid(weights.reshape(x.shape[0], 1, 1, c))


def scale_self_attention(scales: jax.Array) -> jax.Array:
  """Parameter-free self-attention over scales ``[B, H, W, N, m]``.

  Each scale is a token described by its spatially pooled features; the scaled
  dot-product attention between tokens mixes the scale maps.
  """
  tokens = jnp.mean(scales, axis=(1, 2))  # [B, N, m]
  logits = jnp.einsum("bnm,bkm->bnk", tokens, tokens) / math.sqrt(tokens.shape[-1])
  return jnp.einsum("bnk,bhwkm->bhwnm", jax.nn.softmax(logits, axis=-1), scales)


class ScaleAttention(nn.Module):
  """Self-attention across the scales at every position ``[B, H, W, N, m]``: each
  scale's feature vector is a token; learned query and key projections (``m -> d``,
  shared by the scales, no bias) score every pair of scales, and the softmax over
  them mixes the scale features per pixel (values: the features themselves).

  Attributes:
    key_width: ``d``; ``None``: ``max(m // 2, 1)``.
  """

  key_width: int | None = None

  @nn.compact
  def __call__(self, scales: jax.Array) -> jax.Array:
    d = self.key_width or max(scales.shape[-1] // 2, 1)
    query = nn.Dense(d, use_bias=False, name="query")(scales)
    key = nn.Dense(d, use_bias=False, name="key")(scales)
    logits = jnp.einsum("bhwnd,bhwkd->bhwnk", query, key) / math.sqrt(d)
    return jnp.einsum("bhwnk,bhwkm->bhwnm", jax.nn.softmax(logits, axis=-1), scales)


class SCAConv(nn.Module):
  """Scale-attentional convolution (SPEC §2; recipe in architectures.md).

  ``h_0 = 1x1 conv(x)`` with ``width`` channels; ``h_s = pointwise(depthwise3x3(h_{s-1}))``
  for ``s < scales`` with no nonlinearity in between, so scale ``s`` sees a
  ``(2s+1)``-pixel field; the scales are concatenated (deepest first) and attended.
  All convs without bias.

  Attributes:
    scales: number of scales ``N``.
    width: channels per scale ``m``; the output has ``N * m`` channels.
    attention: ``eca`` — ECA channel attention over the concatenated scales (the
      parameter-matched design that reproduces the published counts, the default);
      ``self`` — parameter-free self-attention over the scales (the paper's wording;
      the network then lacks only ECA's 1-D kernels: 491,801 / 164,689 parameters);
      ``scale_attention`` — learned self-attention across the scales at every pixel
      (:class:`ScaleAttention`; 557,209 / 171,345 parameters).
  """

  scales: int
  width: int
  attention: str = "eca"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.Conv(self.width, (1, 1), use_bias=False, name="proj")(x)
    outputs = [h]
    for s in range(1, self.scales):
      h = nn.Conv(
        self.width,
        (3, 3),
        padding="SAME",
        feature_group_count=self.width,
        use_bias=False,
        name=f"dw{s}",
      )(h)
      h = nn.Conv(self.width, (1, 1), use_bias=False, name=f"pw{s}")(h)
      outputs.append(h)
    outputs = outputs[::-1]
    if self.attention == "eca":
      return ECA(name="eca")(jnp.concatenate(outputs, axis=-1))
    stacked = jnp.stack(outputs, axis=-2)
    if self.attention == "scale_attention":
      mixed = ScaleAttention(name="attention")(stacked)
    else:
      mixed = scale_self_attention(stacked)
    return mixed.reshape(*mixed.shape[:3], -1)


class SCABlock(nn.Module):
  """SCA-conv -> BN -> LeakyReLU, with ``features`` split into scales."""

  features: int
  scale_width: int | None  # None: 4 scales (SCAUnet); else channels per scale (SCAUnet-A)
  attention: str = "eca"

  @nn.compact
  def __call__(self, x, *, train=False):
    if self.scale_width is None:
      scales, width = 4, self.features // 4
    else:
      scales, width = max(self.features // self.scale_width, 1), self.scale_width
    x = SCAConv(scales, width, self.attention, name="sca")(x)
    return LeakyReLU(name="act")(batch_norm(train, "bn")(x))


class SCAUNet(UNet):
  """SCAUnet: the reference U-Net skeleton with every 3x3 conv an SCA-conv.

  Attributes (besides those of :class:`~jaxseg.models.unet.UNet`):
    scale_width: ``None`` — fixed ``N = 4`` scales of ``C/4`` channels (SCAUnet,
      491,907 parameters); an int ``m`` — ``N = C/m`` scales (SCAUnet-A uses 16:
      2 scales at 32 channels up to 32 at 512; 164,795 parameters).
    attention: ``eca`` (the reference), ``self`` or ``scale_attention``, see
      :class:`SCAConv`.
  """

  # The parameter count of the defaults (the published recipe), pinned by a test.
  REFERENCE_PARAMS: ClassVar[int] = 491_907

  scale_width: int | None = None
  attention: str = "eca"

  def block(self, width: int, name: str) -> nn.Module:
    if self.attention not in ATTENTIONS:
      raise UserError(f"scaunet: unknown attention {self.attention!r}; known: {ATTENTIONS}.")
    return SCABlock(width, self.scale_width, self.attention, name=name)


class SCAUNetA(SCAUNet):
  """SCAUnet-A: adaptive number of scales, 16 channels each (:class:`SCAUNet`)."""

  # The parameter count of the defaults (the published recipe), pinned by a test.
  REFERENCE_PARAMS: ClassVar[int] = 164_795

  scale_width: int | None = 16
