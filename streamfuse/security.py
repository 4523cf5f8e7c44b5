"""CURVE authentication for TCP that leaves the box: ZeroMQ CURVE + ZAP, through pyzmq's
``zmq.auth``.

- A publisher (a sensor, the engine's results) is a CURVE server: its secret key file, and
  optionally a folder of the public keys of the subscribers it lets in (any key otherwise).
  A refused key is counted (:attr:`Gate.refused`), never an exception.
- A subscriber (the engine, ``Client``, ``subscribe``, ``record``) is a CURVE client: the
  server's public key file, and its own key pair (a fresh one where none is configured).
- Key files are ``zmq.auth`` certificates (``streamfuse keys generate DIR NAME`` writes
  ``NAME.key`` and ``NAME.key_secret``), so other ZeroMQ tools read them.
- A socket bound to or connecting beyond loopback without CURVE is refused at start unless
  the config says ``security.insecure: true``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import ConfigError

__all__ = [
    "CurveClient",
    "CurveServer",
    "Gate",
    "generate_keys",
    "leaves_box",
    "load_public",
    "load_secret",
    "tcp_address",
]

log = logging.getLogger(__name__)

ZAP_DOMAIN = "streamfuse"


def tcp_address(endpoint: str) -> tuple[str, str] | None:
    """(host, port) of a ``tcp://HOST:PORT`` endpoint, IPv6 brackets taken off; None for
    another scheme. Either may be empty where the endpoint is malformed."""
    if not endpoint.startswith("tcp://"):
        return None
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    return host.strip("[]"), port


def leaves_box(endpoint: str) -> bool:
    """Whether a tcp:// endpoint binds or connects beyond loopback (ipc:// never does)."""
    address = tcp_address(endpoint)
    if address is None:
        return False
    host = address[0]
    if host in ("localhost", "ip6-localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a name or an interface ("*", "eth0"): may reach other boxes


def generate_keys(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` into ``directory``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


def load_public(path: str, field: str) -> bytes:
    """A public key from a key file (public or secret), or a one-line error naming it."""
    public, _ = _load(path, field)
    return public


def load_secret(path: str, field: str) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file, or a one-line error naming it."""
    public, secret = _load(path, field)
    if secret is None:
        raise ConfigError(field, f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def _load(path: str, field: str) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(field, f"{path}: not a readable ZeroMQ key file ({exc})") from None
    if public is None:
        raise ConfigError(field, f"{path}: no public key in it")
    return public, secret


@dataclass(frozen=True)
class CurveServer:
    public: bytes
    secret: bytes
    authorized: str | None = None
    """A folder of the public keys let in (``.key`` files); None: any key."""


@dataclass(frozen=True)
class CurveClient:
    server: bytes
    public: bytes
    secret: bytes

    @classmethod
    def to(cls, server_key_file: str, own_secret_file: str | None, field: str) -> CurveClient:
        """A client of the server whose public key is in ``server_key_file``; with its own
        key pair from ``own_secret_file``, else a fresh one (a server that lets any in)."""
        server = load_public(server_key_file, field)
        if own_secret_file:
            public, secret = load_secret(own_secret_file, "security.key")
        else:
            public, secret = zmq.curve_keypair()
        return cls(server, public, secret)

    def apply(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


class Gate:
    """The ZAP handler of one publisher's context: lets in the authorized keys (or any),
    counts what it refuses."""

    def __init__(self, ctx: zmq.Context, server: CurveServer) -> None:
        self.refused = 0
        self._lock = threading.Lock()
        # The daemon's own processes (supervisor, recorder) hold its key: always let in.
        own = zmq.curve_public(server.secret)
        self._keys = None if server.authorized is None else _keys_in(server.authorized) | {own}
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("streamfuse.zap"))
        self._auth.start()
        self._auth.configure_curve_callback(ZAP_DOMAIN, credentials_provider=self)

    def callback(self, domain: str, z85: bytes) -> bool:
        """zmq.auth's credentials-provider hook: is this client's public key (z85) let in?"""
        if self._keys is None or z85 in self._keys:
            return True
        with self._lock:
            self.refused += 1
            first = self.refused == 1
        if first:
            log.warning("refused a subscriber whose key is not authorized (%s)", z85.decode())
        return False

    def stop(self) -> None:
        self._auth.stop()


def _keys_in(folder: str) -> set[bytes]:
    if not Path(folder).is_dir():
        raise ConfigError("security.authorized_keys", f"{folder} is not a folder of .key files")
    return set(zmq.auth.load_certificates(folder))


def serve_curve(sock: zmq.Socket, server: CurveServer) -> None:
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, server.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, server.secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
