"""RWP and the semi-supervised methods: statistics, purity, closed-form losses."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from jaxseg import losses, perturb, semi
from jaxseg.data import pipeline
from jaxseg.errors import UserError
from jaxseg.models.interface import Interface
from jaxseg.semi import base, pseudoseg, rwp, strong_views
from jaxseg.train import state as state_lib
from jaxseg.train import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# RWP's defaults, chosen by configs/fedwep_ablation.py's declared rule (docs/fedwep_study.md).
RWP_DEFAULTS = dict(
  p=0.5, sigma=0.1, leaves="kernels", weight=0.375, ramp_up=0.0, perturbed_bn="batch", seed_period=1
)


def _ones_tree():
  return {
    "conv": {"kernel": jnp.ones((3, 3, 16, 32)), "bias": jnp.ones((32,))},
    "dense": {"kernel": jnp.ones((64, 100))},
  }


def test_rwp_statistics_and_selection():
  out = perturb.rwp(_ones_tree(), 0, p=0.3, sigma=0.2)
  np.testing.assert_array_equal(out["conv"]["bias"], 1.0)  # default: kernels only
  z = np.concatenate([np.ravel(out["conv"]["kernel"]), np.ravel(out["dense"]["kernel"])])
  chosen = z[z != 1.0]
  assert abs(chosen.size / z.size - 0.3) < 0.02
  assert abs(chosen.mean() - 1.0) < 0.01 and abs(chosen.std() - 0.2) < 0.01
  everything = perturb.rwp(_ones_tree(), 0, p=1.0, sigma=0.2, where=lambda path, leaf: True)
  assert np.all(np.asarray(everything["conv"]["bias"]) != 1.0)


def test_rwp_depends_on_seed_and_path_not_on_order():
  tree = _ones_tree()
  reordered = {
    "dense": tree["dense"],
    "conv": {"bias": tree["conv"]["bias"], "kernel": tree["conv"]["kernel"]},
  }
  a = perturb.rwp(tree, 5, p=0.5, sigma=0.1)
  b = perturb.rwp(reordered, 5, p=0.5, sigma=0.1)
  np.testing.assert_array_equal(a["conv"]["kernel"], b["conv"]["kernel"])
  np.testing.assert_array_equal(a["dense"]["kernel"], b["dense"]["kernel"])
  assert not np.array_equal(
    a["conv"]["kernel"], perturb.rwp(tree, 6, p=0.5, sigma=0.1)["conv"]["kernel"]
  )
  jitted = jax.jit(lambda s: perturb.rwp(tree, s, p=0.5, sigma=0.1))(jnp.uint32(5))
  # Compiled and eager agree up to XLA fusing 1 + sigma * n (the same entries chosen).
  np.testing.assert_allclose(jitted["dense"]["kernel"], a["dense"]["kernel"], rtol=1e-6)


def test_rwp_is_the_same_in_another_process():
  code = (
    "import jax.numpy as jnp, numpy as np; from jaxseg import perturb; "
    "t={'conv':{'kernel':jnp.ones((3,3,16,32))},'dense':{'kernel':jnp.ones((64,100))}}; "
    "o=perturb.rwp(t, 11, p=0.5, sigma=0.1); "
    "print(repr(float(np.sum(np.asarray(o['conv']['kernel'])*np.arange(4608).reshape(3,3,16,32)))))"
  )
  env = {**os.environ, "PYTHONPATH": REPO}
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
  ).stdout.strip()
  here = perturb.rwp(_ones_tree(), 11, p=0.5, sigma=0.1)["conv"]["kernel"]
  assert float(out) == float(np.sum(np.asarray(here) * np.arange(4608).reshape(3, 3, 16, 32)))


def test_rwp_gradient_is_z():
  w = {"layer": {"kernel": jax.random.normal(jax.random.key(0), (4, 5))}}
  c = jax.random.normal(jax.random.key(1), (4, 5))
  grad = jax.grad(lambda w: jnp.sum(perturb.rwp(w, 3, p=0.5, sigma=0.3)["layer"]["kernel"] * c))(w)
  z = perturb.rwp({"layer": {"kernel": jnp.ones((4, 5))}}, 3, p=0.5, sigma=0.3)["layer"]["kernel"]
  np.testing.assert_allclose(grad["layer"]["kernel"], z * c, rtol=1e-6)


class Pixel(nn.Module):
  """A per-pixel linear model: closed forms stay easy."""

  interface = Interface(in_channels=2, num_classes=1, takes_labels=False, stride=1)

  @nn.compact
  def __call__(self, x, *, train=False):
    self.sow("intermediates", "features", x)  # PseudoSeg's classification branch reads it
    return nn.Dense(1, name="dense")(x)


def _ctx(model=None):
  model = model or Pixel()
  return step_lib.Context(model, losses.get_loss("bce"), optax.sgd(0.1), {}, (4, 4, 2), 100)


def _batches():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 2))
  y = (x[..., 0] > 0).astype(jnp.int32)
  u = jax.random.normal(jax.random.key(1), (2, 4, 4, 2))
  return {"image": x, "labels": y}, {"image": u, "labels": jnp.zeros((2, 4, 4), jnp.int32)}


def _logits(params, x):
  return Pixel().apply({"params": params}, x)


def test_methods_declare_what_they_exchange():
  table = {name: semi.make_method(name) for name in semi.METHODS}
  assert table["mean_teacher"].exchanged == ("student", "teacher")
  assert table["cps"].exchanged == ("a", "b")
  assert all(len(table[n].exchanged) == 1 for n in ("supervised", "rwp"))
  assert table["pseudoseg"].exchanged == ("model", "cam")  # + the classification branch
  assert table["rwp"].broadcast.what == "seeds" and table["cps"].broadcast is None


def test_supervised_and_cps_losses_closed_form():
  """CPS as TorchSemiSeg computes it (exp.voc/voc8.res50v3+.CPS/train.py L185-220):
  L_s + λ [CE(p_a, argmax p_b) + CE(p_b, argmax p_a)] over the labeled and unlabeled
  images concatenated (one mean: each image counts once), or the earlier settings —
  two means added (``cross_mean="separate"``), the unlabeled term only."""
  ctx = _ctx()
  labeled, unlabeled = _batches()
  extra = jax.random.normal(jax.random.key(5), (1, 4, 4, 2))  # 2 labeled, 3 unlabeled
  unlabeled = {
    "image": jnp.concatenate([unlabeled["image"], extra]),
    "labels": jnp.zeros((3, 4, 4), jnp.int32),
  }
  bce = lambda lg, y: float(losses.bce(lg, y))  # noqa: E731

  def cross(pa, pb, x):
    ya, yb = ((_logits(p, x)[..., 0] > 0).astype(int) for p in (pa, pb))
    return bce(_logits(pa, x), yb) + bce(_logits(pb, x), ya)

  x_l, x_u = labeled["image"], unlabeled["image"]
  for settings in ({}, {"cross_mean": "separate"}, {"on_labeled": False}):
    cps = semi.make_method("cps", {"weight": 1.5, **settings})
    state = cps.init(ctx, jax.random.key(2))
    _, m = cps.step(ctx, state, labeled, unlabeled, jax.random.key(3))
    pa, pb = state.nets["a"].params, state.nets["b"].params
    sup = bce(_logits(pa, x_l), labeled["labels"]) + bce(_logits(pb, x_l), labeled["labels"])
    if not settings:
      expected = cross(pa, pb, jnp.concatenate([x_l, x_u]))
    elif "cross_mean" in settings:
      expected = cross(pa, pb, x_u) + cross(pa, pb, x_l)
    else:
      expected = cross(pa, pb, x_u)
    np.testing.assert_allclose(m["loss"], sup + 1.5 * expected, rtol=1e-5)
    np.testing.assert_allclose(m["unsup"], expected, rtol=1e-5)
  supervised = semi.make_method("supervised")
  state = supervised.init(ctx, jax.random.key(2))
  _, m = supervised.step(ctx, state, labeled, unlabeled, jax.random.key(3))
  np.testing.assert_allclose(
    m["loss"],
    bce(_logits(state.nets["model"].params, labeled["image"]), labeled["labels"]),
    rtol=1e-5,
  )


def test_cps_runs_labeled_and_unlabeled_images_in_separate_passes():
  """TorchSemiSeg L179-182: each network sees the labeled and the unlabeled batch in
  separate forward passes, so BatchNorm's running mean moves twice (momentum m: after
  the labeled batch, then the unlabeled one); ``separate_passes=False`` moves it once,
  by the mean of both batches together."""

  labeled, unlabeled = _batches()
  mean = lambda x: x.reshape(-1, x.shape[-1]).mean(0)  # noqa: E731
  ctx = _ctx(WithBN())
  for separate in (True, False):
    cps = semi.make_method("cps", {"separate_passes": separate})
    state = cps.init(ctx, jax.random.key(0))
    new, _ = cps.step(ctx, state, labeled, unlabeled, jax.random.key(1))
    old = state.nets["a"].batch_stats["BatchNorm_0"]["mean"]
    x_l, x_u = labeled["image"], unlabeled["image"]
    if separate:
      expected = 0.5 * (0.5 * old + 0.5 * mean(x_l)) + 0.5 * mean(x_u)
    else:
      expected = 0.5 * old + 0.5 * mean(jnp.concatenate([x_l, x_u]))
    np.testing.assert_allclose(
      new.nets["a"].batch_stats["BatchNorm_0"]["mean"], expected, rtol=1e-5
    )


def test_pseudo_label_info_counts_foreground_and_agreement():
  y1, y2 = jnp.array([[1, 0], [0, 0]]), jnp.array([[1, 1], [0, 0]])
  info = base.pseudo_label_info(y1, y2)
  assert float(info["pseudo_fg"]) == 0.375 and float(info["pseudo_agree"]) == 0.75
  teacher_only = base.pseudo_label_info(y1, y2, pseudo=(True, False))
  assert float(teacher_only["pseudo_fg"]) == 0.25


def test_rwp_ramp_up_scales_the_cross_terms():
  ctx, (labeled, unlabeled) = _ctx(), _batches()
  method = semi.make_method("rwp", dict(weight=2.0, ramp_up=0.1))  # 10 of the 100 steps
  state = method.init(ctx, jax.random.key(0))
  _, m = method.step(ctx, state, labeled, unlabeled, jax.random.key(1))
  np.testing.assert_allclose(m["loss"] - m["sup"], 2.0 * np.exp(-5.0) * m["unsup"], rtol=1e-4)


def test_rwp_loss_closed_form():
  ctx, method = _ctx(), semi.make_method("rwp", dict(p=1.0, sigma=0.3, weight=2.0))
  labeled, unlabeled = _batches()
  state = method.init(ctx, jax.random.key(2))
  seeds = jnp.array([7, 9], jnp.uint32)
  _, m = method.step(ctx, state, labeled, unlabeled, jax.random.key(3), extra=seeds)
  w = state.nets["model"].params
  w1 = perturb.rwp(w, jnp.uint32(7), p=1.0, sigma=0.3)
  w2 = perturb.rwp(w, jnp.uint32(9), p=1.0, sigma=0.3)
  assert not np.allclose(w1["dense"]["kernel"], w["dense"]["kernel"])
  l1, l2 = _logits(w1, unlabeled["image"]), _logits(w2, unlabeled["image"])
  y1, y2 = (l1[..., 0] > 0).astype(int), (l2[..., 0] > 0).astype(int)
  expected = float(losses.bce(_logits(w, labeled["image"]), labeled["labels"])) + 2.0 * (
    float(losses.bce(l1, y2)) + float(losses.bce(l2, y1))
  )
  np.testing.assert_allclose(m["loss"], expected, rtol=1e-5)


def test_rwp_leaves_by_name():
  """``leaves``: kernels (default), kernels and the convolutions' biases, or every
  parameter, BatchNorm scales and offsets included."""
  from jaxseg.models.unet import UNet  # noqa: PLC0415

  params = jax.eval_shape(
    lambda: UNet(widths=(4, 8)).init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
  )
  params = jax.tree.map(lambda a: jnp.ones(a.shape), params["params"])
  changed = {}
  for leaves in perturb.LEAVES:
    out = rwp.Perturbation(p=1.0, sigma=0.5, leaves=leaves).apply(params, 3)
    changed[leaves] = {
      name
      for name in ("conv/kernel", "conv/bias", "bn/scale", "bn/bias")
      if not np.all(out["down0_conv0"][name.split("/")[0]][name.split("/")[1]] == 1.0)
    }
  assert changed["kernels"] == {"conv/kernel"}
  assert changed["kernels_and_biases"] == {"conv/kernel", "conv/bias"}
  assert changed["all"] == {"conv/kernel", "conv/bias", "bn/scale", "bn/bias"}
  with pytest.raises(UserError, match="unknown leaves 'weights'; known: kernels"):
    semi.make_method("rwp", dict(leaves="weights"))


class WithBN(nn.Module):
  """A per-pixel model with BatchNorm (momentum 0.5): its running mean shows which
  batches a pass normalised."""

  interface = Pixel.interface

  @nn.compact
  def __call__(self, x, *, train=False):
    return nn.Dense(1)(nn.BatchNorm(use_running_average=not train, momentum=0.5)(x))


def test_rwp_perturbed_passes_use_batchnorm_as_set():
  """``perturbed_bn``: ``batch`` — the perturbed passes normalise the unlabeled batch
  by its own statistics and only the clean labeled pass moves the running ones;
  ``running`` — they normalise with the running statistics; ``update`` — both
  perturbed passes move the running mean after the clean pass (momentum 0.5 here)."""
  labeled, unlabeled = _batches()
  ctx = _ctx(WithBN())
  x_l, x_u = labeled["image"], unlabeled["image"]
  mean = lambda x: x.reshape(-1, x.shape[-1]).mean(0)  # noqa: E731
  seeds = jnp.array([7, 9], jnp.uint32)
  for bn in rwp.PERTURBED_BN:
    method = semi.make_method("rwp", dict(p=1.0, sigma=0.3, perturbed_bn=bn))
    state = method.init(ctx, jax.random.key(0))
    new, m = method.step(ctx, state, labeled, unlabeled, jax.random.key(1), extra=seeds)
    net = state.nets["model"]
    old = net.batch_stats["BatchNorm_0"]["mean"]
    after_clean = 0.5 * old + 0.5 * mean(x_l)
    expected = 0.5 * (0.5 * after_clean + 0.5 * mean(x_u)) + 0.5 * mean(x_u)
    found = new.nets["model"].batch_stats["BatchNorm_0"]["mean"]
    np.testing.assert_allclose(found, expected if bn == "update" else after_clean, rtol=1e-5)

    def logits(seed, net=net, bn=bn):
      variables = {"params": rwp.Perturbation(1.0, 0.3).apply(net.params, seed)}
      variables["batch_stats"] = net.batch_stats
      if bn == "running":
        return WithBN().apply(variables, x_u)
      return WithBN().apply(variables, x_u, train=True, mutable=["batch_stats"])[0]

    l1, l2 = logits(jnp.uint32(7)), logits(jnp.uint32(9))
    y1, y2 = (l1[..., 0] > 0).astype(int), (l2[..., 0] > 0).astype(int)
    cross = float(losses.bce(l1, y2)) + float(losses.bce(l2, y1))
    np.testing.assert_allclose(m["unsup"], cross, rtol=1e-5)


@pytest.mark.parametrize("name", ["cps", "mean_teacher", "pseudoseg", "rwp"])
def test_every_semi_supervised_method_logs_its_pseudo_labels(name):
  """``pseudo_fg`` and ``pseudo_agree`` in every method's step metrics; for CPS they
  are those of its two networks' hard labels on the unlabeled batch."""
  ctx, (labeled, unlabeled) = _ctx(), _batches()
  method = semi.make_method(name)
  state = method.init(ctx, jax.random.key(2))
  _, m = method.step(ctx, state, labeled, unlabeled, jax.random.key(3))
  assert 0.0 <= float(m["pseudo_fg"]) <= 1.0 and 0.0 <= float(m["pseudo_agree"]) <= 1.0
  if name == "cps":
    ya, yb = (_logits(state.nets[n].params, unlabeled["image"])[..., 0] > 0 for n in "ab")
    assert float(m["pseudo_agree"]) == pytest.approx(float(jnp.mean(ya == yb)))
    assert float(m["pseudo_fg"]) == pytest.approx(float((ya.mean() + yb.mean()) / 2))


def test_method_defaults_are_pinned():
  """The defaults a config starts from (``method.kwargs``): the official codes' for the
  baselines (each module cites its file and line), the ablation's choice for RWP
  (configs/fedwep_ablation.py, docs/fedwep_study.md)."""
  assert semi.default_settings("cps") == dict(
    weight=1.5, on_labeled=True, cross_mean="joint", separate_passes=True
  )
  assert semi.default_settings("mean_teacher") == dict(
    decay=0.99, weight=0.1, ramp_up_steps=0, input_noise=0.1, noise_clip=0.2,
    teacher_noise=True, student_noise=False, ema_warmup=True, ema_batch_stats=False,
    evaluated="student",
  )  # fmt: skip
  assert semi.default_settings("pseudoseg") == dict(
    source="sgc", temperature=0.5, gamma=0.5, weight=1.0, cls_weight=1.0, sgc_weight=1.0,
    attention_dim=128, cls_hidden=0, strong="official", cutout=100 / 513, noise=0.05,
  )  # fmt: skip
  assert semi.default_settings("rwp") == RWP_DEFAULTS


def test_mean_teacher_ema_warms_up_as_ssl4mis():
  """SSL4MIS's ``alpha_t = min(1 - 1/(t + 1), decay)`` counted from t = 0: after the
  first step the teacher *is* the student; after the second, the mean of the two;
  with ``ema_warmup=False`` the constant decay. Teacher == student at init, so the
  first consistency is 0 and the loss is supervised."""
  ctx, (labeled, unlabeled) = _ctx(), _batches()
  method = semi.make_method("mean_teacher", dict(decay=0.9, input_noise=0.0))
  state = method.init(ctx, jax.random.key(2))
  one, m = method.step(ctx, state, labeled, unlabeled, jax.random.key(3))
  w = state.nets["student"].params
  np.testing.assert_allclose(m["unsup"], 0.0, atol=1e-12)
  np.testing.assert_allclose(
    m["loss"], losses.bce(_logits(w, labeled["image"]), labeled["labels"]), rtol=1e-5
  )
  kernel = lambda s, n: s.nets[n].params["dense"]["kernel"]  # noqa: E731
  np.testing.assert_array_equal(kernel(one, "teacher"), kernel(one, "student"))
  two, m = method.step(ctx, one, labeled, unlabeled, jax.random.key(3))
  assert float(m["ema_decay"]) == 0.5
  expected = 0.5 * kernel(one, "teacher") + 0.5 * kernel(two, "student")
  np.testing.assert_allclose(kernel(two, "teacher"), expected, rtol=1e-6)
  constant = semi.make_method("mean_teacher", dict(decay=0.9, ema_warmup=False))
  new, _ = constant.step(ctx, state, labeled, unlabeled, jax.random.key(3))
  expected = 0.9 * w["dense"]["kernel"] + 0.1 * kernel(new, "student")
  np.testing.assert_allclose(kernel(new, "teacher"), expected, rtol=1e-6)
  np.testing.assert_allclose(base.ramp_up(jnp.array(0), 10), np.exp(-5.0))
  assert method.evaluated == "student" and constant.evaluated == "student"


def test_mean_teacher_noise_is_the_teachers_clipped_gaussian():
  """SSL4MIS: only the teacher's input gets noise, ``clip(0.1 N(0, 1), ±0.2)``; the
  consistency is the MSE of the student's probabilities on the clean view and the
  teacher's on the noisy one. ``student_noise=True`` (the paper) gives the student
  its own noise; ``teacher_noise=False`` a clean teacher."""
  ctx, (labeled, unlabeled) = _ctx(), _batches()
  x = unlabeled["image"]
  keys = jax.random.split(jax.random.fold_in(jax.random.key(3), 0), 5)
  clipped = [jnp.clip(0.3 * jax.random.normal(k, x.shape), -0.2, 0.2) for k in keys[1::2]]
  cases = (
    ({}, x, x + clipped[1]),
    ({"student_noise": True}, x + clipped[0], x + clipped[1]),
    ({"teacher_noise": False}, x, x),
  )
  for settings, student_x, teacher_x in cases:
    method = semi.make_method("mean_teacher", dict(input_noise=0.3, ramp_up_steps=1, **settings))
    state = method.init(ctx, jax.random.key(2))
    _, m = method.step(ctx, state, labeled, unlabeled, jax.random.key(3))
    w = state.nets["student"].params
    student = jax.nn.sigmoid(_logits(w, student_x))
    teacher = jax.nn.sigmoid(_logits(w, teacher_x))
    np.testing.assert_allclose(m["unsup"], jnp.mean((student - teacher) ** 2), rtol=1e-5)
  assert float(jnp.abs(clipped[1]).max()) == pytest.approx(0.2)  # the clip acted


def test_mean_teacher_keeps_its_own_batchnorm_statistics():
  """As SSL4MIS's ``ema_model`` (parameters averaged, buffers not): the teacher's
  statistics are updated by its own training-mode pass on its noisy view, not
  averaged from the student's; ``ema_batch_stats=True`` averages them (the earlier
  behaviour)."""

  labeled, unlabeled = _batches()
  ctx = _ctx(WithBN())
  for averaged in (False, True):
    settings = {"decay": 0.5, "ema_warmup": False, "ema_batch_stats": averaged}
    method = semi.make_method("mean_teacher", settings)
    state = method.init(ctx, jax.random.key(0))
    new, _ = method.step(ctx, state, labeled, unlabeled, jax.random.key(1))
    old = state.nets["teacher"].batch_stats["BatchNorm_0"]["mean"]
    student = new.nets["student"].batch_stats["BatchNorm_0"]["mean"]
    teacher = new.nets["teacher"].batch_stats["BatchNorm_0"]["mean"]
    keys = jax.random.split(jax.random.fold_in(jax.random.key(1), 0), 5)
    x = unlabeled["image"]
    x = x + jnp.clip(0.1 * jax.random.normal(keys[3], x.shape), -0.2, 0.2)
    own = 0.5 * old + 0.5 * x.reshape(-1, x.shape[-1]).mean(0)  # momentum 0.5
    np.testing.assert_allclose(teacher, 0.5 * old + 0.5 * student if averaged else own, rtol=1e-5)


def test_pseudoseg_pooled_fusion_and_sharpening():
  p = jnp.full((1, 8, 8, 1), 0.8)
  np.testing.assert_allclose(pseudoseg.fuse(p, p, 1.0), 0.8, rtol=1e-5)
  np.testing.assert_allclose(pseudoseg.fuse(p, p, 0.5), 0.64 / (0.64 + 0.04), rtol=1e-5)
  refined = pseudoseg.attention_refine(jnp.zeros((1, 8, 8, 1)), p)
  np.testing.assert_allclose(refined, 0.8, rtol=1e-5)  # uniform maps stay uniform
  ctx = _ctx()
  method = semi.make_method("pseudoseg", dict(source="pooled", noise=0.0))
  labeled, unlabeled = _batches()
  state = method.init(ctx, jax.random.key(2))
  _, m = method.step(ctx, state, labeled, unlabeled, jax.random.key(3))
  assert np.isfinite(m["loss"]) and m["unsup"] > 0


def _hand_head(num_classes):
  """CamHead params: identity 1x1 conv, class k scored by feature channel k - 1."""
  head = pseudoseg.CamHead(num_classes, attention_dim=2, hidden=2)
  variables = head.init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4, 4, 2)))
  params = jax.tree.map(jnp.zeros_like, variables["params"])
  params["cls_conv"]["kernel"] = jnp.eye(2)[None, None]
  params["cls_out"]["kernel"] = jnp.eye(2)[:, :num_classes]
  params["pixel_conv"]["kernel"] = jnp.eye(num_classes + 1)
  params["pixel_norm"]["scale"] = jnp.ones(num_classes + 1)
  return head, params, variables["batch_stats"]


def test_grad_cam_finds_the_class_evidence_where_the_class_is_present():
  """Class k's score is the mean of feature channel k-1: its Grad-CAM is that channel's
  evidence, scaled to max 1 — nothing of the other class's, and zero where the image
  holds no such class (train_utils_core.py:104-109)."""
  a = np.zeros((4, 4), np.float32)
  a[1, 1:3] = [2.0, 1.0]
  b = np.zeros((4, 4), np.float32)
  b[3, 0] = 3.0
  features = jnp.asarray(np.stack([a, b], -1)[None])
  head, params, stats = _hand_head(2)
  cam = pseudoseg.grad_cam(head, params, features, jnp.ones((1, 2)))
  np.testing.assert_allclose(cam[0, ..., 0], a / 2.0, atol=1e-5)
  np.testing.assert_allclose(cam[0, ..., 1], b / 3.0, atol=1e-5)
  absent = pseudoseg.grad_cam(head, params, features, jnp.array([[1.0, 0.0]]))
  np.testing.assert_allclose(absent[0, ..., 1], 0.0)
  # SGC (compute_self_att_v2) with zero query/key: uniform attention, so the score is
  # the mean CAM plus the CAM (skip), background 2 - max, then 1x1 conv (identity here)
  # and BatchNorm in training mode.
  net = state_lib.Net(params=params, batch_stats=stats, opt_state=None)
  logits, _ = pseudoseg.sgc(head, net, features, cam)
  score = np.asarray(cam[0]).mean((0, 1)) + np.asarray(cam[0])
  score = np.concatenate([2 - score.max(-1, keepdims=True), score], -1)
  want = (score - score.mean((0, 1))) / np.sqrt(score.var((0, 1)) + 1e-5)
  np.testing.assert_allclose(logits[0], want, rtol=1e-4, atol=1e-4)


def test_calibrated_fusion_closed_form():
  # train_wss.py:437-453: one scale, the RMS of decoder and SGC logits over the batch.
  p = np.array([[0.0, 2.0], [0.0, -1.0]], np.float32)
  m = np.array([[0.3, 0.7], [1.0, 0.0]], np.float32)
  scale = 1 / np.sqrt(np.mean(np.concatenate([p, m]) ** 2) + 1e-8)
  soft = lambda v: np.exp(v) / np.exp(v).sum(-1, keepdims=True)  # noqa: E731
  fused = 0.25 * soft(p * scale) + 0.75 * soft(m * scale)
  sharp = fused**2 / (fused**2).sum(-1, keepdims=True)
  out = pseudoseg.calibrated_fusion(jnp.asarray(p), jnp.asarray(m), 0.25, 0.5)
  np.testing.assert_allclose(out, sharp, rtol=1e-5)
  np.testing.assert_allclose(pseudoseg.class_logits(jnp.array([[2.0]])), [[0.0, 2.0]])
  # A pixel's foreground target grows with the decoder's confidence in it.
  rng = np.random.default_rng(0)
  batch, sgc_map = rng.normal(size=(64, 2)), rng.normal(size=(64, 2))
  targets = []
  for x in np.linspace(-4, 4, 9):
    batch[0] = [0.0, x]
    targets.append(float(pseudoseg.calibrated_fusion(batch, sgc_map, 0.5, 0.5)[0, 1]))
  assert np.all(np.diff(targets) > 0), targets


def test_pseudoseg_presence_and_sgc_loss():
  labels = jnp.array([[[0, 1], [0, 0]], [[0, 0], [0, 0]]])
  np.testing.assert_array_equal(pseudoseg.presence(labels, 1), [[1.0], [0.0]])
  np.testing.assert_array_equal(pseudoseg.presence(labels, 3), [[1.0, 0.0], [0.0, 0.0]])
  perfect = 50.0 * jax.nn.one_hot(labels, 2)
  assert float(pseudoseg.sgc_loss(perfect, labels)) < 1e-5
  assert float(pseudoseg.sgc_loss(jnp.zeros((2, 2, 2, 2)), labels)) == pytest.approx(
    np.log(2), rel=1e-5
  )


def test_pseudoseg_step_trains_the_classification_branch():
  ctx = _ctx()
  method = semi.make_method("pseudoseg", dict(noise=0.0))
  labeled, unlabeled = _batches()
  state = method.init(ctx, jax.random.key(2))
  new, m = method.step(ctx, state, labeled, unlabeled, jax.random.key(3))
  assert all(np.isfinite(m[k]) and m[k] > 0 for k in ("loss", "unsup", "cls", "sgc"))
  for name in ("cls_out", "query", "key", "pixel_conv"):  # each learns something
    assert not np.array_equal(
      new.nets["cam"].params[name]["kernel"], state.nets["cam"].params[name]["kernel"]
    )
  with pytest.raises(UserError, match="unknown source 'grad'"):
    semi.make_method("pseudoseg", dict(source="grad"))


def test_unet_family_sows_its_deepest_encoder_features():
  from jaxseg.models import get_model  # noqa: PLC0415

  def features(ctx, net):
    image = jnp.zeros((1, 16, 16, 2))
    return step_lib.forward_features(ctx, net.params, net.batch_stats, image, None, train=False)

  for name in ("unet", "unetpp"):
    ctx = _ctx(get_model(name, widths=(4, 8, 16), in_channels=2))
    net = jax.eval_shape(functools.partial(step_lib.init_net, ctx), jax.random.key(0))
    out = jax.eval_shape(functools.partial(features, ctx), net)
    assert out[2].shape == (1, 4, 4, 16)


def test_labeled_fraction():
  source = list(range(10))
  labeled, unlabeled = pipeline.labeled_split(source, 0.25, seed=0)
  assert len(labeled) == 3 and len(unlabeled) == 7
  assert not set(labeled.indices) & set(unlabeled.indices)
  with pytest.raises(ValueError, match="labeled_fraction=0.0625 of 4 training images leaves no"):
    pipeline.labeled_split(list(range(4)), 1 / 16, seed=0)


def test_a_misspelt_method_setting_is_an_error_naming_it():
  with pytest.raises(UserError, match=r"unknown setting 'sigmaa'; known: p, sigma, leaves"):
    semi.make_method("rwp", {"sigmaa": 0.2})
  from configs import rwp_covid_ct  # noqa: PLC0415  (a config file that builds on another)
  from jaxseg.run import experiment  # noqa: PLC0415

  config = rwp_covid_ct.get_config("synthetic_smoke")
  config.method.kwargs.sigmaa = 0.2
  with pytest.raises(UserError, match="config.method.kwargs of method 'rwp': unknown setting"):
    experiment.check_config(config)


class DeepHeads(nn.Module):
  """Two heads (deep supervision): the evaluated logits are their mean."""

  interface = Pixel.interface

  @nn.compact
  def __call__(self, x, *, train=False):
    self.sow("intermediates", "features", x)
    heads = [nn.Dense(1, name=f"head{i}")(x) for i in range(2)]
    return {"logits": (heads[0] + heads[1]) / 2, "heads": heads}


@pytest.mark.parametrize("name", sorted(semi.METHODS))
def test_every_method_trains_every_deep_supervision_head(name):
  """The supervised loss of every method is the mean over all heads (as centralized
  training): each head gets its own, non-zero gradient."""
  ctx, method = _ctx(DeepHeads()), semi.make_method(name)
  labeled, unlabeled = _batches()
  state = method.init(ctx, jax.random.key(2))
  new, m = method.step(ctx, state, labeled, unlabeled, jax.random.key(3))
  net = method.evaluated if name != "mean_teacher" else "student"
  before, after = state.nets[net].params, new.nets[net].params
  moved = [
    float(jnp.abs(after[h]["kernel"] - before[h]["kernel"]).sum()) for h in ("head0", "head1")
  ]
  assert min(moved) > 0 and moved[0] != moved[1]
  heads = [nn.Dense(1).apply({"params": before[h]}, labeled["image"]) for h in ("head0", "head1")]
  sup = np.mean([float(losses.bce(h, labeled["labels"])) for h in heads])
  if name == "supervised":
    np.testing.assert_allclose(m["sup"], sup, rtol=1e-5)


def test_pseudoseg_strong_view_is_the_official_jitter_and_cutout():
  """core/input_preprocess.py: colour jitter, then a CutOut square (side 100/513 of
  the image) filled with the mean and left out of the consistency loss, whose mean
  is over the remaining pixels (train_wss.py:482-499)."""
  image = jnp.tile(jnp.linspace(0.2, 0.8, 64)[None, :, None], (64, 1, 1))
  cut, valid = strong_views.cutout(jax.random.key(0), image, strong_views.CUTOUT)
  side = 2 * round(strong_views.CUTOUT * 64 / 2)  # 12 pixels
  inside = np.asarray(valid) == 0
  rows, cols = np.nonzero(inside)
  assert 0 < inside.sum() <= side * side and np.ptp(rows) < side and np.ptp(cols) < side
  np.testing.assert_allclose(np.asarray(cut)[inside, 0], float(image.mean()), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(cut)[~inside], np.asarray(image)[~inside])
  jittered = strong_views.colour_jitter(jax.random.key(1), image)
  assert (
    jittered.shape == image.shape and 0.0 <= float(jittered.min()) <= float(jittered.max()) <= 1.0
  )
  assert not np.allclose(jittered, image)
  rgb = jnp.stack([image[..., 0], 1 - image[..., 0], 0.5 * image[..., 0]], -1)
  assert strong_views.colour_jitter(jax.random.key(2), rgb).shape == rgb.shape
  strong, valid = strong_views.strong_view(
    jax.random.key(3), jnp.stack([image, image]), "official", 0.0, strong_views.CUTOUT
  )
  assert strong.shape == (2, 64, 64, 1) and valid.shape == (2, 64, 64)
  assert not np.array_equal(valid[0], valid[1])  # each image its own square
  # The loss ignores the square: wrong predictions inside it change nothing.
  target = jnp.zeros((1, 64, 64), jnp.int32)
  logits = jnp.where(jnp.asarray(inside)[None, ..., None], 5.0, -5.0)
  loss = pseudoseg.masked_pseudo_label_loss(
    logits, target, valid[:1] * 0 + jnp.asarray(~inside, jnp.float32)
  )
  clean = pseudoseg.masked_pseudo_label_loss(
    jnp.full((1, 64, 64, 1), -5.0), target, jnp.ones((1, 64, 64))
  )
  np.testing.assert_allclose(loss, clean, rtol=1e-6)


def test_pseudoseg_classifier_is_the_official_linear_head():
  """With no hidden layer the image-level score of class k is a linear function of
  the pooled features (the backbone's logits layer in the official code), so its
  Grad-CAM is the class's own feature channel."""
  head = pseudoseg.CamHead(2, attention_dim=2)
  variables = head.init(jax.random.key(0), jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4, 4, 2)))
  assert set(variables["params"]) == {"cls_out", "query", "key", "pixel_conv", "pixel_norm"}
  params = jax.tree.map(jnp.zeros_like, variables["params"])
  params["cls_out"]["kernel"] = jnp.eye(2)
  a = np.zeros((4, 4, 2), np.float32)
  a[0, 0, 0], a[2, 3, 1] = 1.0, 4.0
  cam = pseudoseg.grad_cam(head, params, jnp.asarray(a[None]), jnp.ones((1, 2)))
  np.testing.assert_allclose(cam[0], a / a.max((0, 1)), atol=1e-6)
