"""A real federation over Flower (``pip install -e '.[flower]'``): the federated round
of :mod:`jaxseg.run.federated`, with each client a *site* — a Flower SuperNode that
reads only its own folder — and the server a Flower ServerApp.

The round is the simulation's ``loop`` backend cut at its seams
(:class:`jaxseg.fed.backends.LoopParts`): the server runs ``prepare`` (its training,
label-at-server; the method's hook, FedWeP's seed search), sends the exchanged
networks (and the hook's payload, FedWeP's two seeds) to every site, adds the sites'
answers in the order of their names and runs ``conclude`` (the server optimizer,
FedAvg or FedAdam); each site runs ``block``, the simulation's compiled client
function, on its own images. What crosses the wire, per round and site:

* down: the exchanged networks' parameters and BatchNorm statistics, the payload, and a
  ConfigRecord with the run's config and the site's place (its number, the federation's
  table width and longest local run: counts);
* up: the site's networks times its image count (float32 sums, as the simulation adds
  clients), that count, and the sums of its training metrics; with compression the
  update's compressed bytes instead (:func:`jaxseg.flower.wire.restored` reads them back).

A site's number is its place among the sites' names (sorted): a site holding what
client ``k`` of a simulation holds (``config.fed.client_dirs``, the same folders)
trains exactly as that client, so N rounds end with the simulation's global model,
bitwise on one platform (tests/test_flower.py). A site labels ``ceil(fraction *
images)`` of its images (its own ``labeled-fraction``, else
``config.method.labeled_fraction``); the simulation apportions the global count, which
is the same where the sites' shares are whole numbers.

Sites are SuperNodes started with ``--node-config "data-dir='DIR' site='NAME'
[labeled-fraction=F] [cache-dir='DIR']"``; the server's own data (validation, test,
and label-at-server its labeled images: its whole training split) is
``config.data.dir`` on the server. A round ends when every site has answered, or after
``config.fed.round_timeout_s`` with at least ``config.fed.min_fraction`` of them (the
log names the missing); a site whose data cannot be read answers with its one-line
error, which the server reports. The ServerApp writes the workdir a simulation writes
(``config.json``, ``metrics.jsonl`` with the measured bytes, checkpoints of the global
model each validation, ``communication.json``; a restarted run resumes), so ``jaxseg
eval`` works on it. Volume sites hold ``msd`` folders and prepare their cases as the
server's plan says (its spacing and CT statistics, sent with every message).
"""

import logging as std_logging
import sys

from flwr.app import (
  ConfigRecord,
  Context,
  Message,
  RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from jaxseg import data as datasets
from jaxseg.errors import UserError
from jaxseg.flower import server, site, wire
from jaxseg.run import federated, runtime, skeleton

server_app = ServerApp()
client_app = ClientApp()
std_logging.getLogger("absl").addFilter(runtime.quiet)  # TFDS's and orbax's notices


@client_app.query()
def _query(message: Message, context: Context) -> Message:
  """The handshake: the site's counts (its data prepared and checked)."""

  def counts(opened: site.Site, plan) -> RecordDict:
    found = {"images": opened.images, "pool": opened.pool, "fraction": opened.fraction}
    return RecordDict({"site": ConfigRecord({"name": site.site_name(context), **found})})

  return site.answer(message, context, counts)


@client_app.train()
def _train(message: Message, context: Context) -> Message:
  """One round of local training: the simulation's client function on this site."""
  return site.answer(
    message, context, lambda opened, plan: site.local_round(opened, plan, message.content)
  )


@server_app.main()
def _server(grid: Grid, context: Context) -> None:
  """``federated.train`` with the Flower round; a user error is one line."""
  config = wire.decode_config(str(context.run_config["config"]))
  workdir = str(context.run_config["workdir"])
  site.compilation_cache(config.data.cache_dir or datasets.default_cache_dir())
  try:
    federated.train(
      config, workdir, make_simulation=lambda exp: server.federation(exp, grid, workdir)
    )
  except UserError as e:
    print(f"jaxseg: error: {e}", file=sys.stderr, flush=True)
    skeleton.write_text(workdir, "flower_error.txt", f"{e}\n")
