"""MAC counting (two conventions) and the bench records, on small inputs."""

import json

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

from jaxseg import models
from jaxseg.bench import flops
from jaxseg.bench import models as bench


def _variables(model, shape):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))


def test_jaxpr_macs_closed_form():
  conv = nn.Conv(5, (3, 3), padding="SAME")
  x = jnp.zeros((2, 8, 6, 3))
  v = _variables(conv, x.shape)
  assert flops.jaxpr_macs(conv.apply, v, x) == 2 * 8 * 6 * 5 * (3 * 3 * 3)
  dw = nn.Conv(3, (3, 3), feature_group_count=3)
  assert flops.jaxpr_macs(dw.apply, _variables(dw, x.shape), x) == 2 * 8 * 6 * 3 * 9
  dense = nn.Dense(7)
  assert flops.jaxpr_macs(dense.apply, _variables(dense, (4, 3)), jnp.zeros((4, 3))) == 4 * 7 * 3
  # Inside a scan, the body counts once per iteration.
  body = lambda c, _: (c @ jnp.ones((3, 3)), None)  # noqa: E731
  scanned = lambda c: jax.lax.scan(body, c, None, length=4)[0]  # noqa: E731
  assert flops.jaxpr_macs(scanned, jnp.zeros((2, 3))) == 4 * 2 * 3 * 3


def test_paper_convention_counts_bias_bn_and_activation():
  from jaxseg.models.layers import CBA

  block = CBA(4)
  x = jnp.zeros((1, 5, 5, 2))
  out = 5 * 5 * 4
  expected = out * (2 * 9 + 1) + 2 * out + out  # conv + bias, BN, LeakyReLU
  assert flops.paper_macs(block, _variables(block, x.shape), x) == expected


@pytest.mark.parametrize("shape, expected", [((1, 256, 256, 1), 18.84)])
def test_unet_paper_gmacs_scale_with_input(shape, expected):
  model = models.get_model("unet")
  macs = flops.paper_macs(model, _variables(model, shape), jnp.zeros(shape))
  assert macs / 1e9 == pytest.approx(expected, abs=0.005)


@pytest.mark.parametrize(
  "name, published",
  [
    ("unet", 66.42),
    ("unetpp", 122.27),
    ("attention_unet", 67.69),
    ("multires_unet", 89.63),
    ("scaunet", 3.90),
    ("scaunet_a", 3.34),
  ],
)
def test_published_gflops_column(name, published):
  """The SCAUnet table's GFLOPS at 1x1x426x545, within 0.5% (traced, not run)."""
  shape = (1, 426, 545, 1)
  model = models.get_model(name)
  macs = flops.paper_macs(model, _variables(model, shape), jnp.zeros(shape)) / 1e9
  assert macs == pytest.approx(published, rel=0.005)


def test_fast_mode_counts_fewer_macs():
  shape = (1, 64, 64, 1)
  macs = {}
  for mode in ("accurate", "l1", "l2", "l3"):
    model = models.get_model("unetpp", mode=mode)
    v = _variables(models.get_model("unetpp", mode="deep"), shape)
    macs[mode] = flops.jaxpr_macs(lambda v, x, m=model: m.apply(v, x), v, jnp.zeros(shape))
  assert macs["l1"] < macs["l2"] < macs["l3"] < macs["accurate"]


def test_bench_record_and_spec_parsing(tmp_path):
  assert bench.parse_model("unetpp:mode=l2,widths=(4,8)") == (
    "unetpp",
    {"mode": "l2", "widths": (4, 8)},
  )
  assert bench.split_specs("unetpp,unet:mode=l2,widths=(4,8),scaunet") == [
    "unetpp",
    "unet:mode=l2,widths=(4,8)",
    "scaunet",
  ]
  assert bench.parse_input("2x1x32x48") == (2, 1, 32, 48)
  with pytest.raises(ValueError, match="NxCxHxW"):
    bench.parse_input("32x32")
  records = bench.run(
    ["unet:widths=(4,8)"],
    "1x1x32x32",
    batch=2,
    dtype="float32",
    repeats=1,
    json_path=str(tmp_path / "b.json"),
    profile=str(tmp_path / "profile"),
  )
  (r,) = records
  # The profile: each program's optimized HLO, and a trace that names the step.
  for part in ("forward", "train_step"):
    hlo = (tmp_path / "profile" / f"unet_widths_4_8__float32_2x1x32x32_{part}.hlo.txt").read_text()
    assert hlo.startswith("HloModule") and "convolution" in hlo
  traces = [t.read_bytes() for t in (tmp_path / "profile").glob("plugins/profile/*/*.xplane.pb")]
  assert len(traces) == 2
  assert any(b"unet_widths_4_8__float32_2x1x32x32_train_step" in t for t in traces)
  assert r["model"] == "unet:widths=(4,8)" and r["input"] == "2x1x32x32"
  for key in (
    "params",
    "gmacs",
    "gmacs_paper",
    "xla_gflops_forward",
    "xla_gflops_train_step",
    "infer_img_s",
    "train_img_s",
    "compile_s",
    "peak_mib",
    "device",
    "jax_version",
  ):
    assert key in r
  # XLA counts 2 FLOPs per MAC and skips multiplications with zero padding.
  assert 0.8 < r["xla_gflops_forward"] / (2 * r["gmacs"]) <= 1.05
  assert r["xla_gflops_train_step"] > 2 * r["xla_gflops_forward"]
  with pytest.raises(ValueError, match="Unknown model name 'vit'"):
    bench.run(["vit"], "1x1x32x32", batch=None, dtype="float32", repeats=1, json_path=None)


def test_model_flops_utilization_against_the_device_peak():
  assert bench.model_flops_utilization("NVIDIA H100 80GB HBM3", "bfloat16", 98.94) == "10.0%"
  assert bench.model_flops_utilization("NVIDIA H100 80GB HBM3", "float32", 49.47) == "10.0%"
  assert bench.model_flops_utilization("cpu", "float32", 1.0) == "-"


def test_accelerator_suite_runs_every_part_on_cpu(tmp_path, monkeypatch):
  """``jaxseg bench --suite accelerator`` at tiny sizes: the pipeline table (host and
  device paths, with and without weight maps, the train loop against the bare step),
  the step in float32 and bfloat16, the federated round and the deterministic-flag
  cost, written as JSON and markdown."""
  from jaxseg.bench import pipeline, suite, versus_torch
  from tests.conftest import make_tiny_config
  from tests.test_fed import tiny_fed_config

  monkeypatch.setattr(pipeline, "MIN_IMAGES", 16)
  monkeypatch.setattr(suite, "REPEATS", 1)  # timings are not what this test checks
  monkeypatch.setattr(pipeline, "worker_counts", lambda: [0])  # workers: tests/test_train.py
  monkeypatch.setattr(versus_torch, "COMPILE_BACKEND", "aot_eager")  # no C++ build
  monkeypatch.setattr(versus_torch, "DTYPES", ("float32",))  # both: the CLI test below
  size = {
    "pipeline": (2, 1, 32, 32),
    "step": (1, 1, 32, 32),
    "clients": (2,),
    "nnunet": ((2, 1, 32, 32), (1, 1, 16, 16, 16)),
    "versus": ((2, 1, 32, 32),),
  }
  path = tmp_path / "suite.json"
  fed = tiny_fed_config(local_steps=1)
  report = suite.run(make_tiny_config(), fed, str(path), size, "unet:widths=(4,8)")
  assert json.loads(path.read_text()) == json.loads(json.dumps(report))
  rows = [(r["path"], r["weight_map"]) for r in report["pipeline"]]
  assert rows == [("host", False), ("device", False), ("host", True), ("device", True)] + [
    ("train_loop", False)
  ]
  assert all(r["images_per_s"] > 0 for r in report["pipeline"][:-1])
  assert report["loop_step_ratio"] > 0
  assert [r["dtype"] for r in report["step"]] == ["float32", "bfloat16"]
  assert [r["clients"] for r in report["federated"]] == [2]
  assert report["deterministic"]["deterministic_img_s"] > 0
  assert [(r["input"], r["dtype"]) for r in report["nnunet"]] == [
    ("2x1x32x32", "bfloat16"),
    ("1x1x16x16x16", "bfloat16"),
  ]
  versus = [(r["dtype"], r["framework"]) for r in report["versus_torch"]["rows"]]
  assert versus == [(d, f) for d in versus_torch.DTYPES for f in versus_torch.FRAMEWORKS]
  text = (tmp_path / "suite.md").read_text()
  assert "| path | workers | weight map |" in text and "runtime.deterministic" in text
  assert "nnU-Net's benchmark shape 1x1x16x16x16" in text and "| torch.compile |" in text


def test_versus_torch_times_the_same_network_and_loss_in_both(tmp_path, monkeypatch, capsys):
  """``jaxseg bench --versus_torch`` on the CPU: a row per dtype and framework, the same
  parameter count in both; PyTorch's loss is jaxseg's ``bce_dice`` on the same logits."""
  import sys

  import numpy as np
  import torch

  from jaxseg import losses, main
  from jaxseg.bench import versus_torch

  logits = np.random.default_rng(0).normal(size=(2, 8, 8)).astype(np.float32)
  labels = (logits > 0.5).astype(np.int32)
  ours = losses.bce_dice(jnp.asarray(logits)[..., None], jnp.asarray(labels))
  theirs = versus_torch.torch_loss(torch.from_numpy(logits), torch.from_numpy(labels).float())
  assert float(theirs) == pytest.approx(float(ours), rel=1e-6)

  monkeypatch.setattr(versus_torch, "REFERENCE_WIDTHS", (4, 8))  # the step, not its speed
  monkeypatch.setattr(versus_torch, "COMPILE_BACKEND", "aot_eager")  # no C++ build
  path = tmp_path / "versus.json"
  args = ["bench", "--versus_torch", "--input", "2x1x32x32", "--repeats", "1", "--json", path]
  monkeypatch.setattr(sys, "argv", ["jaxseg", *map(str, args)])
  with pytest.raises(SystemExit) as exit_:
    main.main()
  assert not exit_.value.code
  rows = json.loads(path.read_text())["rows"]
  assert [(r["dtype"], r["framework"]) for r in rows] == [
    (d, f) for d in versus_torch.DTYPES for f in versus_torch.FRAMEWORKS
  ]
  assert len({r["params"] for r in rows}) == 1
  assert all(r["train_img_s"] > 0 and r["infer_img_s"] > 0 for r in rows)
  assert rows[0]["jaxseg_over_train"] == 1.0 and rows[0]["peak_mib"] > 0
  assert "| 2x1x32x32 | bfloat16 | torch.compile |" in capsys.readouterr().out
