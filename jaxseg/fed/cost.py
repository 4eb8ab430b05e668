"""Communication cost of a federated method, from what it actually exchanges.

Per client and round the server sends the method's exchanged networks (parameters
and BatchNorm statistics) and what its :class:`jaxseg.semi.Broadcast` declares (FedWeP:
the two uint32 seeds); the client returns
its updated networks. The relative cost is against a method exchanging two networks
of the same architecture both ways (the paper's 100%).
"""

import jax
import numpy as np

from jaxseg.fed import recipe


def tree_bytes(tree) -> int:
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def communication(method, nets, rc: recipe.Recipe = recipe.FEDAVG) -> dict:
  """``{down_bytes, up_bytes, relative, text}`` per client per round; the update goes
  up as the recipe ``rc`` compresses it (:func:`jaxseg.fed.recipe.up_bytes`), the
  BatchNorm statistics in float32."""
  per_net = {n: tree_bytes(v.params) + tree_bytes(v.batch_stats) for n, v in nets.items()}
  model = sum(per_net[n] for n in method.exchanged)
  extra = method.broadcast.nbytes if method.broadcast is not None else 0
  down = (
    model
    + extra
    + sum(recipe.down_bytes(rc, nets[n].params, nets[n].batch_stats) for n in method.exchanged)
  )
  up = sum(recipe.up_bytes(rc, nets[n].params, nets[n].batch_stats) for n in method.exchanged)
  two_models = 2 * 2 * per_net[method.evaluated]
  relative = (down + up) / two_models
  text = f"{100 * relative:.0f}%" + (f" + {extra} B {method.broadcast.what}" if extra else "")
  return {"down_bytes": down, "up_bytes": up, "relative": relative, "text": text}
