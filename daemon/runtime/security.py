"""How nodes and clients prove who they are: the cluster secret and TLS.

Two independent layers guard the peer port, and either or both may be configured:

- ``auth.secret_file``: a secret shared by every member. The peer hello becomes a mutual
  challenge-response (``daemon.runtime.transport``): each side sends a fresh random nonce, and each
  proves knowledge of the secret with an HMAC-SHA256 over both nonces, the cluster name, both
  node ids and its role in the exchange (so an answer can be neither replayed on another
  connection nor reflected back as the other side's). The secret itself never crosses the wire,
  and proofs are compared in constant time. It authenticates the two ends when the connection
  opens; it neither encrypts nor protects what follows, which is what TLS is for.
- ``tls``: mutual TLS. Each side presents a certificate that must chain to the cluster's CA
  (``tls.ca``); the dialer also checks that the certificate names the host it dialed.

``client_tls`` puts the client port behind TLS; with ``client_tls.ca`` clients must present a
certificate from that CA.

``check_files`` opens every file the configuration names and raises ``ConfigError`` naming the
key and the path of the first one that cannot be used; ``paxosd check-config`` calls it. A
starting node makes the same checks as it loads the files (``load_secret`` and ``peer_contexts``
in the transport, ``server_context`` in the client port).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import ssl
import stat
from pathlib import Path

from daemon.runtime.config import Config, ConfigError, TLSFiles

__all__ = [
    "MIN_SECRET_BYTES",
    "NONCE_BYTES",
    "ROLE_ACCEPTOR",
    "ROLE_DIALER",
    "check_files",
    "client_context",
    "load_secret",
    "peer_contexts",
    "prove",
    "server_context",
    "verify",
]

NONCE_BYTES = 32
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 4096
# Domain separation: a proof made for this exchange is useless anywhere else.
_PROOF_LABEL = b"paxosd peer authentication v1\0"
ROLE_DIALER = b"dialer"
ROLE_ACCEPTOR = b"acceptor"


# ---------------------------------------------------------------------------------------------
# The cluster secret.


def load_secret(config: Config) -> tuple[bytes | None, list[str]]:
    """The cluster secret (None when ``auth.secret_file`` is not set) and warnings about it.

    Surrounding whitespace (a trailing newline) is not part of the secret. ConfigError if the
    file cannot be read or holds fewer than MIN_SECRET_BYTES bytes.
    """
    path = config.auth.secret_file
    if path is None:
        return None, []
    key = "auth.secret_file"
    data = _read(config, key, path, MAX_SECRET_BYTES + 1).strip()
    if len(data) < MIN_SECRET_BYTES:
        raise ConfigError(str(config.path), key,
                          f"{path}: holds {len(data)} bytes; expected a secret of at least "
                          f"{MIN_SECRET_BYTES} (make one with: head -c 32 /dev/urandom | "
                          f"base64 > {path})")
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigError(str(config.path), key,
                          f"{path}: longer than {MAX_SECRET_BYTES} bytes: not a secret file?")
    warnings = []
    mode = os.stat(path).st_mode
    if mode & 0o077:
        warnings.append(f"{key}: {path} is readable by group or others (mode "
                        f"{stat.filemode(mode)}); chmod 600 it")
    return data, warnings


def _transcript(role: bytes, cluster: str, dialer: int, acceptor: int, dialer_nonce: bytes,
                acceptor_nonce: bytes) -> bytes:
    name = cluster.encode()
    return b"".join((_PROOF_LABEL, role, b"\0", len(name).to_bytes(2, "big"), name,
                     dialer.to_bytes(4, "big"), acceptor.to_bytes(4, "big"),
                     dialer_nonce, acceptor_nonce))


def prove(secret: bytes, role: bytes, cluster: str, dialer: int, acceptor: int,
          dialer_nonce: bytes, acceptor_nonce: bytes) -> bytes:
    """The proof the side in ``role`` (ROLE_DIALER or ROLE_ACCEPTOR) sends for this exchange."""
    return hmac.new(secret, _transcript(role, cluster, dialer, acceptor, dialer_nonce,
                                        acceptor_nonce), hashlib.sha256).digest()


def verify(secret: bytes, proof: bytes, role: bytes, cluster: str, dialer: int, acceptor: int,
           dialer_nonce: bytes, acceptor_nonce: bytes) -> bool:
    """Whether ``proof`` is the one the side in ``role`` owes (compared in constant time)."""
    expected = prove(secret, role, cluster, dialer, acceptor, dialer_nonce, acceptor_nonce)
    return hmac.compare_digest(expected, proof)


# ---------------------------------------------------------------------------------------------
# TLS contexts.


def _base(server_side: bool) -> ssl.SSLContext:
    # Not ssl.create_default_context: it would trust the system's CAs, and on the peer port only
    # the cluster's CA may vouch for a member.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def server_context(config: Config, files: TLSFiles, section: str) -> ssl.SSLContext:
    """The context a listener uses: our certificate; when ``files.ca`` is set the other side
    must present a certificate chaining to it."""
    context = _base(server_side=True)
    _load_chain(config, context, files, section)
    if files.ca is not None:
        _load_ca(config, context, files.ca, f"{section}.ca")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_contexts(config: Config) -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
    """(server side, dialing side) contexts of the peer port, or None without ``tls``."""
    files = config.tls
    if files is None:
        return None
    server = server_context(config, files, "tls")
    dialer = _base(server_side=False)
    _load_ca(config, dialer, files.ca, "tls.ca")
    _load_chain(config, dialer, files, "tls")
    return server, dialer


def client_context(cacert: str | os.PathLike | None = None, cert: str | os.PathLike | None = None,
                   key: str | os.PathLike | None = None) -> ssl.SSLContext:
    """The context a client dials a TLS client port with: the server's certificate must chain
    to ``cacert`` (default: the system's trusted CAs) and name the host dialed; ``cert`` (and
    ``key``, if the key is not in the same file) is presented when the server asks for one.

    OSError or ssl.SSLError if a file cannot be used.
    """
    context = _base(server_side=False)
    if cacert is not None:
        context.load_verify_locations(cafile=os.fspath(cacert))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert is not None:
        context.load_cert_chain(os.fspath(cert), None if key is None else os.fspath(key))
    elif key is not None:
        raise ValueError("a client key needs its certificate (--cert)")
    return context


def _load_ca(config: Config, context: ssl.SSLContext, path: Path, key: str) -> None:
    text = _read(config, key, path)
    if b"-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError(str(config.path), key, f"{path}: expected PEM certificates "
                          f"(-----BEGIN CERTIFICATE-----)")
    try:
        context.load_verify_locations(cafile=str(path))
    except ssl.SSLError as exc:
        raise ConfigError(str(config.path), key, f"{path}: not a usable CA certificate "
                          f"bundle ({_ssl_reason(exc)})") from None


def _load_chain(config: Config, context: ssl.SSLContext, files: TLSFiles, section: str) -> None:
    cert_text = _read(config, f"{section}.cert", files.cert)
    if b"-----BEGIN CERTIFICATE-----" not in cert_text:
        raise ConfigError(str(config.path), f"{section}.cert", f"{files.cert}: expected a PEM "
                          f"certificate (-----BEGIN CERTIFICATE-----)")
    key_text = _read(config, f"{section}.key", files.key)
    if b"PRIVATE KEY-----" not in key_text:
        raise ConfigError(str(config.path), f"{section}.key", f"{files.key}: expected a PEM "
                          f"private key (-----BEGIN ... PRIVATE KEY-----)")
    try:
        context.load_cert_chain(str(files.cert), str(files.key))
    except ssl.SSLError as exc:
        reason = _ssl_reason(exc)
        if "MISMATCH" in reason.upper():
            raise ConfigError(str(config.path), f"{section}.key", f"{files.key}: does not match "
                              f"the certificate {files.cert} ({section}.cert)") from None
        raise ConfigError(str(config.path), f"{section}.cert", f"{files.cert} with key "
                          f"{files.key}: cannot be loaded ({reason})") from None


def _ssl_reason(exc: ssl.SSLError) -> str:
    return exc.reason or exc.strerror or str(exc)


# ---------------------------------------------------------------------------------------------
# Files.


def _read(config: Config, key: str, path: Path, limit: int = 1 << 20) -> bytes:
    """The first ``limit`` bytes of the file at ``path``; ConfigError naming ``key`` if it
    cannot be read."""
    file = str(config.path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(file, key, f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(file, key, f"{path}: cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(file, key, f"{path}: not a regular file")
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except PermissionError:
        raise ConfigError(file, key, f"{path}: permission denied (the node reads it as user "
                          f"{_user()}; the systemd unit runs as paxosd)") from None
    except OSError as exc:
        raise ConfigError(file, key, f"{path}: cannot be read: {exc.strerror or exc}") from None


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


def check_files(config: Config) -> list[str]:
    """Open and check every file the configuration names (the secret, certificates, keys);
    ConfigError naming the key and path of the first one that cannot be used. Returns warnings
    (a secret readable by others)."""
    _, warnings = load_secret(config)
    peer_contexts(config)
    if config.client_tls is not None:
        server_context(config, config.client_tls, "client_tls")
    return warnings
