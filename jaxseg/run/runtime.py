"""Process setup before JAX starts its backends: multi-host and XLA flags.

``setup(config)`` runs once per process, before the first computation:

* ``config.runtime.deterministic`` (or ``JAXSEG_DETERMINISTIC=1``) appends
  ``--xla_gpu_deterministic_ops=true`` to ``XLA_FLAGS``: GPU kernels with
  run-to-run variation (atomics in scatter-adds and reductions, autotuned
  convolution algorithms) are replaced by deterministic ones and autotuning is off.
  CPU and TPU runs are deterministic without it.
* ``config.runtime.distributed`` (or ``JAXSEG_DISTRIBUTED=1``, which the ``launch/``
  scripts set) calls ``jax.distributed.initialize``: on SLURM and Cloud TPU the
  processes find each other by themselves; elsewhere ``JAXSEG_COORDINATOR``
  (host:port of process 0), ``JAXSEG_NUM_PROCESSES`` and ``JAXSEG_PROCESS_ID`` say
  it. CPU processes exchange collectives through gloo.
"""

import logging as std_logging
import os

import jax

from jaxseg.errors import UserError

DETERMINISTIC_FLAGS = "--xla_gpu_deterministic_ops=true"
NOISY = ("tensorflow_datasets", "orbax")  # libraries whose warnings a user cannot act on


def quiet(record) -> bool:
  """A logging filter: errors, and warnings of libraries other than :data:`NOISY`."""
  return record.levelno >= std_logging.ERROR or not any(f"/{n}/" in record.pathname for n in NOISY)


def setup(config) -> None:
  """Sets XLA flags and joins the other processes, as ``config.runtime`` says."""
  if "runtime" not in config:
    return
  env = os.environ
  if config.runtime.deterministic or env.get("JAXSEG_DETERMINISTIC") == "1":
    if DETERMINISTIC_FLAGS not in env.get("XLA_FLAGS", ""):
      env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {DETERMINISTIC_FLAGS}".strip()
  if config.runtime.distributed or env.get("JAXSEG_DISTRIBUTED") == "1":
    initialize_distributed()


def initialize_distributed() -> None:
  env = os.environ
  kwargs = {}
  if "JAXSEG_NUM_PROCESSES" in env:
    missing = [k for k in ("JAXSEG_COORDINATOR", "JAXSEG_PROCESS_ID") if k not in env]
    if missing:
      raise UserError(f"JAXSEG_NUM_PROCESSES is set but {missing} are not.")
    kwargs = dict(
      coordinator_address=env["JAXSEG_COORDINATOR"],
      num_processes=int(env["JAXSEG_NUM_PROCESSES"]),
      process_id=int(env["JAXSEG_PROCESS_ID"]),
    )
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
