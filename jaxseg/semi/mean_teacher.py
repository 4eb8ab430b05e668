"""Mean Teacher (Tarvainen & Valpola 2017), as SSL4MIS computes it.

The reference is SSL4MIS (HiLab-git/SSL4MIS, ``code/train_mean_teacher_2D.py`` and
``_3D.py``, the code the FedWeP paper's baselines come from); line numbers are of
``train_mean_teacher_2D.py`` at commit 06df604:

* **EMA with warm-up** (L85-89, called at L179 with the iteration count *before* it
  is incremented, so ``t = 0`` at the first step): the teacher's *parameters* become
  ``alpha_t T + (1 - alpha_t) S`` with ``alpha_t = min(1 - 1/(t + 1), decay)`` — the
  teacher equals the student after the first step and follows it closely early on.
  BatchNorm statistics are buffers, not parameters: the teacher keeps its own, which
  its training-mode forward pass updates (PyTorch's ``ema_model`` is never put in
  eval mode). ``ema_warmup=False`` uses the constant ``decay``; ``ema_batch_stats=True``
  averages the statistics like the parameters (what jaxseg did before).
* **Noise** (L154-156): only the teacher's input gets Gaussian noise, std 0.1 clipped
  to ±0.2 (``input_noise``, ``noise_clip``); the teacher runs in training mode
  (dropout, batch statistics). ``student_noise=True`` also gives the student its own
  noise, as the paper does; ``teacher_noise=False`` runs the teacher noise-free in
  inference mode.
* **Consistency** (L169-175, ``utils/ramps.py`` L19-26): ``weight`` (0.1) times the
  sigmoid ramp-up ``exp(-5 (1 - t)^2)`` over the whole run (SSL4MIS ramps over 200
  "epochs" of 150 iterations, its 30,000 iterations; ``ramp_up_steps`` > 0 sets
  another length), times the MSE between the student's and the teacher's softmax
  (sigmoid) outputs on the unlabeled batch. The student sees the labeled and
  unlabeled images in one forward pass (L158). SSL4MIS also holds the consistency at
  0 for its first 1,000 iterations (L170-171); that is not reproduced (the ramp-up
  starts at ``exp(-5)``).
* **The validated network** (L212): SSL4MIS validates the student
  (``evaluated="student"``); ``"teacher"`` evaluates the teacher instead.
"""

import dataclasses

import jax
import jax.numpy as jnp

from jaxseg.errors import UserError
from jaxseg.models.interface import probabilities
from jaxseg.semi import Method, base
from jaxseg.train import state as state_lib
from jaxseg.train import step as step_lib

NETWORKS = ("student", "teacher")


def ema(teacher_tree, student_tree, decay):
  return jax.tree.map(lambda t, s: decay * t + (1 - decay) * s, teacher_tree, student_tree)


def ema_decay(step, decay: float, warmup: bool):
  """SSL4MIS's ``alpha_t = min(1 - 1/(t + 1), decay)`` at step ``t`` (0-based), or
  the constant ``decay``."""
  return jnp.minimum(1.0 - 1.0 / (step + 1.0), decay) if warmup else jnp.asarray(decay)


def noise(key, shape, std: float, clip: float):
  """Gaussian noise of ``std``, clipped to ``±clip`` (0: unclipped)."""
  n = std * jax.random.normal(key, shape)
  return jnp.clip(n, -clip, clip) if clip else n


@dataclasses.dataclass(frozen=True)
class Settings:
  """:func:`make`'s settings, as its arguments say."""

  decay: float
  weight: float
  ramp_up_steps: int
  input_noise: float
  noise_clip: float
  teacher_noise: bool
  student_noise: bool
  ema_warmup: bool
  ema_batch_stats: bool


def make(
  decay: float = 0.99,
  weight: float = 0.1,
  ramp_up_steps: int = 0,
  input_noise: float = 0.1,
  noise_clip: float = 0.2,
  teacher_noise: bool = True,
  student_noise: bool = False,
  ema_warmup: bool = True,
  ema_batch_stats: bool = False,
  evaluated: str = "student",
) -> Method:
  """``decay``: the teacher's EMA decay (after the warm-up, ``ema_warmup``);
  ``weight``: of the consistency loss, ramped up over ``ramp_up_steps`` (0: the whole
  run); ``input_noise``, ``noise_clip``: the teacher's input noise; ``teacher_noise``:
  the teacher gets it and runs in training mode; ``student_noise``: the student gets
  its own too (the paper); ``ema_batch_stats``: average the BatchNorm statistics too;
  ``evaluated``: the network scored (``student``, as SSL4MIS, or ``teacher``)."""
  if evaluated not in NETWORKS:
    raise UserError(f"mean_teacher: evaluated must be one of {NETWORKS}, found {evaluated!r}.")

  def init(ctx, key):
    student = step_lib.init_net(ctx, key)
    teacher = student.replace(opt_state=None)
    return state_lib.start({"student": student, "teacher": teacher})

  settings = Settings(
    decay, weight, ramp_up_steps, input_noise, noise_clip, teacher_noise, student_noise,
    ema_warmup, ema_batch_stats,
  )  # fmt: skip

  def step(ctx, state, labeled, unlabeled, key):
    return mean_teacher_step(ctx, state, labeled, unlabeled, key, settings)

  return Method(init=init, step=step, evaluated=evaluated, exchanged=NETWORKS)


def mean_teacher_step(ctx, state, labeled, unlabeled, key, s: Settings):
  """One step of :func:`make`'s method with its settings ``s``."""
  key = jax.random.fold_in(key, state.step)
  k_aug, k_noise, k_drop, k_teacher_noise, k_teacher_drop = jax.random.split(key, 5)
  labeled, view = step_lib.augmented(ctx, k_aug, labeled, unlabeled)
  student, teacher = state.nets["student"], state.nets["teacher"]
  image, std, clip = view["image"], s.input_noise, s.noise_clip
  teacher_view = (
    image + noise(k_teacher_noise, image.shape, std, clip) if s.teacher_noise else image
  )
  target, teacher_stats = step_lib.forward(
    ctx, teacher.params, teacher.batch_stats, teacher_view, k_teacher_drop, train=s.teacher_noise
  )
  teacher_labels = base.hard_pseudo_labels(target.logits)
  target = jax.lax.stop_gradient(probabilities(target.logits))
  if s.student_noise:
    image = image + noise(k_noise, image.shape, std, clip)
  scale = s.weight * base.ramp_up(state.step, s.ramp_up_steps or ctx.total_steps)

  def loss_of(params):
    sup_out, un_out, stats = step_lib.forward_pair(
      ctx, params, student.batch_stats, labeled, image, k_drop
    )
    sup = step_lib.supervised_loss(ctx, sup_out, labeled)
    consistency = jnp.mean((probabilities(un_out.logits) - target) ** 2)
    info = base.pseudo_label_info(
      teacher_labels, base.hard_pseudo_labels(un_out.logits), pseudo=(True, False)
    )
    return sup + scale * consistency, (stats, sup, consistency, info)

  (loss, (stats, sup, cons, info)), grads = step_lib.value_and_grad(ctx, loss_of, student.params)
  student = step_lib.apply_grads(ctx.tx, student, grads, stats)
  alpha = ema_decay(state.step, s.decay, s.ema_warmup)
  if s.ema_batch_stats:
    teacher_stats = ema(teacher.batch_stats, student.batch_stats, alpha)
  teacher = teacher.replace(
    params=ema(teacher.params, student.params, alpha), batch_stats=teacher_stats
  )
  state = state.replace(step=state.step + 1, nets={"student": student, "teacher": teacher})
  return state, {"loss": loss, "sup": sup, "unsup": cons, "ema_decay": alpha, **info}
