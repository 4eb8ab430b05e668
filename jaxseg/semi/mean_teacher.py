"""Mean Teacher (Tarvainen & Valpola 2017).

The student trains on the supervised loss plus ``weight * ramp_up(t) * MSE`` between
its probabilities and the teacher's on the unlabeled batch. Both see the same
geometrically augmented unlabeled images (pixel-wise consistency needs them aligned)
and, as in the paper, each its *own* noise: independent Gaussian input noise and
dropout, both networks in training mode (BatchNorm on batch statistics; the
teacher's are discarded). ``teacher_noise=False`` keeps the teacher noise-free in
inference mode (what jaxseg did before). The teacher is the exponential moving
average of the student *including the BatchNorm statistics* — a known bug in popular
implementations averages only the weights, leaving the teacher's statistics stale.
The teacher is the evaluated model.
"""

import jax
import jax.numpy as jnp

from jaxseg.models.interface import probabilities
from jaxseg.semi import Method, base
from jaxseg.train import state as state_lib
from jaxseg.train import step as step_lib


def ema(teacher_tree, student_tree, decay):
  return jax.tree.map(lambda t, s: decay * t + (1 - decay) * s, teacher_tree, student_tree)


def make(
  decay: float = 0.99,
  weight: float = 1.0,
  ramp_up_steps: int = 0,
  input_noise: float = 0.05,
  teacher_noise: bool = True,
) -> Method:
  """``decay``: EMA decay of the teacher; ``weight``: of the consistency loss;
  ``ramp_up_steps``: length of its sigmoid ramp-up (0: 30% of training);
  ``input_noise``: std of the Gaussian noise on each network's unlabeled input;
  ``teacher_noise``: the teacher gets its own noise and dropout (the paper)."""

  def init(ctx, key):
    student = step_lib.init_net(ctx, key)
    teacher = student.replace(opt_state=None)
    return state_lib.start({"student": student, "teacher": teacher})

  def step(ctx, state, labeled, unlabeled, key):
    key = jax.random.fold_in(key, state.step)
    k_aug, k_noise, k_drop, k_teacher_noise, k_teacher_drop = jax.random.split(key, 5)
    labeled, view = step_lib.augmented(ctx, k_aug, labeled, unlabeled)
    student, teacher = state.nets["student"], state.nets["teacher"]

    def noised(k):
      return view["image"] + input_noise * jax.random.normal(k, view["image"].shape)

    teacher_view = noised(k_teacher_noise) if teacher_noise else view["image"]
    target, _ = step_lib.forward(
      ctx, teacher.params, teacher.batch_stats, teacher_view, k_teacher_drop, train=teacher_noise
    )
    target = jax.lax.stop_gradient(probabilities(target.logits))
    noisy = noised(k_noise)
    ramp = ramp_up_steps or int(0.3 * ctx.total_steps)
    scale = weight * base.ramp_up(state.step, ramp)

    def loss_of(params):
      sup_out, un_out, stats = step_lib.forward_pair(
        ctx, params, student.batch_stats, labeled, noisy, k_drop
      )
      sup = step_lib.supervised_loss(ctx, sup_out, labeled)
      consistency = jnp.mean((probabilities(un_out.logits) - target) ** 2)
      return sup + scale * consistency, (stats, sup, consistency)

    (loss, (stats, sup, cons)), grads = step_lib.value_and_grad(ctx, loss_of, student.params)
    student = step_lib.apply_grads(ctx.tx, student, grads, stats)
    teacher = teacher.replace(
      params=ema(teacher.params, student.params, decay),
      batch_stats=ema(teacher.batch_stats, student.batch_stats, decay),
    )
    state = state.replace(step=state.step + 1, nets={"student": student, "teacher": teacher})
    return state, {"loss": loss, "sup": sup, "unsup": cons}

  return Method(init=init, step=step, evaluated="teacher", exchanged=("student", "teacher"))
