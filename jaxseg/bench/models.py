"""``jaxseg bench``: parameters, MACs, XLA FLOPs, throughput and memory per model."""

import ast
import json
import re

import jax
import jax.numpy as jnp
import optax

from jaxseg import losses, models, tables
from jaxseg.bench import flops, throughput
from jaxseg.errors import UserError
from jaxseg.semi import supervised
from jaxseg.train import state as state_lib
from jaxseg.train import step as step_lib

COLUMNS = (
  ("model", "{}"),
  ("params", "{:,}"),
  ("gmacs", "{:.2f}"),
  ("gmacs_paper", "{:.2f}"),
  ("xla_gflops_forward", "{:.1f}"),
  ("xla_gflops_train_step", "{:.1f}"),
  ("infer_img_s", "{:.2f}"),
  ("train_img_s", "{:.2f}"),
  ("train_tflops_s", "{:.3f}"),
  ("mfu", "{}"),
  ("compile_s", "{:.1f}"),
  ("peak_mib", "{:.0f}"),
)


# Dense peak TFLOP/s by device kind (substring) and compute dtype, from the vendors'
# data sheets; float32 convolutions and matmuls run as TF32 on NVIDIA tensor cores
# (JAX's default precision). Devices not listed get no MFU.
PEAK_TFLOPS = {
  "H100": {"bfloat16": 989.4, "float32": 494.7},
  "H200": {"bfloat16": 989.4, "float32": 494.7},
  "A100": {"bfloat16": 312.0, "float32": 156.0},
  "TPU v4": {"bfloat16": 275.0, "float32": 275.0},
  "TPU v5 lite": {"bfloat16": 197.0, "float32": 197.0},
  "TPU v5p": {"bfloat16": 459.0, "float32": 459.0},
}


def model_flops_utilization(device_kind: str, dtype: str, tflops_s: float) -> str:
  """``tflops_s`` over the device's peak, as a percentage string ("-" if unknown)."""
  for kind, peaks in PEAK_TFLOPS.items():
    if kind in device_kind:
      return f"{100 * tflops_s / peaks[dtype]:.1f}%"
  return "-"


def parse_model(spec: str) -> tuple[str, dict]:
  """``"name:key=value,key=value"`` -> ``(name, kwargs)``; values are Python literals."""
  name, _, rest = spec.partition(":")
  kwargs = {}
  for item in filter(None, _split_top_level(rest)):
    key, sep, value = item.partition("=")
    if not sep:
      raise UserError(f"model spec {spec!r}: expected key=value, found {item!r}.")
    try:
      kwargs[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      kwargs[key] = value
  return name, kwargs


def split_specs(text: str) -> list[str]:
  """``--models``: ``"unetpp,unet:mode=l2,widths=(4,8)"`` -> ``["unetpp",
  "unet:mode=l2,widths=(4,8)"]`` (an item ``key=value`` continues the spec before it)."""
  specs = []
  for item in filter(None, _split_top_level(text)):
    key, sep, _ = item.partition("=")
    if sep and ":" not in key and specs:
      specs[-1] += f",{item}"
    else:
      specs.append(item)
  return specs


def _split_top_level(text: str) -> list[str]:
  """Splits on commas outside brackets: ``"a=1,w=(4,8)"`` -> ``["a=1", "w=(4,8)"]``."""
  parts, depth, current = [], 0, ""
  for char in text:
    depth += char in "([{"
    depth -= char in ")]}"
    if char == "," and depth == 0:
      parts.append(current)
      current = ""
    else:
      current += char
  return [*parts, current]


def parse_input(text: str) -> tuple[int, ...]:
  """``"NxCxHxW"`` -> ``(N, C, H, W)``; a volume ``"NxCxDxHxW"`` -> ``(N, C, D, H, W)``."""
  try:
    shape = tuple(int(v) for v in text.lower().split("x"))
  except ValueError:
    shape = ()
  if len(shape) not in (4, 5):
    raise UserError(
      f"--input: expected NxCxHxW (e.g. 1x1x426x545) or NxCxDxHxW for volumes, found {text!r}."
    )
  return shape


def supervised_step(model, tx, image_shape, compute_dtype=None):
  """``(state, train_step(state, batch, key))`` of plain supervised BCE+Dice training
  of ``model`` (no augmentation), as ``jaxseg train`` runs it."""
  ctx = step_lib.Context(
    model, losses.get_loss("bce_dice"), tx, {}, image_shape, 1, compute_dtype=compute_dtype
  )
  method = supervised.make()
  state = jax.jit(lambda: method.init(ctx, jax.random.key(0)))()
  return state, lambda state, batch, key: method.step(ctx, state, batch, None, key)


def bench_model(spec: str, shape, *, dtype: str, repeats: int, profile: str | None = None) -> dict:
  """One record: sizes and costs at ``shape`` (N, C, H, W) — or (N, C, D, H, W): a
  volume, for a model built with ``spatial_dims=3`` —, and measured speed.
  ``profile``: a directory for the forward pass's and the training step's HLO and
  ``jax.profiler`` trace (:func:`jaxseg.bench.throughput.measure`)."""
  name, kwargs = parse_model(spec)
  n, c, *spatial = shape
  if len(spatial) == 3:
    kwargs = {"spatial_dims": 3, **kwargs}
  model = models.get_model(name, **{"in_channels": c, **kwargs})
  x = jnp.zeros((n, *spatial, c), jnp.float32)
  tx = optax.adam(1e-4)
  compute = jnp.dtype(dtype)
  state, step = supervised_step(model, tx, (*spatial, c), None if dtype == "float32" else compute)
  variables = state_lib.variables(state.nets["model"])

  def forward(variables, x):
    cast = jax.tree.map(lambda a: a.astype(compute), variables)
    return model.apply(cast, x.astype(compute), train=False)

  batch = {"image": x, "labels": jnp.zeros((n, *spatial), jnp.int32)}
  tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{spec}_{dtype}_{'x'.join(map(str, shape))}")
  where = lambda part: profile and (profile, f"{tag}_{part}")  # noqa: E731
  fwd = throughput.measure(forward, (variables, x), repeats=repeats, profile=where("forward"))
  train = throughput.measure(
    lambda s, b: step(s, b, jax.random.key(1)),
    (state, batch),
    repeats=repeats,
    feed_back=True,
    profile=where("train_step"),
  )
  device = jax.devices()[0]
  macs = flops.jaxpr_macs(forward, variables, x)
  # Model FLOPs of a training step: forward MACs x 2 FLOPs x 3 (forward + backward).
  train_tflops_s = 6 * macs / train["median_s"] / 1e12
  return {
    "model": spec,
    "input": "x".join(map(str, shape)),
    "dtype": dtype,
    "params": state_lib.count_params(variables["params"]),
    "gmacs": macs / n / 1e9,
    "gmacs_paper": flops.paper_macs(model, variables, x) / n / 1e9,
    "xla_gflops_forward": fwd["xla_flops"] / n / 1e9,
    "xla_gflops_train_step": train["xla_flops"] / n / 1e9,
    "infer_img_s": n / fwd["median_s"],
    "train_img_s": n / train["median_s"],
    "train_tflops_s": train_tflops_s,
    "mfu": model_flops_utilization(device.device_kind, dtype, train_tflops_s),
    "compile_s": fwd["compile_s"] + train["compile_s"],
    "peak_mib": max(fwd["peak_bytes"] or 0, train["peak_bytes"] or 0) / 2**20,
    "device": device.device_kind,
    "jax_version": jax.__version__,
    "repeats": repeats,
  }


def markdown(records: list[dict]) -> str:
  lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  for r in records:
    lines.append("| " + " | ".join(fmt.format(r[name]) for name, fmt in COLUMNS) + " |")
  return "\n".join(lines)


def run(
  model_specs: list[str],
  input_shape: str,
  *,
  batch: int | None,
  dtype: str,
  repeats: int,
  json_path: str | None,
  profile: str | None = None,
) -> list[dict]:
  """Benchmarks every model, prints the table and writes the JSON records (and with
  ``profile`` each one's HLO and profiler trace in that directory)."""
  n, *rest = parse_input(input_shape)
  shape = (batch or n, *rest)
  for spec in model_specs:  # fail on unknown names before any slow work
    tables.check(models.MODELS, parse_model(spec)[0], "model")
  records = []
  for spec in model_specs:
    records.append(bench_model(spec, shape, dtype=dtype, repeats=repeats, profile=profile))
    print(f"{spec}: done", flush=True)
  device = records[0]["device"] if records else ""
  layout = "NxCxDxHxW" if len(shape) == 5 else "NxCxHxW"
  print(
    f"\nInput {'x'.join(map(str, shape))} ({layout}), {dtype}, {device}, jax "
    f"{jax.__version__}. gmacs: conv+dense MACs/image (jaxpr); gmacs_paper: thop "
    f"convention of the SCAUnet table; xla_gflops: XLA cost analysis (2 FLOPs per "
    f"MAC)/image; img/s: median of {repeats} after warm-up.\n"
  )
  print(markdown(records))
  if json_path:
    with open(json_path, "w") as f:
      json.dump(records, f, indent=2)
  return records
