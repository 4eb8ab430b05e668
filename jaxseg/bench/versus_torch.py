"""The reference U-Net in jaxseg and in PyTorch, trained and run side by side.

``jaxseg bench --versus_torch --input 64x1x256x256 [--dtype D]`` builds the same network (the
reference recipe of :class:`jaxseg.models.unet.UNet`: conv with bias, BatchNorm,
LeakyReLU(0.01), nearest resize to the skip size), the same loss (½·BCE + soft Dice,
per image) and the same optimizer (Adam, lr 1e-4) in both frameworks and times, in
float32 and in bfloat16 (or the one ``--dtype`` given), on the same batch:

* **jaxseg**: the jitted training step ``jaxseg train`` runs (bfloat16: float32
  parameters, bfloat16 compute — ``train.compute_dtype``) and inference (BatchNorm's
  running statistics);
* **torch eager**: the module as written (float32: TF32 allowed on CUDA, as JAX's
  default precision is there; bfloat16: ``torch.autocast``, i.e. AMP;
  ``cudnn.benchmark`` on);
* **torch.compile**: the module compiled (``inductor``) in the channels-last memory
  format, AMP for bfloat16 — what a PyTorch user would pick for speed.

Every contender is warmed up (its first call, compilation included, is timed apart),
then the contenders are timed in turn, ``repeats`` times, so that a machine's
slower moments fall on all of them. A row: training and inference images/s (median),
the first calls' seconds, the peak device memory (jaxseg: the compiled step's memory
analysis; PyTorch on CUDA: ``max_memory_allocated`` over its own model, optimizer
and step; on a CPU "-"), and jaxseg's images/s over the row's (``> 1``: jaxseg is
faster). PyTorch is an optional extra: ``pip install -e '.[versus-torch]'`` (on a GPU
machine, PyTorch's CUDA build).
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxseg import models
from jaxseg.bench import throughput
from jaxseg.bench.models import supervised_step
from jaxseg.errors import UserError
from jaxseg.train import state as state_lib

REFERENCE_WIDTHS = (32, 64, 128, 256, 512)
DTYPES = ("float32", "bfloat16")
COMPILE_BACKEND = "inductor"  # torch.compile's; tests use "aot_eager" (no C++ build)
FRAMEWORKS = ("jaxseg", "torch eager", "torch.compile")


def import_torch():
  try:
    import torch  # noqa: PLC0415
  except ImportError:
    raise UserError(
      "jaxseg bench --versus_torch needs PyTorch: pip install -e '.[versus-torch]' "
      "(on a GPU machine, PyTorch's CUDA build)."
    ) from None
  return torch


def torch_unet(widths, in_channels: int = 1, num_classes: int = 1):
  """The reference U-Net as a ``torch.nn.Module``."""
  torch = import_torch()
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


def torch_loss(logits, labels):
  """½·BCE + soft Dice per image (``losses.bce_dice`` for one class)."""
  torch = import_torch()
  bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
  p = torch.sigmoid(logits)
  inter, total = (p * labels).sum((1, 2)), p.sum((1, 2)) + labels.sum((1, 2))
  return 0.5 * bce + (1 - (2 * inter + 1) / (total + 1)).mean()


class Contender:
  """One framework's ``train()`` and ``infer()`` (each a whole step, synchronised),
  its parameter count and ``peak()``, its peak memory in bytes (None: unknown)."""

  def __init__(self, train, infer, params: int, peak):
    self.train, self.infer, self.params, self.peak = train, infer, params, peak


def jaxseg_contender(image, labels, widths, dtype: str) -> Contender:
  n, h, w, c = image.shape
  model = models.get_model("unet", widths=widths, in_channels=c)
  compute = None if dtype == "float32" else jnp.dtype(dtype)
  state, step = supervised_step(model, optax.adam(1e-4), (h, w, c), compute)
  batch = {"image": jnp.asarray(image), "labels": jnp.asarray(labels)}
  key = jax.random.key(1)
  step = jax.jit(step, donate_argnums=0).lower(state, batch, key).compile()
  peak = throughput.peak_bytes(step)
  held = [state]

  def train():
    held[0], metrics = step(held[0], batch, key)
    jax.block_until_ready(metrics)

  cast = jnp.dtype(dtype)

  @jax.jit
  def forward(variables, x):
    variables = jax.tree.map(lambda a: a.astype(cast), variables)
    return model.apply(variables, x.astype(cast), train=False)

  def infer():
    jax.block_until_ready(forward(state_lib.variables(held[0].nets["model"]), batch["image"]))

  return Contender(train, infer, state_lib.count_params(state.nets["model"].params), lambda: peak)


def torch_contender(image, labels, widths, dtype: str, backend: str | None) -> Contender:
  """PyTorch eager (``backend`` None) or ``torch.compile(backend=backend)`` in the
  channels-last format; AMP for bfloat16."""
  torch = import_torch()
  cuda = torch.cuda.is_available()
  device = "cuda" if cuda else "cpu"
  if cuda:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
  fmt = torch.channels_last if backend else torch.contiguous_format
  model = torch_unet(widths, image.shape[-1]).to(device, memory_format=fmt)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
  net = torch.compile(model, backend=backend) if backend else model
  x = torch.from_numpy(image.transpose(0, 3, 1, 2).copy()).to(device, memory_format=fmt)
  y = torch.from_numpy(labels.astype(np.float32)).to(device)
  amp = dict(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

  def train():
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(**amp):
      logits = net(x)[:, 0]
    loss = torch_loss(logits.float(), y)
    loss.backward()
    optimizer.step()
    loss.item()  # waits for the device

  def infer():
    model.eval()
    with torch.no_grad(), torch.autocast(**amp):
      net(x)[0, 0, 0, 0].item()

  def peak():
    return torch.cuda.max_memory_allocated() - base if cuda else None

  params = sum(p.numel() for p in model.parameters())
  return Contender(train, infer, params, peak)


def compare(input_shape, widths, dtype: str, repeats: int) -> list[dict]:
  """One row per framework at ``input_shape`` (N, C, H, W) in ``dtype``."""
  n, c, h, w = input_shape
  rng = np.random.default_rng(0)
  image = rng.random((n, h, w, c), np.float32)
  labels = (rng.random((n, h, w)) < 0.05).astype(np.int32)
  contenders, first, peaks = {}, {}, {}
  for name in FRAMEWORKS:  # built and warmed up one at a time: their own peak memory
    start = time.perf_counter()
    if name == "jaxseg":
      contender = jaxseg_contender(image, labels, widths, dtype)
    else:
      backend = COMPILE_BACKEND if name == "torch.compile" else None
      contender = torch_contender(image, labels, widths, dtype, backend)
    contender.train()
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    contender.infer()
    first[name] = (train_s, time.perf_counter() - start)
    contender.train(), contender.infer()  # a second call: nothing left to compile
    contenders[name], peaks[name] = contender, contender.peak()
  times = {name: {"train": [], "infer": []} for name in FRAMEWORKS}
  for _ in range(repeats):  # in turn, so slow moments fall on every contender
    for name, contender in contenders.items():
      for mode in ("train", "infer"):
        start = time.perf_counter()
        getattr(contender, mode)()
        times[name][mode].append(time.perf_counter() - start)
  rows = []
  for name, contender in contenders.items():
    rate = {m: n / statistics.median(t) for m, t in times[name].items()}
    rows.append(
      {
        "input": "x".join(map(str, input_shape)),
        "dtype": dtype,
        "framework": name,
        "params": contender.params,
        "train_img_s": rate["train"],
        "infer_img_s": rate["infer"],
        "first_train_s": first[name][0],
        "first_infer_s": first[name][1],
        "peak_mib": None if peaks[name] is None else peaks[name] / 2**20,
      }
    )
  for row in rows:
    row["jaxseg_over_train"] = rows[0]["train_img_s"] / row["train_img_s"]
    row["jaxseg_over_infer"] = rows[0]["infer_img_s"] / row["infer_img_s"]
  return rows


def run(input_shape, *, widths=None, repeats: int = 5, dtypes=None) -> dict:
  """Every framework at ``input_shape`` (N, C, H, W) in each of ``dtypes``: the rows
  of :func:`compare` and what they ran on (``dtypes`` None: :data:`DTYPES`)."""
  torch = import_torch()
  if len(input_shape) != 4:
    raise UserError(f"--versus_torch: expected --input NxCxHxW, found {input_shape}.")
  widths = tuple(widths or REFERENCE_WIDTHS)
  dtypes = dtypes or DTYPES
  rows = [row for dtype in dtypes for row in compare(input_shape, widths, dtype, repeats)]
  return {
    "rows": rows,
    "widths": list(widths),
    "device": jax.devices()[0].device_kind,
    "torch_device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    "jax_version": jax.__version__,
    "torch_version": torch.__version__,
    "torch_threads": torch.get_num_threads(),
    "compile_backend": COMPILE_BACKEND,
    "repeats": repeats,
  }


def report(result: dict) -> str:
  """The comparison as a markdown table, with what it ran on."""
  head = (
    "| input | dtype | framework | params | train img/s | jaxseg / it | infer img/s "
    "| jaxseg / it | first call train / infer (s) | peak MiB |"
  )
  lines = [head, "|---" * 10 + "|"]
  for r in result["rows"]:
    peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
    lines.append(
      f"| {r['input']} | {r['dtype']} | {r['framework']} | {r['params']:,} | "
      f"{r['train_img_s']:.2f} | {r['jaxseg_over_train']:.2f} | {r['infer_img_s']:.2f} | "
      f"{r['jaxseg_over_infer']:.2f} | {r['first_train_s']:.1f} / {r['first_infer_s']:.1f} | "
      f"{peak} |"
    )
  lines.append(
    f"\n{result['device']} (PyTorch on {result['torch_device']}), jax "
    f"{result['jax_version']}, torch {result['torch_version']} ({result['torch_threads']} "
    f"threads), torch.compile backend {result['compile_backend']}, median of "
    f"{result['repeats']} after warm-up; jaxseg / it: jaxseg's images/s over the row's."
  )
  return "\n".join(lines)
