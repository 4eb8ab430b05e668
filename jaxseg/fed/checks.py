"""Every check of a federated config's ``config.fed.*`` keys, in one place, before
any data is prepared (the partition's own checks need the data: :mod:`partition`,
:mod:`layout`)."""

from jaxseg import data as datasets
from jaxseg import semi
from jaxseg.errors import UserError
from jaxseg.fed import recipe, simulate, streams

PLACEMENTS = ("auto", "device", "stream")
CLIENT_MAPS = ("auto", "vmap", "scan", "loop")
POOL_PARTITIONS = ("iid", "patient", "source")
# Keys of centralized runs that a federated run does not read: it places client data by
# config.fed.placement / device_budget_mib, spreads clients over the devices by
# config.fed.shard_clients / data_devices and counts rounds (config.fed.rounds).
UNUSED = {
  "data": ("placement", "device_budget_mib", "workers"),
  "train": ("steps", "profile_steps"),
}


def _choice(key: str, value: str, known) -> None:
  if value not in known:
    raise UserError(f"config.fed.{key}: unknown {value!r}; known: {', '.join(known)}.")


def check(config, devices: int, processes: int = 1) -> None:
  """Raises a :class:`UserError` naming the first ``config.fed`` key that is wrong
  (``devices``: how many the client mesh would span, over ``processes``)."""
  fc = config.fed
  for section, keys in UNUSED.items():
    for key in keys:
      if key in config[section]:
        raise UserError(
          f"config.{section}.{key}: a federated run does not read it (client data: "
          "config.fed.placement and device_budget_mib; devices: config.fed.shard_clients "
          "and data_devices; length: config.fed.rounds); remove it."
        )
  if config.data.name in datasets.VOLUMES:
    _check_volumes(fc)
  if "method" not in config:
    raise UserError("a federated config needs config.method (e.g. 'supervised' for FedAvg).")
  if fc.rounds <= 0:
    raise UserError(f"config.fed.rounds must be positive, found {fc.rounds}.")
  if config.optim.schedule != "constant" or config.optim.warmup_steps:
    raise UserError(
      "a federated client's optimizer restarts every round: config.optim.schedule must be "
      f"'constant' and config.optim.warmup_steps 0, found {config.optim.schedule!r} and "
      f"{config.optim.warmup_steps}."
    )
  if "jpeg" in config.data and config.data.jpeg.qualities:
    raise UserError(
      "config.data.jpeg (host-side JPEG weathering) is not supported in federated runs, "
      "whose batches are drawn inside the compiled round; set config.data.jpeg.qualities=()."
    )
  _choice("scenario", fc.scenario, simulate.SCENARIOS)
  _choice("sampling", fc.sampling, streams.SAMPLINGS)
  _choice("server_training", fc.server_training, simulate.SERVER_TRAINING)
  _choice("pool_partition", fc.pool_partition, POOL_PARTITIONS)
  if fc.pool_partition != "iid" and not config.data.get("unlabeled_dir"):
    raise UserError(
      f"config.fed.pool_partition={fc.pool_partition!r} splits the pool of "
      "config.data.unlabeled_dir by patient or source; set it (or pool_partition='iid')."
    )
  _check_sites(config)
  _choice("placement", fc.placement, PLACEMENTS)
  _choice("client_map", fc.client_map, CLIENT_MAPS)
  if fc.scenario == "label_at_server" and config.method.name == "supervised":
    raise UserError(
      "method 'supervised' with scenario 'label_at_server' gives the clients nothing to "
      "train on; use label_at_client (FedAvg) or a semi-supervised method."
    )
  if processes > 1 and (fc.placement == "stream" or fc.client_map == "loop"):
    raise UserError(
      f"a federated run over {processes} processes keeps each process's clients on its own "
      f"devices: config.fed.placement must be 'device' or 'auto' (found {fc.placement!r}) "
      f"and config.fed.client_map 'vmap', 'scan' or 'auto' (found {fc.client_map!r})."
    )
  _check_data_devices(config, devices)
  _check_recipe(config, devices)
  broadcast = semi.make_method(config.method.name, config.method.kwargs).broadcast
  if broadcast is not None:
    broadcast.settings_of(fc)


def _check_sites(config) -> None:
  """``config.fed.client_dirs`` (a simulation of sites with their own folders) and the
  settings of a real federation (:mod:`jaxseg.flower.app`)."""
  fc = config.fed
  if not 0 < fc.min_fraction <= 1:
    raise UserError(f"config.fed.min_fraction must be in (0, 1], found {fc.min_fraction}.")
  if fc.round_timeout_s <= 0:
    raise UserError(f"config.fed.round_timeout_s must be positive, found {fc.round_timeout_s}.")
  if not fc.client_dirs:
    return
  folders = config.data.name not in datasets.VOLUMES or config.data.name == "msd"
  if not folders or fc.scenario != "label_at_client":
    raise UserError(
      "config.fed.client_dirs simulates sites that hold labeled images in their own folders: "
      f"image datasets or msd volumes, scenario 'label_at_client' only (found "
      f"{config.data.name!r}, {fc.scenario!r})."
    )
  if fc.partition != "site" or fc.num_clients != len(fc.client_dirs):
    raise UserError(
      f"config.fed.client_dirs: {len(fc.client_dirs)} folders make {len(fc.client_dirs)} "
      f"clients by site: set config.fed.partition='site' (found {fc.partition!r}) and "
      f"config.fed.num_clients={len(fc.client_dirs)} (found {fc.num_clients})."
    )


def _check_volumes(fc) -> None:
  if fc.placement == "stream":
    raise UserError(
      "config.fed.placement='stream' on volumes: patches are drawn inside the round from "
      "the cases on the device; use 'device' or 'auto'."
    )


def _check_data_devices(config, devices: int) -> None:
  fc, data = config.fed, config.fed.data_devices
  if data < 1 or devices % data:
    raise UserError(
      f"config.fed.data_devices={data} must divide the {devices} devices of the client mesh."
    )
  if data > 1 and fc.client_map == "loop":
    raise UserError(
      "config.fed.data_devices > 1 needs config.fed.client_map 'vmap', 'scan' or 'auto'."
    )
  for key, batch in (
    ("config.train.batch_size", config.train.batch_size),
    ("config.method.unlabeled_batch_size", config.method.unlabeled_batch_size),
  ):
    if batch % data:
      raise UserError(f"{key}={batch} does not divide by config.fed.data_devices={data}.")


def _check_recipe(config, devices: int) -> None:
  fc = config.fed
  recipe.check(fc)
  if fc.algorithm == "scaffold" and (config.optim.name != "sgd" or config.optim.kwargs):
    raise UserError(
      "config.fed.algorithm='scaffold' corrects plain SGD steps (its control variates "
      f"divide by the step size): set config.optim.name='sgd' (found {config.optim.name!r}) "
      "without kwargs."
    )
  if fc.algorithm == "fedbn" and fc.aggregator.name != "mean":
    raise UserError("config.fed.algorithm='fedbn' needs config.fed.aggregator.name='mean'.")
  if fc.clients_per_round and devices // fc.data_devices > 1:
    raise UserError(
      f"config.fed.clients_per_round={fc.clients_per_round} samples clients from one client "
      f"group, and the client mesh has {devices // fc.data_devices}: set "
      "config.fed.shard_clients=False (or clients_per_round=0)."
    )
  if fc.aggregator.name != "mean" and fc.scenario == "label_at_server":
    if fc.server_training == "with_clients":
      raise UserError(
        "config.fed.server_training='with_clients' joins the server's update to the clients' "
        f"sums: it needs config.fed.aggregator.name='mean' (found {fc.aggregator.name!r})."
      )
