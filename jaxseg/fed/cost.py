"""Communication cost of a federated method, from what it actually exchanges.

Per client and round the server sends the method's exchanged networks (parameters
and BatchNorm statistics) and what its :class:`jaxseg.semi.Broadcast` declares (FedWeP:
the two uint32 seeds); the client returns
its updated networks. The relative cost is against a method exchanging two networks
of the same architecture both ways (the paper's 100%).
"""

import jax
import numpy as np

from jaxseg.fed import algorithms, compress, recipe


def tree_bytes(tree) -> int:
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def communication(method, nets, rc: recipe.Recipe = recipe.FEDAVG) -> dict:
  """``{down_bytes, up_bytes, relative, text}`` per client per round; the update goes
  up as the recipe ``rc`` compresses it (:func:`up_bytes`), the
  BatchNorm statistics in float32."""
  per_net = {n: tree_bytes(v.params) + tree_bytes(v.batch_stats) for n, v in nets.items()}
  model = sum(per_net[n] for n in method.exchanged)
  extra = method.broadcast.nbytes if method.broadcast is not None else 0
  down = (
    model
    + extra
    + sum(down_bytes(rc, nets[n].params, nets[n].batch_stats) for n in method.exchanged)
  )
  up = sum(up_bytes(rc, nets[n].params, nets[n].batch_stats) for n in method.exchanged)
  two_models = 2 * 2 * per_net[method.evaluated]
  relative = (down + up) / two_models
  text = f"{100 * relative:.0f}%" + (f" + {extra} B {method.broadcast.what}" if extra else "")
  return {"down_bytes": down, "up_bytes": up, "relative": relative, "text": text}


def up_bytes(rc: recipe.Recipe, params, batch_stats) -> int:
  """Bytes of one client's update as the recipe sends it: parameters in float32, or 8
  bits per value plus each tensor's two float32 ends (``q8``), or ``topk``'s values
  and int32 positions; BatchNorm statistics in float32 (FedBN: neither its BatchNorm
  parameters nor statistics); SCAFFOLD adds ``c_i+ - c_i`` in float32."""
  sent = params
  if rc.algorithm == "fedbn":
    mask = algorithms.bn_mask(params, batch_stats)
    sent = [x for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True) if not m]
  stats = 0 if rc.algorithm == "fedbn" else tree_bytes(batch_stats)
  controls = tree_bytes(params) if rc.algorithm == "scaffold" else 0
  return compress.update_bytes(rc, sent) + stats + controls


def down_bytes(rc: recipe.Recipe, params, batch_stats) -> int:
  """Bytes of what the server sends besides the networks: SCAFFOLD's ``c``."""
  del batch_stats
  return tree_bytes(params) if rc.algorithm == "scaffold" else 0
