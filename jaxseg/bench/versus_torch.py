"""The reference U-Net training step in jaxseg and in PyTorch, timed side by side.

``jaxseg bench --versus_torch --input 4x1x256x256`` builds the same network (the
reference recipe of :class:`jaxseg.models.unet.UNet`: conv with bias, BatchNorm,
LeakyReLU(0.01), nearest resize to the skip size), the same loss (½·BCE + soft Dice,
per image) and the same optimizer (Adam, lr 1e-4) in both frameworks, then times
their training steps alternately on the same batch and prints the ratio. PyTorch is
a benchmark-only dependency (``pip install torch``; on these CPUs ``torch==2.13.0``).
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxseg import models
from jaxseg.bench.models import supervised_step
from jaxseg.train.state import count_params


def torch_unet(widths, in_channels: int = 1, num_classes: int = 1):
  """The reference U-Net as a ``torch.nn.Module``."""
  import torch  # noqa: PLC0415
  from torch import nn  # noqa: PLC0415

  def cba(i, o):
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.LeakyReLU(0.01))

  class UNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.down = nn.ModuleList()
      prev = in_channels
      for w in widths:
        self.down.append(nn.Sequential(cba(prev, w), cba(w, w)))
        prev = w
      self.up = nn.ModuleList(
        nn.Sequential(cba(widths[level + 1], w), cba(w, w)) for level, w in enumerate(widths[:-1])
      )
      self.merge = nn.ModuleList(nn.Sequential(cba(2 * w, w), cba(w, w)) for w in widths[:-1])
      self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x):
      skips = []
      for level, block in enumerate(self.down):
        x = block(nn.functional.max_pool2d(x, 2) if level else x)
        skips.append(x)
      x = skips.pop()
      for level in reversed(range(len(skips))):
        x = nn.functional.interpolate(x, size=skips[level].shape[2:], mode="nearest")
        x = self.up[level](x)
        x = self.merge[level](torch.cat([skips[level], x], dim=1))
      return self.head(x)

  return UNet()


def _torch_step(model, optimizer, image, labels):
  import torch  # noqa: PLC0415

  optimizer.zero_grad(set_to_none=True)
  logits = model(image)[:, 0]
  bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
  p = torch.sigmoid(logits)
  inter, total = (p * labels).sum((1, 2)), p.sum((1, 2)) + labels.sum((1, 2))
  loss = 0.5 * bce + (1 - (2 * inter + 1) / (total + 1)).mean()
  loss.backward()
  optimizer.step()
  return loss.item()


def run(input_shape, *, widths=(32, 64, 128, 256, 512), repeats: int = 5) -> dict:
  """Alternately times both training steps ``repeats`` times after a warm-up."""
  import torch  # noqa: PLC0415

  n, c, h, w = input_shape
  rng = np.random.default_rng(0)
  image = rng.random((n, h, w, c), np.float32)
  labels = (rng.random((n, h, w)) < 0.05).astype(np.int32)

  model = models.get_model("unet", widths=widths, in_channels=c)
  tx = optax.adam(1e-4)
  state, step = supervised_step(model, tx, (h, w, c))
  step = jax.jit(step, donate_argnums=0)
  batch = {"image": jnp.asarray(image), "labels": jnp.asarray(labels)}
  key = jax.random.key(1)

  tmodel = torch_unet(widths, c).train()
  toptim = torch.optim.Adam(tmodel.parameters(), lr=1e-4)
  timage = torch.from_numpy(image.transpose(0, 3, 1, 2).copy())
  tlabels = torch.from_numpy(labels.astype(np.float32))

  start = time.perf_counter()
  state, _ = step(state, batch, key)
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - start
  _torch_step(tmodel, toptim, timage, tlabels)
  jax_s, torch_s = [], []
  for _ in range(repeats):
    start = time.perf_counter()
    state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    jax_s.append(time.perf_counter() - start)
    start = time.perf_counter()
    _torch_step(tmodel, toptim, timage, tlabels)
    torch_s.append(time.perf_counter() - start)
  result = {
    "input": "x".join(map(str, input_shape)),
    "widths": list(widths),
    "params_jax": count_params(state.nets["model"].params),
    "params_torch": sum(p.numel() for p in tmodel.parameters()),
    "jax_step_s": statistics.median(jax_s),
    "torch_step_s": statistics.median(torch_s),
    "jax_compile_s": compile_s,
    "device": jax.devices()[0].device_kind,
    "jax_version": jax.__version__,
    "torch_version": torch.__version__,
    "torch_threads": torch.get_num_threads(),
    "repeats": repeats,
  }
  result["ratio_jax_over_torch"] = result["jax_step_s"] / result["torch_step_s"]
  return result


def report(result: dict) -> str:
  """The comparison as a markdown table."""
  return "\n".join(
    [
      "| input | params | jaxseg step (s) | PyTorch step (s) | jaxseg / PyTorch |",
      "|---|---|---|---|---|",
      f"| {result['input']} | {result['params_jax']:,} | {result['jax_step_s']:.3f} | "
      f"{result['torch_step_s']:.3f} | {result['ratio_jax_over_torch']:.2f} |",
    ]
  )
