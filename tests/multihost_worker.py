"""One process of the two-process test (tests/test_scaling.py): joins the others
through jax.distributed (JAXSEG_* environment) and runs every job of
``multihost_jobs()`` in ``argv[1]/<job>``. A failing process exits at once (its
shutdown would otherwise wait for the other process)."""

import os
import sys
import traceback

from jaxseg.run import runtime

runtime.initialize_distributed()

import jax  # noqa: E402

from jaxseg import main  # noqa: E402
from tests.test_scaling import multihost_jobs  # noqa: E402

for name, config in multihost_jobs().items():
  try:
    state = main.train(config, os.path.join(sys.argv[1], name))
  except BaseException:
    traceback.print_exc()
    sys.stdout.flush()
    os._exit(1)
  print(f"process {jax.process_index()} of {jax.process_count()}: {name} {int(state.step)}")
