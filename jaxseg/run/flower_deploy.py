"""``jaxseg flower``: a federated config run over Flower's deployment runtime
(:mod:`jaxseg.run.flower` is the app it runs).

* ``--sites DIR0,DIR1,...``: a local deployment to try it — a SuperLink and one
  SuperNode per folder on 127.0.0.1 (free ports; logs in ``WORKDIR/flower/logs``),
  the run submitted with ``flwr run`` and followed to its end, then everything
  stopped. Sites are named ``site0``, ``site1``, … in the order given;
  ``--fractions`` gives each its labeled fraction.
* ``--superlink HOST:PORT``: submits the run to a running SuperLink (a real federation;
  ``--root_certificates CA.pem`` for TLS, insecure otherwise); ``--workdir`` is a folder
  on the SuperLink's machine.

The Flower app is a folder ``WORKDIR/flower/app`` holding only its ``pyproject.toml``:
its ServerApp and ClientApp are those of the installed jaxseg, so every machine needs
``pip install 'jaxseg[flower]'`` (Flower's runtime dependency installation is off).
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from jaxseg.errors import UserError

APP = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "jaxseg-federation"
version = "1.0.0"
description = "A jaxseg federated config over Flower (the app is jaxseg.run.flower)"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "jaxseg"

[tool.flwr.app.components]
serverapp = "jaxseg.run.flower:server_app"
clientapp = "jaxseg.run.flower:client_app"

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


def submit(config, workdir: str, superlink: str, root_certificates: str | None = None) -> None:
  """``flwr run`` of ``config`` on the SuperLink at ``superlink``, followed to its end."""
  from jaxseg.run.flower import encode_config  # noqa: PLC0415 (needs flwr)

  workdir = os.path.abspath(workdir)
  home = os.path.join(workdir, "flower", "home")
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
  error = os.path.join(workdir, "flower_error.txt")
  if os.path.exists(error):
    os.remove(error)
  run_config = f"config='{encode_config(config)}' workdir='{workdir}'"
  command = [tool("flwr"), "run", write_app(workdir), "jaxseg", "--run-config", run_config]
  done = subprocess.run([*command, "--stream"], env={**os.environ, "FLWR_HOME": home}, check=False)
  if os.path.exists(error):
    with open(error) as f:
      raise UserError(f.read().strip())
  if done.returncode:
    raise UserError(f"flwr run ended with exit status {done.returncode} (its output is above).")


def _start(command: list[str], log: str, home: str) -> subprocess.Popen:
  # A message's ClientApp starts within 0.5 s of its arrival (Flower's default: 1 s;
  # each poll is an HTTP request, so shorter costs the idle deployment CPU).
  # The SuperLink and SuperNodes start Flower's other commands (flower-superexec) by
  # name: those installed beside this Python come first, as if its venv were active.
  path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
  env = {**os.environ, "PATH": path, "FLWR_HOME": home, "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.5"}
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


def run(config, workdir: str, sites=None, fractions=None, superlink=None, certificates=None):
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
    return submit(config, workdir, superlink, certificates)
  with local_deployment(workdir, sites, [float(f) for f in fractions or ()] or None) as link:
    submit(config, workdir, link[0])
  shutil.rmtree(os.path.join(workdir, "flower", "home", "apps"), ignore_errors=True)
