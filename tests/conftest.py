"""Shared fixtures: a private dataset cache and one tiny config for training tests."""

import os
import signal

import pytest


# Prepared datasets go to a per-session folder, never to the user's cache.
@pytest.fixture(scope="session", autouse=True)
def _dataset_cache(tmp_path_factory):
  os.environ["JAXSEG_CACHE"] = str(tmp_path_factory.mktemp("jaxseg_cache"))
  yield


# XLA's CPU backend spends most of a test's time in LLVM's optimisation passes;
# without them it compiles ~3x faster and runs these tiny programs as fast. Set
# before JAX starts, so it also holds for the subprocesses the tests launch.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0"


# Tests that build the same computation again (a resumed run, another test's tiny
# config, a subprocess) load it from one persistent compilation cache shared by all
# pytest-xdist workers, instead of compiling it anew.
@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
  import jax

  root = tmp_path_factory.getbasetemp()
  if "PYTEST_XDIST_WORKER" in os.environ:
    root = root.parent
  cache = str(root / "jax_cache")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield


def make_tiny_config():
  """The smoke config shrunk further: 32 px, widths (4, 8), 6 steps."""
  from configs import unet_synthetic

  config = unet_synthetic.get_config("smoke")
  config.model.kwargs.widths = (4, 8)
  config.data.kwargs.update(num_train=16, num_validation=4, num_test=4)
  config.train.update(steps=6, eval_every=3, log_every=2)
  config.eval.batch_size = 4
  return config


@pytest.fixture
def tiny_config():
  return make_tiny_config()


def sigterm_at(monkeypatch, step: int) -> None:
  """Every run loop (``skeleton.remaining``) sends this process SIGTERM as ``step``
  (or round) begins, as a preempting scheduler would; ``monkeypatch.undo()`` ends it."""
  from jaxseg.run import skeleton  # noqa: PLC0415

  steps = skeleton.remaining

  def remaining(*args):
    for s in steps(*args):
      if s == step:
        os.kill(os.getpid(), signal.SIGTERM)
      yield s

  monkeypatch.setattr(skeleton, "remaining", remaining)
