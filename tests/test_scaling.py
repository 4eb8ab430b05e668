"""Scaling: data parallelism over CPU devices, FSDP, two processes, mixed precision,
runtime flags, and the launch scripts' dry runs."""

import os
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxseg import losses, main, models, semi
from jaxseg.run import runtime
from jaxseg.run.checkpoint import Checkpoints
from jaxseg.run.experiment import Experiment
from jaxseg.train import step as step_lib
from tests.conftest import make_tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def scaling_config(config):
  """SGD (Adam's normalisation would amplify the rounding differences of reordered
  sums) and a batch of 8, which splits over 1, 2, 4 and 8 devices."""
  config.optim.update(name="sgd", lr=0.05, schedule="constant", warmup_steps=0)
  config.train.update(batch_size=8, steps=4, eval_every=2, log_every=2)
  return config


def _subprocess(code: str, env=None):
  env = {**os.environ, "PYTHONPATH": REPO, **(env or {})}
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_data_parallel_trajectory_matches_one_device():
  """Three steps on 1, 2, 4 (FSDP) and 8 CPU devices give the parameters of one
  device up to the order of floating-point sums, and the device-resident data draws
  bitwise the same global batches on every mesh."""
  code = """
import jax, numpy as np
jax.config.update("jax_num_cpu_devices", 8)
from tests.conftest import make_tiny_config
from tests.test_scaling import scaling_config
from jaxseg.run import feed, train
from jaxseg.run.experiment import Experiment
from jaxseg.train import sharding
sharding.FSDP_MIN_SIZE = 64  # the tiny U-Net's arrays are small
out, drawn = {}, {}
for devices, fsdp in ((1, False), (2, False), (4, True), (8, False)):
  config = scaling_config(make_tiny_config())
  config.mesh.update(devices=devices, fsdp=fsdp)
  config.data.placement = "device"
  exp = Experiment(config, splits=("train",))
  mesh = train.make_mesh(config)
  data = feed.make(exp, mesh)
  init, step = train.compile_step(exp, mesh, data)
  state, batches = init(), []
  for i in range(3):
    inputs = data.next()
    batches.append(jax.device_get(jax.jit(data.batch)(inputs, i)))
    state, _ = step(state, inputs, exp.train_key)
  data.close()
  leaves = jax.tree.leaves(state.nets["model"].params)
  assert all(len(x.sharding.device_set) == devices for x in leaves)
  split = [x for x in leaves if not x.sharding.is_fully_replicated]
  assert bool(split) == fsdp, (fsdp, [x.sharding.spec for x in leaves])
  out[devices] = jax.device_get(state.nets["model"].params)
  drawn[devices] = batches
close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
for devices, params in out.items():
  jax.tree.map(close, out[1], params)
  jax.tree.map(np.testing.assert_array_equal, drawn[1], drawn[devices])
config = make_tiny_config()
config.train.batch_size = 12
try:
  train.make_mesh(config)
  raise SystemExit("no error")
except ValueError as e:
  assert "config.train.batch_size=12 does not divide by the 8 devices" in str(e), e
print("data parallel ok")
"""
  result = _subprocess(code)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "data parallel ok" in result.stdout


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def multihost_jobs() -> dict:
  """What the two-process test runs in one process and in two: the tiny config with
  its data on the host (each process reads its half of every batch) and on the
  device (each holds the split), and a FedAvg smoke run (each process holds its
  own clients' images)."""
  from tests.test_fed import tiny_fed_config

  jobs = {}
  for placement in ("host", "device"):
    jobs[placement] = scaling_config(make_tiny_config())
    jobs[placement].data.placement = placement
    jobs[placement].train.update(steps=2, log_every=1)  # one validation, at the end
  fed = tiny_fed_config("supervised", rounds=2, local_steps=2, num_clients=3)
  fed.optim.update(name="sgd", lr=0.05)  # Adam amplifies rounding noise (see test_fed)
  jobs["federated"] = fed
  return jobs


def test_two_processes_train_like_one(tmp_path):
  """jax.distributed on two local CPU processes: data-parallel training (host and
  device data) and a federated run whose client axis spans both processes;
  orbax checkpoints the global state, only process 0 writes logs; each result
  equals the one-process run's."""
  jobs = multihost_jobs()
  one = {name: main.train(config, str(tmp_path / "one" / name)) for name, config in jobs.items()}
  port, workdir = _free_port(), tmp_path / "two"
  logs = [open(tmp_path / f"process{i}.log", "w+") for i in range(2)]  # files: pipes can fill
  procs = [
    subprocess.Popen(
      [sys.executable, os.path.join(REPO, "tests", "multihost_worker.py"), str(workdir)],
      env={
        **os.environ,
        "PYTHONPATH": REPO,
        "JAXSEG_COORDINATOR": f"localhost:{port}",
        "JAXSEG_NUM_PROCESSES": "2",
        "JAXSEG_PROCESS_ID": str(i),
      },
      stdout=log,
      stderr=subprocess.STDOUT,
    )
    for i, log in enumerate(logs)
  ]
  deadline = time.time() + 400
  while any(p.poll() is None for p in procs) and time.time() < deadline:
    if any(p.poll() for p in procs):  # one failed: the other would wait for it
      break
    time.sleep(0.2)
  for p in procs:
    if p.poll() is None:
      p.kill()
  outputs = []
  for p, log in zip(procs, logs, strict=True):
    p.wait()
    log.seek(0)
    outputs.append(log.read())
    assert p.returncode == 0, outputs[-1][-3000:]
  assert "process 1 of 2: federated 2" in outputs[1], outputs[1][-3000:]
  assert "3 clients" in outputs[0] and "3 clients" not in outputs[1]  # process 0 prints
  for name, config in jobs.items():
    ckpts = Checkpoints(str(workdir / name / "checkpoints"), read_only=True)
    two, _ = ckpts.restore(ckpts.latest_step(), Experiment(config, ("train",)).abstract_state())
    ckpts.close()
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)  # noqa: E731
    jax.tree.map(close, jax.device_get(one[name]), two)
    lines = (workdir / name / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "one" / name / "metrics.jsonl").read_text().splitlines())
  assert "clients.md" in os.listdir(workdir / "federated")


def _mixed_precision_step(method_name, dtype, scale):
  """One step of ``method_name`` on the tiny U-Net in ``dtype`` (None: float32)."""
  model = models.get_model("unet", widths=(4, 8))
  ctx = step_lib.Context(
    model, losses.get_loss("bce"), optax.sgd(0.1), {}, (16, 16, 1), 10, dtype, scale
  )
  method = semi.make_method(method_name)
  state = method.init(ctx, jax.random.key(0))
  labels = (jax.random.uniform(jax.random.key(1), (2, 16, 16)) > 0.5).astype(jnp.int32)
  batch = {"image": jax.random.uniform(jax.random.key(2), (2, 16, 16, 1)), "labels": labels}
  unlabeled = jax.tree.map(lambda x: x[::-1], batch)
  step = jax.jit(lambda s, b, k: method.step(ctx, s, b, unlabeled, k))
  return step(state, batch, jax.random.key(3))


def test_mixed_precision_keeps_float32_state():
  results = {}
  for dtype, scale in ((None, 1.0), (jnp.bfloat16, 1.0), (jnp.float16, 1024.0)):
    new, metrics = _mixed_precision_step("supervised", dtype, scale)
    assert {x.dtype for x in jax.tree.leaves(new.nets)} == {jnp.dtype(jnp.float32)}
    results[dtype] = (float(metrics["loss"]), float(metrics["grad_norm"]))
  f32 = results[None]
  # Low precision moves the gradient norm by a few percent (measured: bfloat16 2.4%,
  # float16 0.1% with XLA's LLVM optimisations; 4.4% and 0.4% without, as in the
  # tests); a float16 gradient left loss-scaled would be 1024x off.
  for dtype, tol in ((jnp.bfloat16, 6e-2), (jnp.float16, 1e-2)):
    np.testing.assert_allclose(results[dtype], f32, rtol=tol)  # grads unscaled again


def test_a_semi_supervised_method_trains_in_bfloat16():
  """CPS (two networks, cross pseudo-labels) in bfloat16: float32 state, losses close
  to float32's."""
  f32, bf16 = (_mixed_precision_step("cps", dtype, 1.0) for dtype in (None, jnp.bfloat16))
  assert {x.dtype for x in jax.tree.leaves(bf16[0].nets)} == {jnp.dtype(jnp.float32)}
  for name in ("sup", "unsup"):
    np.testing.assert_allclose(float(bf16[1][name]), float(f32[1][name]), rtol=5e-2)


def test_mixed_precision_config_errors(tiny_config, tmp_path):
  tiny_config.train.compute_dtype = "float8"
  with pytest.raises(ValueError, match="compute_dtype must be one of"):
    main.train(tiny_config, str(tmp_path))


def test_runtime_setup_sets_deterministic_gpu_flags(tiny_config, monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
  tiny_config.runtime.deterministic = True
  runtime.setup(tiny_config)
  runtime.setup(tiny_config)  # idempotent
  assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_gpu_deterministic_ops=true"
  monkeypatch.setenv("JAXSEG_NUM_PROCESSES", "2")
  with pytest.raises(ValueError, match="JAXSEG_COORDINATOR"):
    runtime.initialize_distributed()


@pytest.mark.parametrize(
  "script, expected",
  [
    ("local", "env XLA_PYTHON_CLIENT_PREALLOCATE=false jaxseg train"),
    ("gpu_node", "JAXSEG_DETERMINISTIC=0 jaxseg train"),
    ("slurm", "srun env JAXSEG_DISTRIBUTED=1"),
    ("tpu_pod", "gcloud compute tpus tpu-vm ssh <tpu-name> --zone=<zone> --worker=all"),
  ],
)
def test_launch_dry_run_prints_the_commands(script, expected):
  path = os.path.join(REPO, "launch", script)
  args = ["--dry-run", "configs/unet_synthetic.py:smoke", "--workdir", "/tmp/a b"]
  result = subprocess.run([path, *args], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert expected in result.stdout and "--workdir /tmp/a\\ b" in result.stdout, result.stdout
  if script == "slurm":
    assert (
      "#SBATCH --nodes=<nodes>" in result.stdout
      and "#SBATCH --partition=<partition>" in result.stdout
    )
  usage = subprocess.run([path, "--dry-run"], capture_output=True, text=True)
  assert usage.returncode == 2 and "usage:" in usage.stderr
