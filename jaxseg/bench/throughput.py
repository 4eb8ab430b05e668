"""Compile time, XLA cost analysis, memory and timed throughput of jitted functions."""

import os
import statistics
import time

import jax

PROFILED_CALLS = 3


def peak_bytes(compiled) -> int | None:
  """A compiled program's peak memory by XLA's memory analysis (arguments, outputs and
  temporaries, less what outputs alias); None where the backend gives none."""
  memory = compiled.memory_analysis()
  if memory is None:
    return None
  return (
    memory.temp_size_in_bytes
    + memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    - memory.alias_size_in_bytes
  )


def measure(fn, args, *, repeats: int, feed_back: bool = False, profile=None) -> dict:
  """Compiles ``fn`` for ``args`` and times ``repeats`` calls after one warm-up call.

  ``feed_back``: ``fn`` returns ``(new_first_arg, aux)`` and donates its first
  argument (a training step); each call continues from the previous state.
  ``profile``: ``(directory, name)``: the compiled program's optimized HLO is written to
  ``directory/name.hlo.txt`` and, after the timed calls, :data:`PROFILED_CALLS` more are
  traced by ``jax.profiler`` into ``directory`` (TensorBoard's or Perfetto's profile
  viewer reads it), so the time can be found where XLA spends it.
  """
  jitted = jax.jit(fn, donate_argnums=0) if feed_back else jax.jit(fn)
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  peak = peak_bytes(compiled)
  args = list(args)
  times = []
  for i in range(repeats + 1):
    start = time.perf_counter()
    out = compiled(*args)
    jax.block_until_ready(out)
    if i:  # the first call is the warm-up
      times.append(time.perf_counter() - start)
    if feed_back:
      args[0] = out[0]
  if profile:
    directory, name = profile
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{name}.hlo.txt"), "w") as f:
      f.write(compiled.as_text())
    with jax.profiler.trace(directory):
      for _ in range(PROFILED_CALLS):
        with jax.profiler.TraceAnnotation(name):
          out = compiled(*args)
          jax.block_until_ready(out)
        if feed_back:
          args[0] = out[0]
  return {
    "compile_s": compile_s,
    "xla_flops": float(cost.get("flops", 0.0)),
    "peak_bytes": peak,
    "median_s": statistics.median(times),
  }
