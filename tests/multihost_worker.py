"""One process of the two-process test (tests/test_scaling.py): joins the others
through jax.distributed (JAXSEG_* environment) and trains the tiny config in workdir
argv[1] with data placement argv[2]. A failing process exits at once (its shutdown
would otherwise wait for the other process)."""

import os
import sys
import traceback

from jaxseg.run import runtime

runtime.initialize_distributed()

import jax  # noqa: E402

from jaxseg import main  # noqa: E402
from tests.conftest import make_tiny_config  # noqa: E402
from tests.test_scaling import scaling_config  # noqa: E402

config = scaling_config(make_tiny_config())
config.data.placement = sys.argv[2]
try:
  state = main.train(config, sys.argv[1])
except BaseException:
  traceback.print_exc()
  sys.stdout.flush()
  os._exit(1)
print(f"process {jax.process_index()} of {jax.process_count()}: step {int(state.step)}")
