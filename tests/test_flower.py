"""A real federation over Flower (`pytest -k flower`): a SuperLink and two SuperNodes on
127.0.0.1 as subprocesses, each site with its own folder; the same rounds as the
simulation of those folders (``config.fed.client_dirs``), bitwise."""

import contextlib
import copy
import functools
import glob
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import fed_image_folders
from jaxseg import main
from jaxseg.errors import UserError
from jaxseg.flower import deploy as flower_deploy
from jaxseg.run import evaluate, skeleton
from jaxseg.run.checkpoint import Checkpoints
from jaxseg.run.experiment import Experiment


def _write_folder(base: str, count: int, seed: int) -> None:
  """``count`` 32x32 gray images of a bright disc, with their 0/255 masks."""
  rng, (yy, xx) = np.random.default_rng(seed), np.mgrid[:32, :32]
  for sub in ("images", "masks"):
    os.makedirs(os.path.join(base, sub), exist_ok=True)
  for i in range(count):
    cy, cx, r = rng.integers(8, 24), rng.integers(8, 24), rng.integers(3, 8)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    image = np.clip(rng.normal(90, 20, (32, 32)) + 80 * mask, 0, 255).astype(np.uint8)
    Image.fromarray(image).save(os.path.join(base, "images", f"{i:03d}.png"))
    Image.fromarray((mask * 255).astype(np.uint8)).save(os.path.join(base, "masks", f"{i:03d}.png"))


@pytest.fixture(scope="session")
def folders(tmp_path_factory):
  """Two sites' folders (all training images) and the server's (validation, test)."""
  root = tmp_path_factory.mktemp("flower_data")
  _write_folder(str(root / "site0" / "train"), 8, 0)
  _write_folder(str(root / "site1" / "train"), 8, 1)
  _write_folder(str(root / "server"), 8, 2)
  return [str(root / "site0"), str(root / "site1")], str(root / "server")


def _config(method: str, server: str, **fed) -> ml_collections.ConfigDict:
  """``configs/fed_image_folders.py:<method>,smoke`` on the server's folder."""
  config = fed_image_folders.get_config(f"{method},smoke")
  config.data.dir = server
  config.fed.update(round_timeout_s=240.0, **fed)
  return config


@pytest.fixture(scope="module")
def deployment(folders, tmp_path_factory):
  """``(address, {name: SuperNode process})`` of a local deployment of the two sites,
  for the module's tests that run one after another (the killed-site test stops
  site1: it runs after the FedWeP test). Started with a PATH that lacks this
  Python's folder (a venv not activated): the SuperLink and SuperNodes still find
  Flower's commands beside it."""
  sites, _ = folders
  venv = os.path.dirname(sys.executable)
  path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv)
  with contextlib.ExitStack() as stack:
    with pytest.MonkeyPatch.context() as patch:  # while the processes start
      patch.setenv("PATH", path)
      link = stack.enter_context(
        flower_deploy.local_deployment(str(tmp_path_factory.mktemp("flower")), sites)
      )
    yield link


def _train_lines(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [line for line in map(json.loads, f) if line["split"] == "train"]


def _global_model(workdir: str):
  exp = Experiment(skeleton.load_config(workdir))
  step, state, _ = Checkpoints(os.path.join(workdir, "checkpoints")).restore_usable(
    exp.abstract_state()
  )
  return step, jax.device_get(state.nets)


def _submit_in_background(config, workdir: str, address: str) -> threading.Thread:
  run = threading.Thread(target=flower_deploy.submit, args=(config, workdir, address))
  run.start()
  return run


def test_flower_fedwep_ends_with_the_simulations_global_model(folders, deployment, tmp_path, capfd):
  """FedWeP (label-at-client), 2 rounds over a local deployment (SuperLink, two
  SuperNodes), against the simulation of the same folders: the same global model bit
  for bit, the same training losses, and the arrays each round sends and returns are
  the bytes communication.json predicts (the download carries the server's two
  seeds). A two-network method over Flower (CPS) is checked in process below."""
  sites, server = folders
  config = _config("rwp", server)
  simulation = copy.deepcopy(config)
  simulation.fed.client_dirs = tuple(sites)
  simulated = main.train(simulation, str(tmp_path / "simulation"))
  workdir = str(tmp_path / "flower")
  _submit_in_background(config, workdir, deployment[0]).join(timeout=600)
  assert "2 clients (site, label_at_client), data flower" in capfd.readouterr().out
  step, nets = _global_model(workdir)
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(simulated.nets), nets)
  comm = json.load(open(os.path.join(workdir, "communication.json")))
  assert comm["down_bytes"] == comm["up_bytes"] + 8  # FedWeP's two seeds
  for line in _train_lines(workdir):
    assert (line["down_bytes"], line["up_bytes"]) == (comm["down_bytes"], comm["up_bytes"])
    assert line["sites"] == 2 and line["down_wire_bytes"] > 0
  losses = [x["loss"] for x in _train_lines(str(tmp_path / "simulation"))]
  assert [x["loss"] for x in _train_lines(workdir)] == losses


def test_flower_a_killed_site_does_not_stall_the_run(folders, deployment, tmp_path, capfd):
  """site1's SuperNode is stopped as the first round starts (the handshake done): the
  round aggregates site0 alone (min_fraction 0.5), says who was missing, and the run
  ends with its checkpoint."""
  _, server = folders
  address, nodes = deployment
  config = _config("supervised", server, min_fraction=0.5, rounds=1)
  config.train.eval_every = 1
  workdir = str(tmp_path / "run")
  run = _submit_in_background(config, workdir, address)
  deadline = time.time() + 300
  while not os.path.exists(os.path.join(workdir, "clients.md")) and time.time() < deadline:
    time.sleep(0.2)
  flower_deploy.stop(nodes["site1"])
  run.join(timeout=400)
  assert not run.is_alive()
  out = capfd.readouterr().out
  assert "round 1: no update from site1" in out and "aggregated 1 of 2 sites" in out, out
  assert [line["sites"] for line in _train_lines(workdir)] == [1]
  assert _global_model(workdir)[0] == 1


def test_flower_a_site_whose_data_cannot_be_read_answers_its_one_line_error(
  folders, tmp_path, capsys
):
  """A site with a corrupt image answers the handshake (its ClientApp, called here as
  its process would) with an Error naming the file, and prints that one line in its
  log; the server's handshake turns such answers into the run's one-line error."""
  from flwr.app import ConfigRecord, Context, Message, RecordDict
  from flwr.supercore.task_identity import TaskIdentity

  from jaxseg.flower import app as flower

  sites, server = folders
  bad = tmp_path / "bad"
  shutil.copytree(sites[0], bad)
  (bad / "train" / "images" / "003.png").write_bytes(b"not a png")
  exp = Experiment(_config("supervised", server, num_clients=1))
  TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
  plan = RecordDict({"plan": ConfigRecord({"config": flower.wire.encode_config(exp.config)})})
  query = Message(plan, dst_node_id=7, message_type="query")
  context = Context(1, 7, {"data-dir": str(bad), "site": "hospital_b"}, RecordDict(), {})
  reply = flower._query(query, context)
  assert reply.has_error() and "003.png" in reply.error.reason, reply.error.reason
  (line,) = capsys.readouterr().err.strip().splitlines()
  assert line.startswith("jaxseg site hospital_b: error: ") and "003.png" in line

  with pytest.raises(UserError, match=r"^site node 7: .*003\.png"):
    flower.server.connect(InProcessGrid({7: context}), exp, flower.wire.encode_config(exp.config))


class InProcessGrid:
  """The SuperLink, delivering each node's messages to its ClientApp in this process
  (with the node's context, as its SuperNode's process would)."""

  def __init__(self, contexts: dict):
    self.contexts, self.replies = contexts, {}

  def get_node_ids(self):
    return list(self.contexts)

  def push_messages(self, messages):
    from jaxseg.flower import app as flower

    for message in messages:
      message.metadata.__dict__["_message_id"] = message.object_id  # as Flower does
      handler = flower._query if message.metadata.message_type == "query" else flower._train
      context = self.contexts[message.metadata.dst_node_id]
      self.replies[message.object_id] = handler(message, context)
    return [m.object_id for m in messages]

  def pull_messages(self, ids):
    return [self.replies.pop(i) for i in ids]


def test_flower_volume_sites_train_as_the_simulation_of_their_folders(tmp_path):
  """Two sites holding msd folders (CT, other intensities, 1.25 mm voxels) and the
  server's (1 mm): the Flower round — the ServerApp's federation, each site's ClientApp
  in this process — ends a FedWeP round with the global model of the simulation of
  the same folders, bit for bit; the sites prepare their cases at the server's spacing
  with its CT statistics."""
  from flwr.app import Context, RecordDict
  from flwr.supercore.task_identity import TaskIdentity

  from configs import fedwep_hippocampus
  from jaxseg.flower import app as flower
  from jaxseg.run import federated
  from tests.test_volumes import _describe, _write_case

  rng = np.random.default_rng(0)

  def msd_folder(root, names, mean, spacing):
    for n in names:
      labels = np.zeros((8, 8, 8), np.uint8)
      labels[2:6, 2:6, rng.integers(1, 4) :][:, :, :3] = 1
      image = rng.normal(mean, 40, (8, 8, 8)) + 200 * labels
      _write_case(root, n, image.astype(np.float32), labels, np.diag([*spacing, 1]))
    _describe(root, names)

  server, sites = str(tmp_path / "server"), [str(tmp_path / f"site{i}") for i in range(2)]
  msd_folder(server, [f"s_{i}" for i in range(6)], 0, (1, 1, 1))
  for i, site in enumerate(sites):
    # 4 cases: half of each site's is a whole number (see docs/flower.md, "Same method")
    msd_folder(site, [f"h{i}_{k}" for k in range(4)], 100 * (i + 1), (1.25, 1.25, 1.25))
  config = fedwep_hippocampus.get_config("smoke")
  config.data.update(dir=server, cache_dir=str(tmp_path / "cache"))
  config.model.kwargs.widths = (4, 8)
  config.volume.patch_size = (8, 8, 8)
  config.fed.update(scenario="label_at_client", partition="site", rounds=1, local_steps=1, unroll=1)
  # (one round: the image sites' test above carries the global model across rounds)
  simulation = copy.deepcopy(config)
  simulation.fed.client_dirs = tuple(sites)
  simulated = main.train(simulation, str(tmp_path / "simulation"))

  TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
  contexts = {
    7 + i: Context(1, 7 + i, {"data-dir": site, "site": f"site{i}"}, RecordDict(), {})
    for i, site in enumerate(sites)
  }
  grid = InProcessGrid(contexts)
  workdir = str(tmp_path / "flower")
  federated.train(
    config, workdir, make_simulation=lambda exp: flower.server.federation(exp, grid, workdir)
  )
  step, nets = _global_model(workdir)
  assert step == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(simulated.nets), nets)
  plans = [json.load(open(p)) for p in glob.glob(f"{tmp_path}/cache/volumes/msd_*/plan.json")]
  assert len(plans) == 3  # the server's and each site's, prepared alike
  assert all(p["ct_statistics"] == plans[0]["ct_statistics"] for p in plans)
  assert all(p["target_spacing"] == [1.0, 1.0, 1.0] for p in plans)


def test_flower_sites_must_match_the_configs_clients(folders, tmp_path):
  sites, server = folders
  config = _config("supervised", server, num_clients=3)
  with pytest.raises(UserError, match=r"--sites: 2 folders for config.fed.num_clients=3"):
    flower_deploy.run(config, str(tmp_path), sites=sites)


def _certificates(folder, ca_name="jaxseg test CA", hosts=("localhost", "127.0.0.1")) -> str:
  """``folder/{ca.crt, server.pem, server.key}``: a CA and a server certificate it signed
  for ``hosts`` (what docs/flower.md makes with openssl)."""
  import datetime
  import ipaddress

  from cryptography import x509
  from cryptography.hazmat.primitives import hashes, serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  from cryptography.x509.oid import NameOID

  def certificate(name, key, issuer, issuer_key, ca, names=()):
    now = datetime.datetime.now(datetime.UTC)
    builder = x509.CertificateBuilder().subject_name(name).issuer_name(issuer)
    builder = builder.public_key(key.public_key()).serial_number(x509.random_serial_number())
    builder = builder.not_valid_before(now - datetime.timedelta(minutes=5))
    builder = builder.not_valid_after(now + datetime.timedelta(days=1))
    builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if names:
      builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())

  os.makedirs(folder, exist_ok=True)
  ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
  subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
  ca = certificate(subject, ca_key, subject, ca_key, True)
  names = [
    x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h) for h in hosts
  ]
  server = certificate(
    x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "superlink")]),
    key,
    subject,
    ca_key,
    False,
    names,
  )
  pem = serialization.Encoding.PEM
  for name, data in (
    ("ca.crt", ca.public_bytes(pem)),
    ("server.pem", server.public_bytes(pem)),
    (
      "server.key",
      key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    ),
  ):
    with open(os.path.join(folder, name), "wb") as f:
      f.write(data)
  return str(folder)


def _site_key(folder, name: str) -> str:
  """An ECDSA key pair in OpenSSH format (``ssh-keygen -t ecdsa``): ``folder/name``
  and ``folder/name.pub``."""
  from cryptography.hazmat.primitives import serialization
  from cryptography.hazmat.primitives.asymmetric import ec

  key, ssh = ec.generate_private_key(ec.SECP384R1()), serialization.Encoding.OpenSSH
  path = os.path.join(folder, name)
  os.makedirs(folder, exist_ok=True)
  with open(path, "wb") as f:
    f.write(
      key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
      )
    )
  with open(path + ".pub", "wb") as f:
    f.write(key.public_key().public_bytes(ssh, serialization.PublicFormat.OpenSSH))
  return path


def _jaxseg(*args, log=None, **kwargs):
  """``jaxseg ARGS`` as a user runs it: finished (``log`` None) or started, its output
  in ``log``, in a session of its own."""
  command = [os.path.join(os.path.dirname(sys.executable), "jaxseg"), *map(str, args)]
  if log is None:
    return subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
  with open(log, "w") as out:
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(path: str, text: str, timeout: float = 120.0) -> str:
  deadline = time.time() + timeout
  while time.time() < deadline:
    found = open(path).read() if os.path.exists(path) else ""
    if text in found:
      return found
    time.sleep(0.2)
  raise AssertionError(f"{text!r} not in {path} within {timeout:g} s:\n{found}")


def test_flower_security_only_operators_control_and_only_registered_sites_join(folders, tmp_path):
  """docs/flower.md's deployment on 127.0.0.1: ``jaxseg flower --serve`` (TLS,
  SuperNode authentication, the operator API on its own 127.0.0.1 port, the sites'
  Fleet API behind the gateway). The operator registers two sites' keys and their
  federation completes; an outsider holding ``ca.crt`` cannot register a key or submit
  a run through the sites' port; an unregistered key, plain HTTP and a client with
  another CA are refused; the gateway's log names each refusal."""
  sites, server = folders
  certificates = _certificates(tmp_path / "certs")
  ca = os.path.join(certificates, "ca.crt")
  keys = {name: _site_key(tmp_path / "keys", name) for name in ("site0", "site1", "rogue")}
  federation = tmp_path / "federation"
  public, operator = flower_deploy.free_port(), flower_deploy.free_port()
  gateway_log = federation / "flower" / "logs" / "gateway.txt"
  with contextlib.ExitStack() as stack:

    def start(*args, log):
      process = _jaxseg(*args, log=tmp_path / log)
      stack.callback(flower_deploy.stop, process)
      return process

    serve = ("flower", "--serve", f"127.0.0.1:{public}", "--certificates", certificates)
    start(*serve, "--operator_port", operator, "--workdir", federation, log="serve.txt")
    _wait_for(tmp_path / "serve.txt", "sites connect to")
    registered = _jaxseg(
      "flower", "--register", f"{keys['site0']}.pub,{keys['site1']}.pub", "--workdir", federation
    )
    assert registered.returncode == 0 and registered.stdout.count("registered successfully") == 2
    outsider = ("--superlink", f"127.0.0.1:{public}", "--root_certificates", ca)
    rogue = _jaxseg(
      "flower", "--register", f"{keys['rogue']}.pub", "--workdir", tmp_path, *outsider
    )
    assert rogue.returncode == 2 and "registered successfully" not in rogue.stdout
    config = _config("supervised", server, rounds=1)
    with pytest.raises(UserError, match="flwr run ended with exit status 1"):
      flower_deploy.submit(config, str(tmp_path / "outsider"), f"127.0.0.1:{public}", ca)
    with socket.create_connection(("127.0.0.1", public)) as plain:
      plain.sendall(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: x\r\n\r\n")
      assert plain.recv(100).startswith(b"HTTP/1.1 400")
    other_ca = ssl.create_default_context(
      cafile=os.path.join(_certificates(tmp_path / "other", "another CA"), "ca.crt")
    )
    with pytest.raises(ssl.SSLCertVerificationError):
      other_ca.wrap_socket(
        socket.create_connection(("127.0.0.1", public)), server_hostname="127.0.0.1"
      )
    for name, folder in (("site0", sites[0]), ("site1", sites[1]), ("rogue", sites[0])):
      start(
        "flower",
        "--site",
        name,
        "--sites",
        folder,
        "--key",
        keys[name],
        *outsider,
        "--workdir",
        tmp_path / "sites",
        log=f"{name}.txt",
      )
    workdir = str(tmp_path / "run")
    flower_deploy.submit(config, workdir, f"127.0.0.1:{operator}", ca)
    assert [line["sites"] for line in _train_lines(workdir)] == [2]
    log = _wait_for(gateway_log, "/v1/fleet/activate-node: the SuperLink answered 412")
  for refusal in (
    "POST /v1/control/register-node: not the Fleet API",
    "POST /v1/control/start-run: not the Fleet API",
    "plain HTTP on the TLS port",
    "TLS handshake failed (TLSV1_ALERT_UNKNOWN_CA)",
  ):
    assert refusal in log, log
  assert log.count("gateway: refused") == 5, log


def test_flower_security_the_gateway_passes_fleet_paths_only():
  from jaxseg.flower.gateway import allowed

  assert allowed("/v1/fleet/pull-messages") and allowed("/health")
  for path in (
    "/v1/control/start-run",
    "/v1/control/register-node",
    "/v1/runtime/pull-messages",
    "/v1/fleet/../control/start-run",
    "/v1/fleet/%2e%2e/control/start-run",
    "/v1/fleet//control",
    "/v1/fleet",
    "/V1/fleet/pull-messages",
  ):
    assert not allowed(path), path


def test_flower_security_commands_say_what_is_missing(tmp_path):
  def fails(match, **flags):
    options = dict.fromkeys(main.FLOWER_FLAGS) | flags
    with pytest.raises(UserError, match=match):
      flower_deploy.command(None, str(tmp_path), options)

  fails("--certificates is required", serve="0.0.0.0:9092")
  fails(r"--serve: expected HOST:PORT, found '9092'", serve="9092", certificates=str(tmp_path))
  fails(r"--certificates: .*ca.crt not found", serve="0.0.0.0:9092", certificates=str(tmp_path))
  fails("--register: no SuperLink connection", register=["site.pub"])
  fails("--key is required", site="a", sites=[str(tmp_path)], superlink="h:1")
  fails("give one of --serve, --register, --site", serve="h:1", site="a")


def _in_process_federation(config, sites, tmp_path) -> str:
  """Trains ``config`` over Flower with each site's ClientApp in this process (the
  ServerApp's federation, :class:`InProcessGrid`); returns the server's workdir."""
  from flwr.app import Context, RecordDict
  from flwr.supercore.task_identity import TaskIdentity

  from jaxseg.flower import app as flower
  from jaxseg.run import federated

  TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
  node = lambda i, site: {"data-dir": site, "site": f"site{i}", "cache-dir": f"{tmp_path}/c{i}"}  # noqa: E731
  contexts = {7 + i: Context(1, 7 + i, node(i, s), RecordDict(), {}) for i, s in enumerate(sites)}
  workdir = str(tmp_path / "flower")
  grid = InProcessGrid(contexts)
  federated.train(
    config, workdir, make_simulation=lambda exp: flower.server.federation(exp, grid, workdir)
  )
  return workdir


def test_flower_fedbn_with_dp_keeps_batchnorm_on_the_sites(folders, tmp_path):
  """FedBN + DP (clipping at the sites, noise at the server) over Flower, each site's
  ClientApp in this process: 2 rounds end with the simulation's global model bit for
  bit, each site's BatchNorm (kept in its cache folder, never sent) equal to what the
  simulated client kept, and replies that carry no BatchNorm; the simulation's eval
  scores every site's own model."""
  from flax import serialization

  sites, server = folders
  config = _config("supervised", server, algorithm="fedbn")
  config.fed.dp.update(clip="fixed", clip_norm=0.5, noise_multiplier=0.5)
  config.data.cache_dir = str(tmp_path / "cache")
  simulation = copy.deepcopy(config)
  simulation.fed.client_dirs = tuple(sites)
  simulated = jax.device_get(main.train(simulation, str(tmp_path / "simulation")))
  # Its eval scores the server's test split with each site's own model too.
  scores = evaluate.run(str(tmp_path / "simulation"))
  assert set(scores["sites"]) == {"site0", "site1"}
  local = [row["dice_local"] for row in scores["sites"].values()]
  assert scores["site_dice_mean"]["mean"] == pytest.approx(np.mean(local))

  workdir = _in_process_federation(config, sites, tmp_path)
  step, nets = _global_model(workdir)
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, simulated.nets, nets)
  lines = _train_lines(workdir)
  assert all(line["epsilon"] > 0 for line in lines) and lines[1]["epsilon"] > lines[0]["epsilon"]
  comm = json.load(open(os.path.join(workdir, "communication.json")))
  assert all(line["up_bytes"] == comm["up_bytes"] < comm["down_bytes"] for line in lines)
  for i in range(2):  # what each site kept is what the simulated client kept
    (path,) = glob.glob(f"{tmp_path}/c{i}/sites/fedbn_*_site{i}.msgpack")
    with open(path, "rb") as f:
      kept = serialization.msgpack_restore(f.read())
    mine = jax.tree.map(lambda x, i=i: x[i : i + 1], simulated.clients)
    jax.tree.map(np.testing.assert_array_equal, serialization.to_state_dict(mine), kept)


@pytest.mark.parametrize(
  "method,fed",
  [
    ("supervised", {"clients_per_round": 1, "compress.kind": "q8"}),
    ("cps", {"aggregator.name": "median", "compress.kind": "topk", "compress.fraction": 0.1}),
  ],
  ids=["one_of_two_sites_8bit", "cps_median_of_top_k"],
)
def test_flower_sampled_and_compressed_rounds_are_the_simulations(folders, tmp_path, method, fed):
  """Over Flower (each site's ClientApp in this process): ``clients_per_round`` 1 of 2
  trains the one site the simulation's draw picks; a compressed update travels as its
  bytes (8-bit levels and each tensor's two ends; top-k values and positions), the
  size communication.json states, and the server reads it back as the simulation
  does (the mean's weighted sum; the median's stacked rows): 2 rounds end with the
  simulation's global model bit for bit."""
  sites, server = folders
  config = _config("supervised", server)
  for key, value in fed.items():
    *path, name = key.split(".")
    section = functools.reduce(getattr, path, config.fed)
    assert name in section, key  # a setting, not a new key
    section[name] = value
  config.data.cache_dir = str(tmp_path / "cache")
  simulation = copy.deepcopy(config)
  simulation.fed.client_dirs = tuple(sites)
  simulated = jax.device_get(main.train(simulation, str(tmp_path / "simulation")))
  workdir = _in_process_federation(config, sites, tmp_path)
  step, nets = _global_model(workdir)
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, simulated.nets, nets)
  lines = _train_lines(workdir)
  assert [line["sites"] for line in lines] == [fed.get("clients_per_round", 2)] * 2
  comm = json.load(open(os.path.join(workdir, "communication.json")))
  assert all(line["up_bytes"] == comm["up_bytes"] < comm["down_bytes"] / 3 for line in lines)
  losses = [x["loss"] for x in _train_lines(str(tmp_path / "simulation"))]
  assert [x["loss"] for x in lines] == losses
