"""``jaxseg flower``: a federated config run over Flower's deployment runtime
(:mod:`jaxseg.flower.app` is the app it runs).

* ``--sites DIR0,DIR1,...``: a local deployment to try it — a SuperLink and one
  SuperNode per folder on 127.0.0.1 (free ports; logs in ``WORKDIR/flower/logs``),
  the run submitted with ``flwr run`` and followed to its end, then everything
  stopped. Sites are named ``site0``, ``site1``, … in the order given;
  ``--fractions`` gives each its labeled fraction.
* ``--superlink HOST:PORT``: submits the run to a running SuperLink (a real federation;
  ``--root_certificates CA.pem`` for TLS, insecure otherwise); ``--workdir`` is a folder
  on the SuperLink's machine.

A real federation, secure by default (docs/flower.md): ``--serve HOST:PORT
--certificates DIR`` runs the SuperLink (TLS, SuperNode authentication, its state in
``WORKDIR/flower/superlink``) on 127.0.0.1:``--operator_port`` for the operators and
the Fleet-only gateway (:mod:`jaxseg.flower.gateway`) on ``HOST:PORT`` for the
sites; ``--register KEY.pub`` registers a site's key through the operators' connection
it wrote; ``--site NAME --sites DIR --key FILE --superlink HOST:PORT
--root_certificates CA`` starts that site's SuperNode (a free local port).

The Flower app is a folder ``WORKDIR/flower/app`` holding only its ``pyproject.toml``:
its ServerApp and ClientApp are those of the installed jaxseg, so every machine needs
``pip install 'jaxseg[flower]'`` (Flower's runtime dependency installation is off).
"""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from jaxseg.errors import UserError
from jaxseg.run import skeleton

APP = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "jaxseg-federation"
version = "1.0.0"
description = "A jaxseg federated config over Flower (the app is jaxseg.flower.app)"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "jaxseg"

[tool.flwr.app.components]
serverapp = "jaxseg.flower.app:server_app"
clientapp = "jaxseg.flower.app:client_app"

[tool.flwr.app.config]
config = ""
workdir = ""
"""


def tool(name: str) -> str:
  """A Flower command installed beside this Python (``flwr``, ``flower-superlink``…)."""
  path = os.path.join(os.path.dirname(sys.executable), name)
  if not os.path.exists(path):
    raise UserError(f"{name} not found: install Flower with `pip install -e '.[flower]'`.")
  return path


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def write_app(workdir: str) -> str:
  app = os.path.join(workdir, "flower", "app")
  os.makedirs(app, exist_ok=True)
  with open(os.path.join(app, "pyproject.toml"), "w") as f:
    f.write(APP)
  return app


def home_of(workdir: str) -> str:
  """``WORKDIR/flower/home``: the ``FLWR_HOME`` holding the connection ``jaxseg``."""
  return os.path.join(os.path.abspath(workdir), "flower", "home")


def connection(workdir: str, superlink: str, root_certificates: str | None) -> str:
  """Writes the ``flwr`` connection ``jaxseg`` to ``superlink`` into
  ``WORKDIR/flower/home/config.toml``; returns that ``FLWR_HOME``."""
  home = home_of(workdir)
  os.makedirs(home, exist_ok=True)
  security = (
    f'root-certificates = "{os.path.abspath(root_certificates)}"'
    if root_certificates
    else "insecure = true"
  )
  with open(os.path.join(home, "config.toml"), "w") as f:
    f.write(
      f'[superlink]\ndefault = "jaxseg"\n\n[superlink.jaxseg]\naddress = "{superlink}"\n'
      f"{security}\n"
    )
  return home


# Flower's own log lines (``INFO :``, ``DEBUG:flwr:``, after their colour codes), shown
# only with --verbose; its warnings, errors and the run's own output always.
FLOWER_LOG = re.compile(r"(INFO|DEBUG)\s*:")
COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def _relay(stream, verbose: bool) -> None:
  for line in stream:
    if not verbose:
      line = COLOUR.sub("", line)
      if FLOWER_LOG.match(line):
        continue
    sys.stdout.write(line)
    sys.stdout.flush()


def submit(config, workdir, superlink, root_certificates=None, verbose=False) -> None:
  """``flwr run`` of ``config`` on the SuperLink at ``superlink``, followed to its end
  (Flower's INFO and DEBUG lines only with ``verbose``)."""
  from jaxseg.flower.wire import encode_config  # noqa: PLC0415 (needs flwr)

  workdir = os.path.abspath(workdir)
  home = connection(workdir, superlink, root_certificates)
  error = os.path.join(workdir, "flower_error.txt")
  if os.path.exists(error):
    os.remove(error)
  run_config = f"config='{encode_config(config)}' workdir='{workdir}'"
  command = [tool("flwr"), "run", write_app(workdir), "jaxseg", "--run-config", run_config]
  env = {**os.environ, "FLWR_HOME": home}
  with subprocess.Popen(
    [*command, "--stream"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  ) as done:
    _relay(done.stdout, verbose)
  if os.path.exists(error):
    with open(error) as f:
      raise UserError(f.read().strip())
  if done.returncode:
    raise UserError(f"flwr run ended with exit status {done.returncode} (its output is above).")


def _environment(home: str) -> dict:
  # A message's ClientApp starts within 0.5 s of its arrival (Flower's default: 1 s;
  # each poll is an HTTP request, so shorter costs the idle deployment CPU).
  # The SuperLink and SuperNodes start Flower's other commands (flower-superexec) by
  # name: those installed beside this Python come first, as if its venv were active.
  path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
  env = {**os.environ, "PATH": path, "FLWR_HOME": home, "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.5"}
  # Flower's legacy gRPC Fleet and Control servers listen on 0.0.0.0:9092 / :9093 when
  # these are set (flwr/superlink/cli/flower_superlink.py:SuperLinkLifespan.startup):
  # a way around the gateway, never wanted here.
  for name in ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API"):
    env.pop(name, None)
  return env


def _start(command: list[str], log: str, home: str) -> subprocess.Popen:
  env = _environment(home)
  with open(log, "w") as out:
    return subprocess.Popen(
      command,
      stdout=out,
      stderr=subprocess.STDOUT,
      env=env,
      start_new_session=True,  # stopped with its children (the ClientApp processes)
    )


def stop(process: subprocess.Popen) -> None:
  with contextlib.suppress(ProcessLookupError):
    os.killpg(process.pid, signal.SIGTERM)
  try:
    process.wait(timeout=10)
  except subprocess.TimeoutExpired:
    with contextlib.suppress(ProcessLookupError):
      os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def wait_for_port(port: int, process: subprocess.Popen, log: str, timeout: float = 60.0) -> None:
  """Returns once 127.0.0.1:``port`` accepts connections (``process`` is listening)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if process.poll() is not None:
      raise UserError(f"the SuperLink exited with status {process.returncode}; see {log}.")
    with socket.socket() as s:
      if s.connect_ex(("127.0.0.1", port)) == 0:
        return
    time.sleep(0.2)
  raise UserError(f"the SuperLink did not open port {port} within {timeout:g} s; see {log}.")


def node_config(folder: str, name: str, fraction: float | None) -> str:
  items = [f"data-dir='{os.path.abspath(folder)}'", f"site='{name}'"]
  if fraction is not None:
    items.append(f"labeled-fraction={fraction}")
  return " ".join(items)


@contextlib.contextmanager
def local_deployment(workdir: str, sites: list[str], fractions=None):
  """A SuperLink and one SuperNode per folder of ``sites`` on 127.0.0.1; yields the
  SuperLink's address and ``{name: SuperNode process}``; stops them all on exit."""
  for folder in sites:
    if not os.path.isdir(folder):
      raise UserError(f"--sites: {folder} is not a folder.")
  fractions = fractions or [None] * len(sites)
  root = os.path.abspath(os.path.join(workdir, "flower"))
  logs = os.path.join(root, "logs")
  os.makedirs(logs, exist_ok=True)
  port = free_port()
  link = [tool("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port)]
  link += ["--disable-runtime-dependency-installation"]  # state in memory: a try-out
  processes = [_start(link, os.path.join(logs, "superlink.txt"), os.path.join(root, "superlink"))]
  nodes = {}
  try:
    wait_for_port(port, processes[0], os.path.join(logs, "superlink.txt"))
    for i, (folder, fraction) in enumerate(zip(sites, fractions, strict=True)):
      name = f"site{i}"
      node = [tool("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}"]
      node += ["--port", str(free_port()), "--node-config", node_config(folder, name, fraction)]
      nodes[name] = _start(node, os.path.join(logs, f"{name}.txt"), os.path.join(root, name))
      processes.append(nodes[name])
    yield f"127.0.0.1:{port}", nodes
  finally:
    for process in reversed(processes):
      stop(process)


CERTIFICATES = ("ca.crt", "server.pem", "server.key")  # --certificates DIR holds these
OPERATOR_PORT = 9093


def address(value: str, flag: str) -> tuple[str, int]:
  host, colon, port = value.rpartition(":")
  if not colon or not host or not port.isdigit():
    raise UserError(f"--{flag}: expected HOST:PORT, found {value!r}.")
  return host, int(port)


def _file(path: str, flag: str, what: str) -> str:
  if not os.path.isfile(path):
    raise UserError(f"--{flag}: {path} not found ({what}; docs/flower.md).")
  return os.path.abspath(path)


def serve(workdir: str, public: str, certificates: str, operator_port: int = OPERATOR_PORT):
  """``jaxseg flower --serve HOST:PORT``: the SuperLink of a real federation (TLS,
  SuperNode authentication, its state in ``WORKDIR/flower/superlink/state.db``) on
  127.0.0.1:``operator_port`` — the operators' address, written as the connection
  ``jaxseg`` of ``WORKDIR/flower/home`` — and the Fleet-only gateway on ``public``
  for the sites, in the foreground until interrupted; refusals are printed and
  appended to ``WORKDIR/flower/logs/gateway.txt``."""
  from jaxseg.flower import gateway as flower_gateway  # noqa: PLC0415 (needs flwr's httpx)

  host, port = address(public, "serve")
  ca, cert, key = (
    _file(os.path.join(certificates, name), "certificates", "the CA and the SuperLink's own")
    for name in CERTIFICATES
  )
  with socket.socket() as s:
    if s.connect_ex(("127.0.0.1", operator_port)) == 0:
      raise UserError(f"--operator_port: 127.0.0.1:{operator_port} is in use; pick another.")
  root = os.path.abspath(os.path.join(workdir, "flower"))
  for folder in ("logs", "superlink"):
    os.makedirs(os.path.join(root, folder), exist_ok=True)
  link = [tool("flower-superlink"), "--ssl-ca-certfile", ca, "--ssl-certfile", cert]
  link += ["--ssl-keyfile", key, "--enable-supernode-auth", "--host", "127.0.0.1"]
  link += ["--port", str(operator_port), "--disable-runtime-dependency-installation"]
  link += ["--database", os.path.join(root, "superlink", "state.db")]
  log = os.path.join(root, "logs", "superlink.txt")
  process = _start(link, log, os.path.join(root, "superlink"))
  signal.signal(signal.SIGTERM, signal.default_int_handler)  # stopped as by Ctrl-C
  try:
    wait_for_port(operator_port, process, log)
    connection(workdir, f"127.0.0.1:{operator_port}", ca)
    with open(os.path.join(root, "logs", "gateway.txt"), "a") as out:

      def note(line: str) -> None:
        print(line, flush=True)
        print(line, file=out, flush=True)

      gateway = flower_gateway.Gateway(operator_port, cert, key, ca, note)
      ready = (
        f"jaxseg flower: sites connect to {host}:{port} (Fleet API only); operators on this "
        f"machine use 127.0.0.1:{operator_port} (FLWR_HOME={home_of(workdir)}); "
        f"SuperLink log {log}"
      )
      with contextlib.suppress(KeyboardInterrupt):
        flower_gateway.serve(host, port, gateway, ready=lambda: print(ready, flush=True))
  finally:
    stop(process)


def register(workdir: str, keys: list[str], superlink=None, root_certificates=None) -> None:
  """``jaxseg flower --register KEY.pub,...``: registers sites' SuperNode keys with
  ``flwr supernode register`` over the operators' connection — the one ``--serve``
  wrote into ``WORKDIR/flower/home``, or ``--superlink`` (127.0.0.1:PORT on the
  SuperLink's machine) with ``--root_certificates``."""
  home = home_of(workdir)
  if superlink:
    connection(workdir, superlink, root_certificates)
  elif not os.path.exists(os.path.join(home, "config.toml")):
    raise UserError(
      f"--register: no SuperLink connection in {home}: give the --workdir of "
      "`jaxseg flower --serve`, or --superlink 127.0.0.1:PORT --root_certificates CA."
    )
  for key in keys:
    key = _file(key, "register", "a site's public key, KEY.pub")
    command = [tool("flwr"), "supernode", "register", key, "jaxseg"]
    done = subprocess.run(command, env=_environment(home), check=False)
    if done.returncode:
      raise UserError(f"flwr supernode register {key} ended with exit status {done.returncode}.")


def join(workdir, name, folder, superlink, root_certificates, key, fraction=None):
  """``jaxseg flower --site NAME``: this site's SuperNode, authenticated by the private
  ``key`` (its ``.pub`` registered by an operator), on the public ``superlink`` over
  TLS checked against ``root_certificates``, serving ``folder``; its local API on a
  free port (several sites on one machine), its state in ``WORKDIR/flower/NAME``. The
  process becomes the SuperNode (``exec``)."""
  if not os.path.isdir(folder):
    raise UserError(f"--sites: the site's data folder {folder} is not a folder.")
  address(superlink, "superlink")
  ca = _file(root_certificates, "root_certificates", "the federation's ca.crt")
  key = _file(key, "key", "this site's private key")
  home = os.path.join(os.path.abspath(workdir), "flower", name)
  os.makedirs(home, exist_ok=True)
  node = [tool("flower-supernode"), "--superlink", superlink, "--root-certificates", ca]
  node += ["--auth-supernode-private-key", key, "--port", str(free_port())]
  node += ["--node-config", node_config(folder, name, fraction)]
  os.execve(node[0], node, _environment(home))


def run(
  config, workdir, sites=None, fractions=None, superlink=None, certificates=None, verbose=False
):
  """``jaxseg flower``: see the module docstring."""
  if bool(sites) == bool(superlink):
    raise UserError("jaxseg flower: give either --sites (a local try-out) or --superlink.")
  if fractions and len(fractions) != len(sites or ()):
    raise UserError(f"--fractions: {len(fractions)} values for {len(sites or ())} sites.")
  if sites and len(sites) != config.fed.num_clients:
    raise UserError(
      f"--sites: {len(sites)} folders for config.fed.num_clients={config.fed.num_clients}; "
      f"set --config.fed.num_clients={len(sites)}."
    )
  if superlink:
    return submit(config, workdir, superlink, certificates, verbose)
  with local_deployment(workdir, sites, [float(f) for f in fractions or ()] or None) as link:
    submit(config, workdir, link[0], verbose=verbose)
  shutil.rmtree(os.path.join(home_of(workdir), "apps"), ignore_errors=True)


def command(config, workdir: str, flags: dict) -> None:
  """``jaxseg flower`` with its flags (``--serve``, ``--register``, ``--site`` or a
  submission: the module docstring)."""
  if sum(map(bool, (flags["serve"], flags["register"], flags["site"]))) > 1:
    raise UserError("jaxseg flower: give one of --serve, --register, --site.")
  fractions = flags["fractions"]
  if flags["serve"]:
    if not flags["certificates"]:
      raise UserError("jaxseg flower --serve: --certificates is required.")
    return serve(workdir, flags["serve"], flags["certificates"], flags["operator_port"])
  if flags["register"]:
    return register(workdir, flags["register"], flags["superlink"], flags["root_certificates"])
  if flags["site"]:
    for name in ("sites", "key", "superlink", "root_certificates"):
      if not flags[name]:
        raise UserError(f"jaxseg flower --site: --{name} is required.")
    if len(flags["sites"]) != 1 or len(fractions or ()) > 1:
      raise UserError("jaxseg flower --site: --sites (and --fractions) take this site's one value.")
    fraction = float(fractions[0]) if fractions else None
    return join(
      workdir,
      flags["site"],
      flags["sites"][0],
      flags["superlink"],
      flags["root_certificates"],
      flags["key"],
      fraction,
    )
  before = skeleton.validations(workdir)
  run(
    config, workdir, flags["sites"], fractions, flags["superlink"], flags["root_certificates"],
    flags["verbose"],
  )  # fmt: skip
  print(skeleton.summary(workdir, before))
