"""Blocks shared by the architectures."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxseg.errors import UserError

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
    spatial_dims: 2 (``k x k``) or 3 (``k x k x k``).
  """

  features: int
  kernel_size: int = 3
  use_bias: bool = True
  negative_slope: float = 0.01
  spatial_dims: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    kernel = (self.kernel_size,) * self.spatial_dims
    x = nn.Conv(self.features, kernel, padding="SAME", use_bias=self.use_bias, name="conv")(x)
    x = batch_norm(train, name="bn")(x)
    return LeakyReLU(self.negative_slope, name="act")(x)


def max_pool2(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2; odd sizes are floored (as PyTorch does)."""
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def max_pool(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
  """Max-pool with stride = ``window`` over the spatial axes (any number; floored)."""
  return nn.max_pool(x, tuple(window), strides=tuple(window), padding="VALID")


def pool_kernels(pool, depth: int, spatial_dims: int) -> list[tuple[int, ...]]:
  """The pooling window between each pair of levels: ``pool`` (one window per level
  transition, e.g. nnU-Net's anisotropic plan ``((2, 2, 1), (2, 2, 2), ...)``) or
  ``None``: 2 along every axis."""
  if pool is None:
    return [(2,) * spatial_dims] * (depth - 1)
  kernels = [tuple(int(k) for k in w) for w in pool]
  if len(kernels) != depth - 1 or any(len(k) != spatial_dims for k in kernels):
    raise UserError(
      f"model pool {pool}: expected {depth - 1} windows of {spatial_dims} sizes "
      f"(one per level transition of {depth} levels)."
    )
  return kernels


def strides(pool, depth: int, spatial_dims: int) -> tuple[int, ...]:
  """The total down-sampling factor along each spatial axis."""
  return tuple(int(np.prod(k)) for k in zip(*pool_kernels(pool, depth, spatial_dims), strict=True))


def resize_nearest(x: jax.Array, size: tuple[int, ...]) -> jax.Array:
  """Nearest-neighbour resize of channels-last ``x`` to spatial ``size`` (no parameters;
  any number of spatial axes).

  Source index ``floor(i * in / out)``, as PyTorch's ``interpolate(mode='nearest')``.
  """
  for axis, out in enumerate(size, start=1):
    n = x.shape[axis]
    if out % n == 0:
      # Integer factors: a repeat, whose gradient is a reshape-sum; the general gather's
      # gradient is a scatter-add, which is slow on XLA:CPU.
      x = jnp.repeat(x, out // n, axis=axis)
    else:
      x = jnp.take(x, (jnp.arange(out) * n) // out, axis=axis)
  return x


def center_crop(x: jax.Array, size: tuple[int, ...]) -> jax.Array:
  """Crops the spatial axes ``1 .. len(size)`` of ``x`` to ``size`` around the centre."""
  starts = [(x.shape[1 + i] - s) // 2 for i, s in enumerate(size)]
  return x[(slice(None), *(slice(a, a + s) for a, s in zip(starts, size, strict=True)))]


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
