"""PseudoSeg (Zou et al. 2021): pseudo-labels fused from the decoder and a
classification branch's self-attention Grad-CAM, as the official code computes them
(googleinterns/wss @ b01acaf: ``train_wss.py``, ``core/train_utils_core.py``).

The network (any model that sows its deepest encoder ``features``, see
:func:`jaxseg.train.step.forward_features`) gets a classification branch
(:class:`CamHead`, a second network ``"cam"``): a 1x1 conv + ReLU, global average
pooling and a linear layer give image-level logits, one per foreground class, trained
with binary cross-entropy against the image-level labels derived from the masks
(class present or not; ``train_wss.py:694-703``, the semi-supervised setting). On the
weakly augmented unlabeled view:

1. the decoder's logits ``p`` (background first) from a **training-mode** pass
   (``train_wss.py:345-359``: ``is_training=True``; its BatchNorm statistics update is
   discarded here);
2. **Grad-CAM** of each foreground class on the features of an inference-mode pass
   (``train_wss.py:372-390``): ``ReLU(sum_c alpha_c F_c)``, ``alpha`` the spatial mean
   of the class score's gradient, **times the image-level presence** — predicted on
   unlabeled images (``sigmoid(cls) >= 0.5``, ``train_wss.py:396-403``), the true one on
   labeled images — then scaled to max 1 (``train_utils_core.py:93-109``);
3. **self-attention Grad-CAM** (SGC, ``compute_self_att_v2``,
   ``train_utils_core.py:134-267``): query and key (1x1, no bias) of the
   **stop-gradient** features give ``A = softmax(Q K^T / sqrt(d))``; the CAM is
   propagated along it with a skip connection, ``s = A CAM + CAM``; background
   ``2 - max_k s_k``; a 1x1 conv and BatchNorm (training mode) turn ``[bg, s]`` into
   logits ``m``. Its segmentation loss on the labeled images (cross-entropy of the
   upsampled logits, ``train_wss.py:637-690``) trains query, key and the 1x1 conv;
4. **calibrated fusion** (``train_wss.py:434-456``): ``N`` the root mean square of
   ``[p; m]`` over the whole batch (one scale), ``y = Sharpen(γ softmax(p / N) +
   (1 - γ) softmax(m / N), T)`` (the official average: γ = 1/2; T = 0.5),
   ``Sharpen(a, T)_k = a_k^(1/T) / sum_j a_j^(1/T)``;

and ``y`` is the soft target of the cross-entropy of the strongly augmented view,
weighted by ``weight``: the official strong view (:func:`strong_view`,
``core/input_preprocess.py:128-175``): colour jitter, then CutOut, whose pixels leave
the loss (photometric and masked, so the pseudo-label stays aligned). The labeled
and the strong batch run separate training-mode passes, as in the official code.
Total loss: supervised + ``weight`` x pseudo-label + ``cls_weight`` x classification
+ ``sgc_weight`` x SGC segmentation; the last two on the labeled batch (times
``sup_weight``: a federated client without labels has none).

Named deviations: SGC's query and key read one feature map, the deepest encoder one
(the official code concatenates the backbone's two deepest blocks, ``att_strides``
15,16, resized to the CAM; jaxseg's models sow one map); no hue jitter. Earlier jaxseg
choices kept as settings: ``strong="gray_noise"``, ``cls_hidden=32``,
``attention_dim=16``.

``source="pooled"`` keeps jaxseg's earlier parameter-free stand-in (no classification
branch: the decoder's prediction is propagated along a pooled image/prediction
self-attention and the two are averaged after mass calibration), which works with
any model, also those that sow no features.
"""

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxseg.errors import UserError
from jaxseg.models.interface import probabilities
from jaxseg.semi import Method, base, strong_views
from jaxseg.train import state as state_lib
from jaxseg.train import step as step_lib

POOL = 4
SOURCES = ("sgc", "pooled")


class CamHead(nn.Module):
  """The classification branch on encoder features, and SGC's query, key and output
  (1x1 conv + BatchNorm, always in training mode as in the official code)."""

  num_classes: int  # foreground classes
  attention_dim: int = 128  # train_wss.py: flags ``attention_dim``
  hidden: int = 0  # 0: the official classifier; > 0: jaxseg's earlier conv + ReLU head

  def setup(self):
    if self.hidden:
      self.cls_conv = nn.Conv(self.hidden, (1, 1))
    self.cls_out = nn.Dense(self.num_classes)
    self.query = nn.Dense(self.attention_dim, use_bias=False)
    self.key = nn.Dense(self.attention_dim, use_bias=False)
    self.pixel_conv = nn.Dense(self.num_classes + 1, use_bias=False)
    self.pixel_norm = nn.BatchNorm(use_running_average=False)

  def __call__(self, features, cam):
    return self.classify(features), self.sgc(features, cam)

  def classify(self, features):
    """Image-level logits ``[B, K]``: global average pooling and a linear layer, the
    backbone's own classifier in the official code (``extract_features(...,
    global_pool=True, num_classes=K)``, ``train_wss.py:372-390``); with ``hidden``,
    a 1x1 conv + ReLU before the pooling (jaxseg's earlier head)."""
    if self.hidden:
      features = nn.relu(self.cls_conv(features))
    return self.cls_out(features.mean(spatial_axes(features)))

  def sgc(self, features, cam):
    """SGC logits ``[..., K + 1]`` (background first) of the Grad-CAM ``cam [..., K]``."""
    flat = jax.lax.stop_gradient(features)
    flat = flat.reshape(flat.shape[0], -1, flat.shape[-1])
    q, k = self.query(flat), self.key(flat)
    attention = jax.nn.softmax(jnp.einsum("bnd,bmd->bnm", q, k) / jnp.sqrt(self.attention_dim))
    value = jax.lax.stop_gradient(cam).reshape(cam.shape[0], -1, cam.shape[-1])
    score = (jnp.einsum("bnm,bmk->bnk", attention, value) + value).reshape(cam.shape)
    score = jnp.concatenate([2.0 - score.max(-1, keepdims=True), score], -1)
    return self.pixel_norm(self.pixel_conv(score))


def masked_pseudo_label_loss(logits, target, valid):
  """The pseudo-label cross-entropy over the valid pixels, divided by their count
  (``train_wss.py:482-499``: ``loss * valid``, ``_div_maybe_zero(sum, sum(valid))``);
  ``valid`` is brought to the logits' size (a valid-convolution network's is smaller)."""
  valid = jax.image.resize(valid, logits.shape[:-1], "nearest")
  return jnp.sum(base.pseudo_label_map(logits, target) * valid) / jnp.maximum(valid.sum(), 1.0)


def spatial_axes(x) -> tuple:
  """The spatial axes of ``x [B, ..., C]`` (images or volumes)."""
  return tuple(range(1, x.ndim - 1))


def foreground_classes(num_classes: int) -> int:
  return max(num_classes - 1, 1)


def grad_cam(head: CamHead, params, features, present):
  """Grad-CAM ``[B, h, w, K]`` (volumes ``[B, x, y, z, K]``) of each foreground class,
  times its image-level presence ``present [B, K]``, each map scaled to max 1."""

  def score(f, c):
    return head.apply({"params": params}, f, method=CamHead.classify)[:, c].sum()

  classes = jnp.arange(head.num_classes)
  grads = jax.vmap(jax.grad(score), in_axes=(None, 0))(features, classes)  # [K, B, h, w, C]
  alpha = grads.mean(tuple(a + 1 for a in spatial_axes(features)))  # [K, B, C]
  cam = jax.nn.relu(jnp.einsum("kbc,b...c->b...k", alpha, features))
  cam = cam * present.reshape(present.shape[0], *(1,) * (cam.ndim - 2), -1)
  return cam / jnp.maximum(cam.max(spatial_axes(cam), keepdims=True), 1e-12)


def sgc(head: CamHead, cam_net, features, cam):
  """``(SGC logits, the head's new BatchNorm statistics)``."""
  variables = state_lib.variables(cam_net)
  logits, new = head.apply(variables, features, cam, method=CamHead.sgc, mutable=["batch_stats"])
  return logits, new["batch_stats"]


def class_logits(logits):
  """Decoder logits with the background first: binary ``[l]`` becomes ``[0, l]``."""
  return jnp.concatenate([jnp.zeros_like(logits), logits], -1) if logits.shape[-1] == 1 else logits


def sharpen(probs, temperature):
  sharp = probs ** (1 / temperature)
  return sharp / sharp.sum(-1, keepdims=True)


def calibrated_fusion(logits, sgc_logits, gamma: float, temperature: float):
  """``Sharpen(γ softmax(p / N) + (1 - γ) softmax(m / N), T)``, ``N`` the root mean
  square of ``[p; m]`` over the whole batch (``train_wss.py:437-453``)."""
  scale = jax.lax.rsqrt(jnp.mean(jnp.concatenate([logits, sgc_logits]) ** 2) + 1e-8)
  fused = gamma * jax.nn.softmax(logits * scale) + (1 - gamma) * jax.nn.softmax(sgc_logits * scale)
  return sharpen(fused, temperature)


def resize_to(maps, size):
  return jax.image.resize(maps, (maps.shape[0], *size, maps.shape[-1]), "linear")


def presence(labels, num_classes: int):
  """Image-level labels ``[B, K]``: foreground class ``k`` occurs in the mask."""
  classes = jnp.arange(1, foreground_classes(num_classes) + 1)
  return (labels.reshape(labels.shape[0], -1, 1) == classes).any(1).astype(jnp.float32)


def sgc_loss(sgc_logits, labels):
  """Cross-entropy of the SGC logits, upsampled to the mask's size, against the mask."""
  logits = resize_to(sgc_logits, labels.shape[1:])
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32)))


def attention_refine(image, probs):
  """``source="pooled"``: ``probs [B, H, W, K]`` propagated along the self-attention of
  pooled (image, prediction) features at 1/4 resolution (parameter-free)."""
  b, h, w, k = probs.shape
  hp, wp = h // POOL, w // POOL
  pool = lambda x: x[:, : hp * POOL, : wp * POOL].reshape(b, hp, POOL, wp, POOL, -1).mean((2, 4))  # noqa: E731
  feats = jnp.concatenate([pool(image), pool(probs)], -1).reshape(b, hp * wp, -1)
  feats = (feats - feats.mean(1, keepdims=True)) / (feats.std(1, keepdims=True) + 1e-6)
  attn = jax.nn.softmax(jnp.einsum("bnc,bmc->bnm", feats, feats) / jnp.sqrt(feats.shape[-1]), -1)
  refined = jnp.einsum("bnm,bmk->bnk", attn, pool(probs).reshape(b, hp * wp, k))
  refined = refined.reshape(b, hp, 1, wp, 1, k)
  refined = jnp.broadcast_to(refined, (b, hp, POOL, wp, POOL, k)).reshape(
    b, hp * POOL, wp * POOL, k
  )
  return jnp.pad(refined, ((0, 0), (0, h - hp * POOL), (0, w - wp * POOL), (0, 0)), mode="edge")


def fuse(probs, refined, temperature):
  """``source="pooled"``: mass-calibrated average of the two maps, sharpened."""
  mass = probs.mean((1, 2), keepdims=True)
  refined = jnp.clip(refined * mass / (refined.mean((1, 2), keepdims=True) + 1e-6), 0.0, 1.0)
  fused = jnp.clip(0.5 * (probs + refined), 1e-6, 1 - 1e-6)
  sharp = fused ** (1 / temperature)
  if probs.shape[-1] == 1:
    return sharp / (sharp + (1 - fused) ** (1 / temperature))
  return sharp / sharp.sum(-1, keepdims=True)


class Views(NamedTuple):
  """One step's unlabeled views: the ``weak`` image batch (the pseudo-label's source),
  the ``strong`` one (trained on it) and where the strong view is ``valid`` (outside
  its CutOut square)."""

  weak: jax.Array
  strong: jax.Array
  valid: jax.Array


@dataclasses.dataclass(frozen=True)
class Weights:
  """The SGC step's fusion and loss settings (:func:`make`'s arguments of these names)."""

  temperature: float
  gamma: float
  weight: float
  cls_weight: float
  sgc_weight: float


def _known(name: str, value: str, known) -> None:
  if value not in known:
    raise UserError(f"pseudoseg: unknown {name} {value!r}; known: {', '.join(known)}.")


def make(
  source: str = "sgc",
  temperature: float = 0.5,
  gamma: float = 0.5,
  weight: float = 1.0,
  cls_weight: float = 1.0,
  sgc_weight: float = 1.0,
  attention_dim: int = 128,
  cls_hidden: int = 0,
  strong: str = "official",
  cutout: float = strong_views.CUTOUT,
  noise: float = 0.05,
) -> Method:
  """``source``: ``sgc`` (the paper) or ``pooled`` (the parameter-free stand-in);
  ``temperature`` T of the sharpening; ``gamma``: the decoder's share of the fusion;
  ``weight``, ``cls_weight``, ``sgc_weight``: of the pseudo-label, classification and
  SGC losses; ``attention_dim``: of SGC's query/key (official: 128); ``cls_hidden``:
  0 for the official linear classifier, else the width of jaxseg's earlier 1x1 conv +
  ReLU head; ``strong``: the strong view (:func:`jaxseg.semi.strong_views.strong_view`) with
  ``cutout`` (side, a fraction of the image's) or ``noise`` (``gray_noise``'s std)."""
  _known("source", source, SOURCES)
  _known("strong", strong, strong_views.STRONG)
  settings = Weights(temperature, gamma, weight, cls_weight, sgc_weight)

  def cam_head(ctx):
    classes = foreground_classes(ctx.model.interface.num_classes)
    return CamHead(classes, attention_dim, cls_hidden)

  def init(ctx, key):
    k_model, k_cam = jax.random.split(key)
    model = step_lib.init_net(ctx, k_model)
    if source == "pooled" and len(ctx.image_shape) != 3:
      raise UserError("pseudoseg: source='pooled' is for 2-D images; volumes take 'sgc'.")
    if source == "pooled":
      return state_lib.start({"model": model})
    image = jnp.zeros((1, *ctx.image_shape), jnp.float32)
    _, _, features = step_lib.forward_features(
      ctx, model.params, model.batch_stats, image, None, train=False
    )
    cam = jnp.zeros((*features.shape[:-1], foreground_classes(ctx.model.interface.num_classes)))
    variables = cam_head(ctx).init(k_cam, features, cam)
    return state_lib.start({"model": model, "cam": state_lib.make_net(variables, ctx.tx)})

  def step(ctx, state, labeled, unlabeled, key):
    key = jax.random.fold_in(key, state.step)
    k_aug, k_strong, k_drop = jax.random.split(key, 3)
    labeled, weak = step_lib.augmented(ctx, k_aug, labeled, unlabeled)
    strong_image, valid = strong_views.strong_view(k_strong, weak["image"], strong, noise, cutout)
    views = Views(weak["image"], strong_image, valid)
    if source == "pooled":
      return pooled_step(ctx, state, labeled, views, k_drop, settings)
    return sgc_step(ctx, cam_head(ctx), state, labeled, views, k_drop, settings)

  exchanged = ("model",) if source == "pooled" else ("model", "cam")
  return Method(init=init, step=step, evaluated="model", exchanged=exchanged)


def pseudo_target(ctx, head, net, cam, weak_image, key, settings):
  """The fused soft pseudo-label of the weak view (stop-gradient), ``[B, H, W, K+1]``."""
  k_weak, k_cam = jax.random.split(key)
  out, _ = step_lib.forward(ctx, net.params, net.batch_stats, weak_image, k_weak)
  _, _, features = step_lib.forward_features(
    ctx, net.params, net.batch_stats, weak_image, k_cam, train=False
  )
  cls_logits = head.apply({"params": cam.params}, features, method=CamHead.classify)
  present = (jax.nn.sigmoid(cls_logits) >= 0.5).astype(jnp.float32)
  maps, _ = sgc(head, cam, features, grad_cam(head, cam.params, features, present))
  logits = class_logits(out.logits)
  fused = calibrated_fusion(
    logits, resize_to(maps, logits.shape[1:-1]), settings.gamma, settings.temperature
  )
  return jax.lax.stop_gradient(fused)


def sgc_step(ctx, head, state, labeled, views: Views, key, settings: Weights):
  """One step of the paper's PseudoSeg (networks ``model`` and ``cam``)."""
  net, cam = state.nets["model"], state.nets["cam"]
  strong, valid = views.strong, views.valid
  k_target, k_sup, k_strong = jax.random.split(key, 3)
  target = pseudo_target(ctx, head, net, cam, views.weak, k_target, settings)
  target = target[..., 1] if net_is_binary(ctx) else target
  sup_weight = step_lib.supervision(labeled)
  present = presence(labeled["labels"], ctx.model.interface.num_classes)

  def loss_of(params):
    out, stats, features = step_lib.forward_features(
      ctx, params["model"], net.batch_stats, labeled["image"], k_sup
    )
    strong_out, stats = step_lib.forward(
      ctx, params["model"], stats, strong.astype(labeled["image"].dtype), k_strong
    )
    sup = step_lib.supervised_loss(ctx, out, labeled)
    unsup = masked_pseudo_label_loss(strong_out.logits, target, valid)
    cls_logits = head.apply({"params": params["cam"]}, features, method=CamHead.classify)
    cls = jnp.mean(optax.sigmoid_binary_cross_entropy(cls_logits, present))
    cam_map = jax.lax.stop_gradient(grad_cam(head, params["cam"], features, present))
    sgc_logits, cam_stats = sgc(head, cam.replace(params=params["cam"]), features, cam_map)
    seg = sgc_loss(sgc_logits, labeled["labels"])
    info = pseudo_label_info(target, strong_out.logits)
    total = (
      sup
      + settings.weight * unsup
      + sup_weight * (settings.cls_weight * cls + settings.sgc_weight * seg)
    )
    return total, ((stats, cam_stats), sup, unsup, cls, seg, info)

  params = {"model": net.params, "cam": cam.params}
  (loss, (stats, sup, unsup, cls, seg, info)), grads = step_lib.value_and_grad(ctx, loss_of, params)
  nets = {
    "model": step_lib.apply_grads(ctx.tx, net, grads["model"], stats[0]),
    "cam": step_lib.apply_grads(ctx.tx, cam, grads["cam"], stats[1]),
  }
  metrics = {"loss": loss, "sup": sup, "unsup": unsup, "cls": cls, "sgc": seg, **info}
  return state.replace(step=state.step + 1, nets=nets), metrics


def pseudo_label_info(target, strong_logits) -> dict:
  """:func:`jaxseg.semi.base.pseudo_label_info` of the fused pseudo-label (a binary
  foreground probability, or soft classes ``[..., K]``) and the strong view's labels."""
  soft = target.ndim == strong_logits.ndim
  labels = jnp.argmax(target, -1) if soft else (target > 0.5).astype(jnp.int32)
  strong = base.hard_pseudo_labels(strong_logits)
  return base.pseudo_label_info(labels, strong, pseudo=(True, False))


def net_is_binary(ctx) -> bool:
  return ctx.model.interface.num_classes == 1


def pooled_step(ctx, state, labeled, views: Views, key, settings: Weights):
  """One step of the parameter-free stand-in (``source="pooled"``: its ``temperature``
  and ``weight``)."""
  net, strong, valid = state.nets["model"], views.strong, views.valid
  weak_out, _ = step_lib.forward(ctx, net.params, net.batch_stats, views.weak, key, train=False)
  probs = probabilities(weak_out.logits)
  image = views.weak[:, : probs.shape[1], : probs.shape[2]]
  refined = attention_refine(image, probs)
  target = jax.lax.stop_gradient(fuse(probs, refined, settings.temperature))
  target = target[..., 0] if target.shape[-1] == 1 else target

  def loss_of(params):
    sup_out, un_out, stats = step_lib.forward_pair(
      ctx, params, net.batch_stats, labeled, strong, key
    )
    sup = step_lib.supervised_loss(ctx, sup_out, labeled)
    unsup = masked_pseudo_label_loss(un_out.logits, target, valid)
    info = pseudo_label_info(target, un_out.logits)
    return sup + settings.weight * unsup, (stats, sup, unsup, info)

  (loss, (stats, sup, unsup, info)), grads = step_lib.value_and_grad(ctx, loss_of, net.params)
  net = step_lib.apply_grads(ctx.tx, net, grads, stats)
  metrics = {"loss": loss, "sup": sup, "unsup": unsup, **info}
  return state.replace(step=state.step + 1, nets={"model": net}), metrics
