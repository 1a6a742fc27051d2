"""TLS for every listener and every client of a block (``--tls-cert``, ``--tls-key``,
``--tls-ca``).

- A process with a certificate and key serves TLS: gRPC and its HTTP ports.
- A process with a CA bundle verifies its peers with it: as a client (executor ->
  instance links, executor -> instance /stats, sidecars -> executor, the ``aios-fast``
  commands) it speaks TLS and checks the server's certificate; as a server it asks
  every client for a certificate signed by that CA (mutual TLS), and presents its own
  certificate when it is the client.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from .errors import AiosFastError

__all__ = ["TLS", "add_tls_arguments"]


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AiosFastError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None


def add_tls_arguments(parser, client_only: bool = False) -> None:
    """--tls-cert, --tls-key and --tls-ca, as every aios-fast command takes them."""
    serve = "present it to the server (mutual TLS)" if client_only else "serve TLS"
    parser.add_argument("--tls-cert", default="", help=f"PEM certificate: {serve}")
    parser.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    parser.add_argument("--tls-ca", default="", help="PEM CA bundle: check peers with it "
                        "(TLS to them; mutual TLS from clients)")  # fmt: skip


@dataclass(frozen=True)
class TLS:
    cert: str = ""  # PEM certificate chain this process presents
    key: str = ""  # its private key
    ca: str = ""  # PEM CA bundle peers are checked against (mutual TLS when serving)

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise AiosFastError("--tls-cert and --tls-key go together")
        for path, what in ((self.cert, "certificate"), (self.key, "key"), (self.ca, "CA")):
            if path:
                _read(path, what)

    @classmethod
    def from_options(cls, opts) -> TLS:
        """From the options ``add_tls_arguments`` added."""
        return cls(opts.tls_cert, opts.tls_key, opts.tls_ca)

    @property
    def serving(self) -> bool:
        """Listeners speak TLS."""
        return bool(self.cert)

    @property
    def client(self) -> bool:
        """Calls to peers speak TLS (and check them against the CA)."""
        return bool(self.ca)

    @property
    def scheme(self) -> str:
        return "https" if self.client else "http"

    # ------------------------------------------------------------------ gRPC

    def server_credentials(self) -> grpc.ServerCredentials:
        pair = (_read(self.key, "key"), _read(self.cert, "certificate"))
        ca = _read(self.ca, "CA") if self.ca else None
        return grpc.ssl_server_credentials([pair], root_certificates=ca,
                                           require_client_auth=ca is not None)  # fmt: skip

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "CA") if self.ca else None,
            private_key=_read(self.key, "key") if self.key else None,
            certificate_chain=_read(self.cert, "certificate") if self.cert else None,
        )

    def bind(self, server, address: str) -> int:
        """Add ``address`` to a grpc server, with TLS when serving it; OSError (one line)
        when it cannot be bound."""
        try:
            if self.serving:
                port = server.add_secure_port(address, self.server_credentials())
            else:
                port = server.add_insecure_port(address)
        except RuntimeError:  # grpc's "Failed to bind to address ..."
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on {address}: the port is taken or not ours")
        return port

    def aio_channel(self, target: str, options=None):
        if self.client:
            return grpc.aio.secure_channel(target, self.channel_credentials(), options=options)
        return grpc.aio.insecure_channel(target, options=options)

    def channel(self, target: str, options=None):
        if self.client:
            return grpc.secure_channel(target, self.channel_credentials(), options=options)
        return grpc.insecure_channel(target, options=options)

    # ------------------------------------------------------------------ HTTP

    def server_context(self) -> ssl.SSLContext | None:
        if not self.serving:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        if self.ca:
            ctx.load_verify_locations(self.ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_context(self) -> ssl.SSLContext | None:
        if not self.client:
            return None
        ctx = ssl.create_default_context(cafile=self.ca)
        if self.cert:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx
