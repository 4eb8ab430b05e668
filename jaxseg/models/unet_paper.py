"""U-Net in the form of the 2015 paper (valid convolutions, cropped skips)."""

from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxseg.errors import UserError
from jaxseg.models.interface import Interface
from jaxseg.models.layers import UpConv2x2, center_crop, max_pool2

REFERENCE = dict(in_channels=1, num_classes=2, widths=(64, 128, 256, 512, 1024))

# "Gaussian with standard deviation sqrt(2/N), N the fan-in" (the paper, section 3).
HE_NORMAL = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def output_size(size: int, depth: int = 5) -> int:
  """Output side length for an input side ``size``; raises if a pool sees an odd size.

  Each level loses 4 pixels to two valid 3x3 convs, pools halve, up-convs double.
  """
  for level in range(depth - 1):
    size -= 4
    if size <= 0 or size % 2:
      raise UserError(
        f"unet_paper: an input side of {size_in(size, level)} gives {size} pixels before "
        f"max-pool {level}; every max-pool needs an even size (e.g. 572 or 188 at depth 5)."
      )
    size //= 2
  size -= 4
  for _ in range(depth - 1):
    size = 2 * size - 4
  if size <= 0:
    raise UserError(f"unet_paper: input too small, output side would be {size}.")
  return size


def size_in(size: int, level: int) -> int:
  """Inverse of the contracting path up to ``level`` (for the error message)."""
  for _ in range(level):
    size = (size + 4) * 2
  return size + 4


class UNetPaper(nn.Module):
  """The 2015 U-Net: unpadded 3x3 convs + ReLU, 2x2 up-convs, cropped skips.

  23 conv layers at depth 5; 31,030,658 parameters at the paper's widths (64..1024,
  1 input channel, 2 classes); a 572x572 tile gives a 388x388 output
  (:func:`output_size`). He-normal initialisation as in the paper. The paper puts
  "drop-out layers at the end of the contracting path"; we apply dropout to the
  bottleneck's output (the authors' Caffe model also drops the level above; set
  ``dropout_rate=0`` to disable).

  Attributes:
    widths: channels per level, top to bottom.
    num_classes: output classes (softmax); 2 in the paper.
    in_channels: expected input channels.
    dropout_rate: dropout at the end of the contracting path.
  """

  # The parameter count of the defaults (the published recipe), pinned by a test.
  REFERENCE_PARAMS: ClassVar[int] = 31_030_658

  widths: Sequence[int] = REFERENCE["widths"]
  num_classes: int = 2
  in_channels: int = 1
  dropout_rate: float = 0.5

  @property
  def interface(self) -> Interface:
    return Interface(
      self.in_channels, self.num_classes, takes_labels=False, stride=2 ** (len(self.widths) - 1)
    )

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if x.shape[-1] != self.in_channels:
      raise UserError(f"UNetPaper expects {self.in_channels} input channels, got {x.shape}.")
    for side in x.shape[1:3]:
      output_size(side, len(self.widths))
    conv = lambda width, name: nn.Conv(  # noqa: E731
      width, (3, 3), padding="VALID", kernel_init=HE_NORMAL, name=name
    )
    skips = []
    for level, width in enumerate(self.widths):
      if level:
        x = max_pool2(x)
      x = nn.relu(conv(width, f"down{level}_conv0")(x))
      x = nn.relu(conv(width, f"down{level}_conv1")(x))
      skips.append(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(skips.pop())
    for level in reversed(range(len(skips))):
      width = self.widths[level]
      x = UpConv2x2(width, kernel_init=HE_NORMAL, name=f"up{level}_upconv")(x)
      x = jnp.concatenate([center_crop(skips[level], x.shape[1:3]), x], axis=-1)
      x = nn.relu(conv(width, f"up{level}_conv0")(x))
      x = nn.relu(conv(width, f"up{level}_conv1")(x))
    return nn.Conv(self.num_classes, (1, 1), kernel_init=HE_NORMAL, name="head")(x)
