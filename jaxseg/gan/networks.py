"""The networks pix2pix and DAGAN share, and what a GAN is to the training step.

* :class:`Generator`: the pix2pix U-Net encoder-decoder (Isola et al., 2017):
  4×4 convolutions of stride 2 down to the bottleneck, 4×4 transposed convolutions
  back up, skip connections concatenating each encoder level, BatchNorm, LeakyReLU
  (0.2) down and ReLU up, dropout 0.5 in the innermost decoder blocks (pix2pix's
  only noise), ``tanh`` output; as in pix2pix only the output layer has a bias.
  With ``noise_dim > 0`` (DAGAN) a noise vector is projected and concatenated to
  the bottleneck.
* :class:`PatchDiscriminator`: PatchGAN, a fully convolutional classifier of
  overlapping patches; the default widths (64, 128, 256, 512) give the 70×70
  receptive field; convolutions followed by BatchNorm have no bias.
  ``norm="spectral"`` replaces BatchNorm by spectral normalisation of every
  convolution (DAGAN).
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxseg.errors import UserError

INIT = nn.initializers.normal(0.02)  # pix2pix's weight initialisation
PAD = ((1, 1), (1, 1))


def encode_mask(labels: jax.Array, classes: int) -> jax.Array:
  """Class map ``[B, H, W]`` -> channels in [-1, 1]: one channel for two classes
  (foreground), else one per class."""
  if classes == 2:
    return (labels > 0).astype(jnp.float32)[..., None] * 2 - 1
  return jax.nn.one_hot(labels, classes) * 2 - 1


def decode_mask(x: jax.Array, classes: int) -> jax.Array:
  """The inverse of :func:`encode_mask` for generated channels: ``[B, H, W]`` int32."""
  if classes == 2:
    return (x[..., 0] > 0).astype(jnp.int32)
  return jnp.argmax(x, axis=-1).astype(jnp.int32)


def to_unit(image: jax.Array) -> jax.Array:
  """A generated image in [-1, 1] -> the pipeline's [0, 1]."""
  return jnp.clip((image + 1) / 2, 0.0, 1.0)


class Generator(nn.Module):
  """pix2pix's U-Net generator (see the module docstring).

  Attributes:
    out_channels: channels generated (``tanh``, in [-1, 1]).
    widths: encoder widths, one per stride-2 level; the input size must divide by
      ``2 ** len(widths)``. pix2pix at 256 px: (64, 128, 256, 512, 512, 512, 512, 512).
    dropout_blocks: innermost decoder blocks with dropout 0.5 (pix2pix: 3).
    noise_dim: length of a noise vector projected to the bottleneck (DAGAN), 0: none.
  """

  out_channels: int = 1
  widths: tuple[int, ...] = (64, 128, 256, 512, 512, 512, 512, 512)
  dropout_blocks: int = 3
  noise_dim: int = 0

  @nn.compact
  def __call__(self, x, z=None, *, train: bool = False):
    size, levels = x.shape[1:3], len(self.widths)
    if size[0] % 2**levels or size[1] % 2**levels:
      raise UserError(
        f"the GAN generator halves its input {levels} times (config.gan.kwargs.generator."
        f"widths has {levels} entries): image size {size} must divide by {2**levels}."
      )
    features = []
    for i, width in enumerate(self.widths):
      x = x if i == 0 else nn.leaky_relu(x, 0.2)
      x = nn.Conv(width, (4, 4), 2, PAD, use_bias=False, kernel_init=INIT, name=f"down{i}")(x)
      if 0 < i < levels - 1:  # no norm on the outermost and the 1x1 innermost level
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"down{i}_bn")(x)
      features.append(x)
    if self.noise_dim:
      z = nn.Dense(self.widths[-1], kernel_init=INIT, name="noise")(z)
      z = jnp.broadcast_to(z[:, None, None, :], (*x.shape[:3], z.shape[-1]))
      x = jnp.concatenate([x, z], axis=-1)
    for j, i in enumerate(reversed(range(levels - 1))):
      up = nn.ConvTranspose(
        self.widths[i], (4, 4), (2, 2), "SAME", use_bias=False, kernel_init=INIT, name=f"up{i}"
      )
      x = up(nn.relu(x))
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"up{i}_bn")(x)
      if j < self.dropout_blocks:
        x = nn.Dropout(0.5, deterministic=not train)(x)
      x = jnp.concatenate([x, features[i]], axis=-1)
    x = nn.ConvTranspose(self.out_channels, (4, 4), (2, 2), "SAME", kernel_init=INIT, name="out")(
      nn.relu(x)
    )
    return jnp.tanh(x)


class PatchDiscriminator(nn.Module):
  """PatchGAN (see the module docstring): logits ``[B, h, w, 1]``, one per patch.

  Attributes:
    widths: all but the last convolution halve the size; (64, 128, 256, 512) gives
      the 70×70 receptive field of pix2pix.
    norm: ``batch`` (pix2pix) or ``spectral`` (DAGAN's spectrally normalised convs).
  """

  widths: tuple[int, ...] = (64, 128, 256, 512)
  norm: str = "batch"

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if self.norm not in ("batch", "spectral"):
      raise UserError(
        f"PatchDiscriminator norm must be 'batch' or 'spectral', found {self.norm!r}."
      )

    def conv(x, width, stride, i):
      bias = self.norm == "spectral" or i in (0, len(self.widths))  # no bias before BatchNorm
      layer = nn.Conv(width, (4, 4), stride, PAD, use_bias=bias, kernel_init=INIT, name=f"conv{i}")
      if self.norm == "spectral":
        return nn.SpectralNorm(layer, name=f"conv{i}_sn")(x, update_stats=train)
      return layer(x)

    for i, width in enumerate(self.widths):
      x = conv(x, width, 2 if i < len(self.widths) - 1 else 1, i)
      if i > 0 and self.norm == "batch":
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"bn{i}")(x)
      x = nn.leaky_relu(x, 0.2)
    return conv(x, 1, 1, len(self.widths))


@dataclasses.dataclass(frozen=True)
class Spec:
  """A conditional GAN as the training step and synthesis see it.

  Attributes:
    generator: ``generator(condition, z, train=...)`` -> generated channels in [-1, 1].
    discriminator: patch logits of ``concat(condition, candidate)``.
    condition: batch -> what both networks are conditioned on.
    real: batch -> what the discriminator must call real next to the condition.
    decode: ``(generated, batch)`` -> ``{image [0, 1], labels}``, a synthetic pair.
    noise_dim: length of the generator's noise vector (0: dropout is the noise).
    l1_weight: weight of ``|generated - real|`` in the generator's loss (pix2pix 100).
    classes: classes of the masks (two: one foreground channel).
  """

  generator: nn.Module
  discriminator: nn.Module
  condition: Callable
  real: Callable
  decode: Callable
  noise_dim: int = 0
  l1_weight: float = 0.0
  classes: int = 2

  def noise(self, key: jax.Array, batch_size: int) -> jax.Array | None:
    if not self.noise_dim:
      return None
    return jax.random.normal(key, (batch_size, self.noise_dim))
