"""Blocks shared by the architectures."""

import jax
import jax.numpy as jnp
from flax import linen as nn

# PyTorch's BatchNorm2d defaults (momentum 0.1 there is 0.9 here), as in the
# reference implementations whose parameter counts and numbers we reproduce.
BATCH_NORM = dict(momentum=0.9, epsilon=1e-5)


class LeakyReLU(nn.Module):
  """LeakyReLU as a module, so layer-level counters (the paper's FLOP convention)
  see it, as PyTorch's counters see ``nn.LeakyReLU``."""

  negative_slope: float = 0.01

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.leaky_relu(x, self.negative_slope)


class GlobalAvgPool(nn.Module):
  """Mean over the spatial axes, keeping them as 1x1 (a module for the same reason)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=(1, 2), keepdims=True)


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, name=name, **BATCH_NORM)


class CBA(nn.Module):
  """Conv (same padding) -> BatchNorm -> LeakyReLU.

  Attributes:
    features: output channels.
    kernel_size: square kernel size.
    use_bias: whether the convolution has a bias (the reference recipes do).
    negative_slope: LeakyReLU slope (0.01, PyTorch's default).
  """

  features: int
  kernel_size: int = 3
  use_bias: bool = True
  negative_slope: float = 0.01

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    k = self.kernel_size
    x = nn.Conv(self.features, (k, k), padding="SAME", use_bias=self.use_bias, name="conv")(x)
    x = batch_norm(train, name="bn")(x)
    return LeakyReLU(self.negative_slope, name="act")(x)


def max_pool2(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2; odd sizes are floored (as PyTorch does)."""
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def resize_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Nearest-neighbour resize of NHWC ``x`` to spatial ``size`` (no parameters).

  Source index ``floor(i * in / out)``, as PyTorch's ``interpolate(mode='nearest')``.
  """
  _, h, w, _ = x.shape
  if size[0] % h == 0 and size[1] % w == 0:
    # Integer factors: a repeat, whose gradient is a reshape-sum; the general gather's
    # gradient is a scatter-add, which is slow on XLA:CPU.
    return jnp.repeat(jnp.repeat(x, size[0] // h, axis=1), size[1] // w, axis=2)
  rows = (jnp.arange(size[0]) * h) // size[0]
  cols = (jnp.arange(size[1]) * w) // size[1]
  return x[:, rows][:, :, cols]


def center_crop(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Crops the spatial axes 1, 2 of ``x`` to ``size`` around the centre."""
  top = (x.shape[1] - size[0]) // 2
  left = (x.shape[2] - size[1]) // 2
  return x[:, top : top + size[0], left : left + size[1]]


class UpConv2x2(nn.Module):
  """2x2 transposed convolution with stride 2 ("up-convolution").

  The stride equals the kernel, so the output blocks do not overlap and the layer is
  one einsum. Written this way because XLA:CPU computes the weight gradient of
  ``nn.ConvTranspose`` ~36x slower than this form (see stack notes); outputs match.
  """

  features: int
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    kernel = self.param("kernel", self.kernel_init, (2, 2, c, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    y = jnp.einsum("bhwc,uvco->bhuwvo", x, kernel.astype(x.dtype))
    return y.reshape(b, 2 * h, 2 * w, self.features) + bias.astype(x.dtype)
