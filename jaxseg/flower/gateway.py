"""The sites' door to a SuperLink: a TLS gateway that forwards Flower's Fleet API only.

Flower 1.42 serves its three APIs on one HTTPS port — Fleet (``/v1/fleet/…``: the
SuperNodes), Control (``/v1/control/…``: submitting runs, registering SuperNode keys)
and Runtime (``/v1/runtime/…``: the ServerApp's process) — and the open-source
SuperLink authenticates no operator (its account authentication is an enterprise
plugin, ``flwr/superlink/config_loader.py:load_control_authn_plugin``). Whoever
reaches that port and holds ``ca.crt`` can therefore register a key of their own and
submit an app that runs with the SuperLink's rights. ``jaxseg flower --serve``
keeps the SuperLink on 127.0.0.1 and puts this gateway on the public address: it
terminates TLS with the SuperLink's own certificate, passes ``/v1/fleet/…`` and
``/health`` through to the SuperLink, and refuses everything else with 403. Each
refusal is one log line naming the peer and the reason: plain HTTP on the TLS port,
a failed TLS handshake (a wrong CA, no certificate check), a path outside the Fleet
API, or an answer of 4xx from the SuperLink (an unregistered SuperNode key).

HTTP/1.1 (h11, what Flower's ``httpx`` clients speak), keep-alive connections; a
refused request is answered before its body is read, a Fleet request's body is
buffered (a protobuf message) and the SuperLink's answer streamed back.
"""

import asyncio
import datetime
import re
import ssl

import h11
import httpx

from jaxseg.errors import UserError

# A Fleet endpoint's path, letters and dashes only: no dot segments, no %-escapes.
FLEET = re.compile(r"/v1/fleet/[a-z-]+")
HEALTH = "/health"
HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"host", b"content-length", b"upgrade"}
TLS_HANDSHAKE = 0x16  # the first byte of a TLS ClientHello record


def allowed(path: str) -> bool:
  """Whether a request for ``path`` (no query) may reach the SuperLink from outside."""
  return path == HEALTH or FLEET.fullmatch(path) is not None


class Gateway:
  """Forwards the Fleet API from a public TLS address to the SuperLink on
  127.0.0.1:``upstream_port`` (its TLS checked against ``ca``); ``log(line)`` takes
  each refusal."""

  def __init__(self, upstream_port: int, certfile: str, keyfile: str, ca: str, log):
    self.server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    self.server_tls.load_cert_chain(certfile, keyfile)
    upstream_tls = ssl.create_default_context(cafile=ca)
    self.client = httpx.AsyncClient(
      base_url=f"https://127.0.0.1:{upstream_port}", verify=upstream_tls, timeout=None
    )
    self.log = log

  def note(self, peer, message: str) -> None:
    when = datetime.datetime.now().isoformat(timespec="seconds")
    self.log(f"{when} gateway: refused {peer[0]}:{peer[1]}: {message}")

  async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    peer = writer.get_extra_info("peername")[:2]
    try:
      first = await reader.read(1)  # one byte: TLS or not (StreamReader keeps nothing back)
      if not first:
        return
      if first[0] != TLS_HANDSHAKE:
        self.note(peer, "plain HTTP on the TLS port (sites connect with --root-certificates)")
        writer.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\nTLS required\n")
        await writer.drain()
        return
      stream = await self.start_tls(reader, writer, first, peer)
      if stream is not None:
        await self.serve(stream, peer)
    except (ConnectionError, asyncio.IncompleteReadError):
      pass
    finally:
      writer.close()

  async def start_tls(self, reader, writer, first: bytes, peer):
    """TLS over the connection whose first byte was already read: a memory pipe
    between the socket and an :class:`ssl.SSLObject`."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = self.server_tls.wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(first)
    while True:
      try:
        tls.do_handshake()
        break
      except ssl.SSLWantReadError:
        writer.write(outgoing.read())
        data = await reader.read(65536)
        if not data:
          self.note(peer, "closed the connection during the TLS handshake")
          return None
        incoming.write(data)
      except ssl.SSLError as error:
        writer.write(outgoing.read())
        self.note(peer, f"TLS handshake failed ({error.reason or error})")
        return None
    writer.write(outgoing.read())
    return TlsStream(reader, writer, tls, incoming, outgoing)

  async def serve(self, stream, peer) -> None:
    conn = h11.Connection(h11.SERVER)
    while True:
      request = await self.next_event(conn, stream)
      if not isinstance(request, h11.Request):  # closed, or not HTTP
        return
      target = request.target.decode("latin-1")
      path = target.split("?", 1)[0]
      if not allowed(path):  # refused before its body is read
        self.note(
          peer, f"{request.method.decode()} {path}: not the Fleet API (operators: 127.0.0.1)"
        )
        await self.answer(conn, stream, 403, b"forbidden: only the Fleet API is public\n")
        return
      body = bytearray()
      while not isinstance(part := await self.next_event(conn, stream), h11.EndOfMessage):
        if not isinstance(part, h11.Data):
          return
        body += part.data
      await self.forward(conn, stream, request, target, bytes(body), peer)
      if conn.our_state is h11.MUST_CLOSE:
        return
      conn.start_next_cycle()

  async def next_event(self, conn, stream):
    while True:
      event = conn.next_event()
      if event is h11.NEED_DATA:
        data = await stream.read()
        conn.receive_data(data)
        continue
      return event

  async def answer(self, conn, stream, status: int, body: bytes) -> None:
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"text/plain")]
    headers.append((b"connection", b"close"))
    await stream.write(conn.send(h11.Response(status_code=status, headers=headers)))
    await stream.write(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))

  async def forward(self, conn, stream, request, target: str, body: bytes, peer) -> None:
    headers = [(k, v) for k, v in request.headers if k.lower() not in HOP]
    upstream = self.client.build_request(
      request.method.decode(), target, headers=headers, content=body
    )
    try:
      response = await self.client.send(upstream, stream=True)
    except httpx.HTTPError as error:
      self.note(peer, f"{target}: the SuperLink did not answer ({error})")
      await self.answer(conn, stream, 502, b"the SuperLink did not answer\n")
      return
    try:
      out = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP]
      out.append((b"transfer-encoding", b"chunked"))
      await stream.write(conn.send(h11.Response(status_code=response.status_code, headers=out)))
      refused = bytearray()
      async for chunk in response.aiter_raw():
        await stream.write(conn.send(h11.Data(data=chunk)))
        if 400 <= response.status_code < 500 and len(refused) < 200:
          refused += chunk
      await stream.write(conn.send(h11.EndOfMessage()))
    finally:
      await response.aclose()
    if refused:
      detail = " ".join(refused.decode("utf-8", "replace").split())[:200]
      self.note(peer, f"{target}: the SuperLink answered {response.status_code}: {detail}")


class TlsStream:
  """Reads and writes plaintext over an :class:`ssl.SSLObject` on an asyncio stream."""

  def __init__(self, reader, writer, tls, incoming, outgoing):
    self.reader, self.writer, self.tls = reader, writer, tls
    self.incoming, self.outgoing = incoming, outgoing

  async def read(self) -> bytes:
    while True:
      try:
        return self.tls.read(65536)
      except ssl.SSLWantReadError:
        data = await self.reader.read(65536)
        if not data:
          return b""
        self.incoming.write(data)
      except ssl.SSLZeroReturnError:
        return b""

  async def write(self, data: bytes) -> None:
    self.tls.write(data)
    self.writer.write(self.outgoing.read())
    await self.writer.drain()


async def _main(host: str, port: int, gateway: Gateway, ready) -> None:
  try:
    server = await asyncio.start_server(gateway.connection, host, port)
  except OSError as error:
    raise UserError(f"--serve: cannot listen on {host}:{port} ({error.strerror}).") from None
  ready()
  async with server:
    await server.serve_forever()


def serve(host: str, port: int, gateway: Gateway, ready=lambda: None) -> None:
  """Runs the gateway on ``host:port`` until interrupted; ``ready()`` once it listens."""
  asyncio.run(_main(host, port, gateway, ready))
