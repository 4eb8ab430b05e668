"""Semi-supervised methods (FedWeP paper's baselines and RWP) and their name table.

Every method module exposes one ``METHOD = Method(...)``:

* ``init(ctx, key) -> SemiState``: the method's networks (``state.nets``, each a
  :class:`~jaxseg.semi.base.Net` of params, BatchNorm statistics and optimizer
  state);
* ``step(ctx, state, labeled, unlabeled, key) -> (state, metrics)``: one pure,
  jit-able training step on a labeled and an unlabeled batch (vmappable over stacked
  client states);
* ``evaluated``: the network whose predictions are scored;
* ``exchanged``: which networks' trees a federated client sends and receives
  (two-model methods cost 100%, one model 50%), and whether seeds travel too.

``ctx`` (:class:`~jaxseg.semi.base.Context`) holds the static parts: model, loss,
optimizer, augmentations and the method's settings (``config.method.kwargs``).
"""

from jaxseg import tables

METHODS = {
  "supervised": "jaxseg.semi.supervised:METHOD",
  "mean_teacher": "jaxseg.semi.mean_teacher:METHOD",
  "cps": "jaxseg.semi.cps:METHOD",
  "pseudoseg": "jaxseg.semi.pseudoseg:METHOD",
  "rwp": "jaxseg.semi.rwp:METHOD",
}


def get_method(name: str):
  return tables.resolve(METHODS, name, "method")
