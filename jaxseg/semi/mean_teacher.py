"""Mean Teacher (Tarvainen & Valpola 2017).

The student trains on the supervised loss plus ``weight * ramp_up(t) * MSE`` between
its probabilities and the teacher's on the unlabeled batch (each seeing its own
augmentation and dropout). The teacher is the exponential moving average of the
student *including the BatchNorm statistics* — a known bug in popular
implementations averages only the weights, leaving the teacher's statistics stale.
The teacher is the evaluated model. Settings (``method.kwargs``): ``decay`` (0.99),
``weight`` (1.0), ``ramp_up_steps`` (0: 30% of training), ``input_noise`` (0.05, std of
the Gaussian noise on the student's input).
"""

import jax
import jax.numpy as jnp

from jaxseg.semi import base


def init(ctx, key):
  student = base.init_net(ctx, key)
  teacher = base.Net(params=student.params, batch_stats=student.batch_stats, opt_state=None)
  return base.SemiState(
    step=jnp.zeros((), jnp.int32), nets={"student": student, "teacher": teacher}
  )


def ema(teacher_tree, student_tree, decay):
  return jax.tree.map(lambda t, s: decay * t + (1 - decay) * s, teacher_tree, student_tree)


def _probs(logits):
  return jax.nn.sigmoid(logits) if logits.shape[-1] == 1 else jax.nn.softmax(logits)


def step(ctx, state, labeled, unlabeled, key):
  kw = {"decay": 0.99, "weight": 1.0, "ramp_up_steps": 0, "input_noise": 0.05, **ctx.kwargs}
  key = jax.random.fold_in(key, state.step)
  k_aug, k_noise, k_drop = jax.random.split(key, 3)
  labeled, view = base.augmented(ctx, k_aug, labeled, unlabeled)
  student, teacher = state.nets["student"], state.nets["teacher"]
  # Both see the same (augmented) unlabeled images; the student's copy gets Gaussian
  # input noise and dropout, Mean Teacher's perturbations that keep the geometry.
  target, _ = base.forward(
    ctx, teacher.params, teacher.batch_stats, view["image"], k_drop, train=False
  )
  target = jax.lax.stop_gradient(_probs(target))
  noisy = view["image"] + kw["input_noise"] * jax.random.normal(k_noise, view["image"].shape)
  ramp = kw["ramp_up_steps"] or int(0.3 * ctx.total_steps)
  weight = kw["weight"] * base.ramp_up(state.step, ramp)

  def loss_of(params):
    both = jnp.concatenate([labeled["image"], noisy])
    logits, stats = base.forward(ctx, params, student.batch_stats, both, k_drop)
    n = labeled["image"].shape[0]
    sup = base.supervised_loss(ctx, logits[:n], labeled)
    consistency = jnp.mean((_probs(logits[n:]) - target) ** 2)
    return sup + weight * consistency, (stats, sup, consistency)

  (loss, (stats, sup, cons)), grads = jax.value_and_grad(loss_of, has_aux=True)(student.params)
  student = base.apply_grads(ctx, student, grads, stats)
  teacher = teacher.replace(
    params=ema(teacher.params, student.params, kw["decay"]),
    batch_stats=ema(teacher.batch_stats, student.batch_stats, kw["decay"]),
  )
  state = state.replace(step=state.step + 1, nets={"student": student, "teacher": teacher})
  return state, {"loss": loss, "sup": sup, "unsup": cons}


METHOD = base.Method(init=init, step=step, evaluated="teacher", exchanged=("student", "teacher"))
