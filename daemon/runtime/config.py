"""The cluster configuration: one YAML file for the whole cluster, plus the node's own id.

``load_config`` reads and validates the file and returns a frozen ``Config``. Every error is a
``ConfigError`` whose message names the file, the key path (``members.2.peer``), the value found
and the form expected, so an operator can fix the file without reading this code. Unknown keys
are errors: a misspelt option must not silently fall back to its default.

The defaults are stated once, as the defaults of the dataclasses below; ``describe`` renders the
effective settings (defaults filled in, paths resolved) as YAML that loads back to the same
``Config``.

Files the configuration names (the cluster secret, certificates and keys) are not opened by
``load_config``: client commands load the file too and need not read the node's secrets.
``daemon.runtime.security`` checks them: ``check_files`` for ``paxosd check-config``, and a
starting node as it loads them.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

__all__ = [
    "Address",
    "Auth",
    "Batching",
    "Config",
    "ConfigError",
    "HTTPSettings",
    "Limits",
    "Member",
    "Metrics",
    "StorageSettings",
    "TLSFiles",
    "Timing",
    "WatchSettings",
    "describe",
    "load_config",
    "parse_address",
    "parse_config",
]

# Bounds on what a file may ask for. Member ids share 16 bits of a ballot with nothing else
# (fastpath packs round << 16 | node), and 0 means "no node".
MAX_NODE_ID = 65535
MAX_MEMBERS = 64
MAX_WINDOW = 65536
# A frame must fit in one WAL record (daemon.codec.records limits records to 256 MiB).
MIN_FRAME_BYTES = 4096
MAX_FRAME_BYTES = 256 * 1024 * 1024
# Room the HTTP API's default body limit leaves in a batch for the key (a request head is at
# most 16 KiB) and the command around the value.
HTTP_BODY_MARGIN = 16 * 1024
# Where state lives when the file says nothing: the systemd StateDirectory.
DEFAULT_DATA_DIR = "/var/lib/paxosd"

_CLUSTER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


class ConfigError(ValueError):
    """A configuration file that cannot be used, with a message for the operator.

    ``file`` is the file as the operator named it, ``key`` the dotted key path (or None when the
    problem is the file as a whole).
    """

    def __init__(self, file: str, key: str | None, problem: str):
        self.file = file
        self.key = key
        self.problem = problem
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + problem)


# ---------------------------------------------------------------------------------------------
# The settings.


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP endpoint. ``host`` is a hostname or an IP literal (IPv6 without brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Member:
    """One node of the cluster: its id, the address peers dial, the address clients dial,
    where it serves metrics (None: the file-wide ``metrics.address``) and the HTTP/JSON API
    (None: the file-wide ``http.address``). ``join``: not one of the initial members; it joins
    the running cluster once ``paxosd member add`` adds it."""

    id: int
    peer: Address
    client: Address
    metrics: Address | None = None
    join: bool = False
    http: Address | None = None


@dataclass(frozen=True, slots=True)
class Timing:
    """Leader liveness. Followers start an election after a random timeout in the range."""

    heartbeat_ms: int = 50
    election_timeout_ms: tuple[int, int] = (150, 300)

    @property
    def heartbeat_s(self) -> float:
        return self.heartbeat_ms / 1000.0

    @property
    def election_timeout_s(self) -> tuple[float, float]:
        low, high = self.election_timeout_ms
        return (low / 1000.0, high / 1000.0)


@dataclass(frozen=True, slots=True)
class Batching:
    """Phase 2 pipelining: slots in flight, and how large one slot's batch may grow."""

    window: int = 64
    max_batch_commands: int = 4096
    max_batch_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """The WAL: whether appends are fsynced (group-committed), and how often to snapshot."""

    fsync: bool = True
    snapshot_every_slots: int = 100_000


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what peers and clients can make a node hold."""

    max_frame_bytes: int = 64 * 1024 * 1024
    max_pending_commands: int = 100_000
    max_clients: int = 1024


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """Watches (daemon.runtime.watches): the history kept for watches that resume, bounded in
    revisions and in bytes of changes, and the bytes of changes queued for one client
    connection and not yet written before its watch is cut off as too slow."""

    history_revisions: int = 100_000
    history_bytes: int = 64 * 1024 * 1024
    max_pending_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Metrics:
    """The Prometheus endpoint of every member that names none of its own; None: no metrics
    (unless the member sets ``members.N.metrics``)."""

    address: Address | None = None


@dataclass(frozen=True, slots=True)
class HTTPSettings:
    """The HTTP/JSON API (daemon.gateway): the address of every member that names none of its
    own (None: no API unless the member sets ``members.N.http``; every port a node listens on
    is one the file names); the largest request body taken (None: ``batching.max_batch_bytes``
    less 16 KiB for the key and the command, or half of it if that is more: a command must fit
    in one batch; a larger body is refused with 413 before it is read); and the deadline of one
    request's call into the cluster, retries included (past it, 503, or 504 for a write whose
    outcome is unknown)."""

    address: Address | None = None
    max_body_bytes: int | None = None
    timeout_ms: int = 3000


@dataclass(frozen=True, slots=True)
class Auth:
    """Peer authentication: the file holding the cluster's shared secret; None: peers prove
    nothing beyond the hello (cluster name and member id)."""

    secret_file: Path | None = None


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """PEM files for TLS on a port: this node's certificate and key, and the CA that the other
    side's certificate must chain to (required for the peer port; for the client port, None
    lets any client connect)."""

    ca: Path | None
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class Config:
    """The validated configuration of a cluster, as seen by node ``node_id`` (None: not chosen).

    ``members`` are sorted by id; ``data_dir`` is absolute; ``path`` is the file it came from.
    """

    path: Path
    cluster: str
    node_id: int | None
    members: tuple[Member, ...]
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    timing: Timing = Timing()
    batching: Batching = Batching()
    storage: StorageSettings = StorageSettings()
    limits: Limits = Limits()
    watch: WatchSettings = WatchSettings()
    metrics: Metrics = Metrics()
    http: HTTPSettings = HTTPSettings()
    auth: Auth = Auth()
    tls: TLSFiles | None = None
    client_tls: TLSFiles | None = None

    def member(self, member_id: int) -> Member:
        """The member with this id; KeyError if there is none."""
        for m in self.members:
            if m.id == member_id:
                return m
        raise KeyError(f"no member with id {member_id} in cluster {self.cluster!r}")

    @property
    def member_ids(self) -> tuple[int, ...]:
        return tuple(m.id for m in self.members)

    @property
    def initial_members(self) -> tuple[Member, ...]:
        """The members the cluster started with (every member not marked ``join``); later
        membership lives in the log (``paxosd member``)."""
        return tuple(m for m in self.members if not m.join)

    @property
    def quorum(self) -> int:
        """How many initial members make a majority."""
        return len(self.initial_members) // 2 + 1

    def node_dir(self, node_id: int | None = None) -> Path:
        """The data directory of ``node_id`` (default: this node's)."""
        if node_id is None:
            node_id = self.node_id
        if node_id is None:
            raise ConfigError(
                str(self.path), "node_id", "not set: give node_id in the file or --node-id"
            )
        return self.data_dir / f"node-{node_id}"

    def metrics_address(self, node_id: int | None = None) -> Address | None:
        """Where ``node_id`` (default: this node) serves /metrics: its own ``metrics`` address,
        else the file-wide ``metrics.address``; None: it serves none."""
        return self._listen_address("metrics", node_id)

    def http_address(self, node_id: int | None = None) -> Address | None:
        """Where ``node_id`` (default: this node) serves the HTTP/JSON API: its own ``http``
        address, else the file-wide ``http.address``; None: it serves none."""
        return self._listen_address("http", node_id)

    def _listen_address(self, role: str, node_id: int | None) -> Address | None:
        """Member ``node_id``'s (default: this node's) own ``role`` address, else the
        file-wide ``<role>.address``."""
        if node_id is None:
            node_id = self.node_id
        own = getattr(self.member(node_id), role) if node_id is not None else None
        return own if own is not None else getattr(self, role).address

    @property
    def http_max_body_bytes(self) -> int:
        """The largest HTTP request body taken: ``http.max_body_bytes``, or by default
        ``batching.max_batch_bytes`` less HTTP_BODY_MARGIN (room for the key and the command
        around a value: a command must fit in one batch), or half of it if that is more."""
        if self.http.max_body_bytes is not None:
            return self.http.max_body_bytes
        batch = self.batching.max_batch_bytes
        return max(batch - HTTP_BODY_MARGIN, batch // 2)

    def with_node_id(self, node_id: int) -> Config:
        """This configuration as seen by member ``node_id``; ConfigError if it is no member."""
        _check_node_id(str(self.path), node_id, self.member_ids)
        return dataclasses.replace(self, node_id=node_id)


# ---------------------------------------------------------------------------------------------
# Loading.


def parse_address(text: Any, where: str) -> Address:
    """``text`` ("host:port", IPv6 as "[addr]:port") as an Address; ConfigError naming
    ``where`` if it is not one."""
    return _Parser(where).address("address", text)


def load_config(path: str | os.PathLike, node_id: int | None = None) -> Config:
    """Read and validate the file at ``path``.

    ``node_id`` (from the command line) overrides the file's ``node_id``; either may be absent,
    in which case ``Config.node_id`` is None.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(name, None, f"cannot read the file: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(name, None, f"not UTF-8 text (byte offset {exc.start})") from exc
    return parse_config(text, name, node_id=node_id)


def parse_config(
    text: str, path: str | os.PathLike | None = None, *, node_id: int | None = None
) -> Config:
    """Validate YAML ``text`` as if read from ``path`` (relative paths resolve against its
    directory; without a path, against the working directory)."""
    name = os.fspath(path) if path is not None else "<config>"
    base = Path(os.path.abspath(name)).parent if path is not None else Path.cwd()
    doc = _document(text, name)
    p = _Parser(name)
    cluster = doc["cluster"]
    if not isinstance(cluster, str) or not _CLUSTER_NAME.fullmatch(cluster):
        p.fail("cluster", cluster, "a cluster name of 1 to 64 letters, digits, '_', '.' or '-'")
    members = p.members(doc["members"])
    member_ids = tuple(m.id for m in members)

    file_node_id = doc.get("node_id")
    if file_node_id is not None:
        _check_node_id(name, file_node_id, member_ids)
    if node_id is not None:
        _check_node_id(name, node_id, member_ids, source=" (from the command line)")
    else:
        node_id = file_node_id

    data_dir = doc.get("data_dir", DEFAULT_DATA_DIR)
    if not isinstance(data_dir, str) or not data_dir.strip():
        p.fail("data_dir", data_dir, "a directory path")

    return Config(
        path=Path(os.path.abspath(name)) if path is not None else Path(name),
        cluster=cluster,
        node_id=node_id,
        members=members,
        data_dir=_resolve(base, data_dir),
        **_sections(p, doc, base, members),
    )


def _document(text: str, name: str) -> dict:
    """The file's top-level mapping: YAML that parses, with only known keys and the required
    ones; ConfigError naming ``name`` otherwise."""
    try:
        doc = _load_yaml(text)
    except _DuplicateKey as exc:
        raise ConfigError(name, exc.key_path, exc.problem) from None
    except yaml.YAMLError as exc:
        raise ConfigError(name, None, _yaml_problem(exc)) from None
    if doc is None:
        raise ConfigError(
            name, None, "the file is empty: expected a mapping with cluster and members"
        )
    if not isinstance(doc, dict):
        raise ConfigError(
            name, None, f"expected a mapping at the top level, got {_type_name(doc)} {_show(doc)}"
        )
    config_fields = [f.name for f in dataclasses.fields(Config) if f.name != "path"]
    _Parser(name).check_keys(doc, "", config_fields)
    for required in ("cluster", "members"):
        if required not in doc:
            raise ConfigError(name, required, "required key is missing")
    return doc


def _sections(p: _Parser, doc: dict, base: Path, members: tuple[Member, ...]) -> dict:
    """The optional sections of ``doc`` (timing to client_tls), defaults filled in, checked
    on their own and against each other, as Config's keyword arguments."""
    name = p.name
    timing = p.section(doc, "timing", Timing, _TIMING_CHECKS)
    if timing.election_timeout_ms[0] > timing.election_timeout_ms[1]:
        p.fail(
            "timing.election_timeout_ms",
            list(timing.election_timeout_ms),
            "[min, max] with min <= max",
        )
    if timing.heartbeat_ms >= timing.election_timeout_ms[0]:
        raise ConfigError(
            name,
            "timing.heartbeat_ms",
            f"must be below the election timeout minimum "
            f"({timing.election_timeout_ms[0]} ms), got {timing.heartbeat_ms}: followers "
            f"would start elections between heartbeats",
        )
    batching = p.section(doc, "batching", Batching, _BATCHING_CHECKS)
    storage = p.section(doc, "storage", StorageSettings, _STORAGE_CHECKS)
    limits = p.section(doc, "limits", Limits, _LIMITS_CHECKS)
    if batching.max_batch_bytes > limits.max_frame_bytes // 2:
        raise ConfigError(
            name,
            "batching.max_batch_bytes",
            f"must be at most half of limits.max_frame_bytes ({limits.max_frame_bytes // 2}) "
            f"so that a batch fits in one frame with room to spare, got {batching.max_batch_bytes}",
        )
    watch = p.section(doc, "watch", WatchSettings, _WATCH_CHECKS)
    metrics = p.section(doc, "metrics", Metrics, _METRICS_CHECKS)
    if metrics.address is not None:
        p.check_unused("metrics.address", metrics.address, members)
    http = p.section(doc, "http", HTTPSettings, _HTTP_CHECKS)
    if http.address is not None:
        p.check_unused("http.address", http.address, members)
        if metrics.address is not None and _same(http.address, metrics.address):
            raise ConfigError(name, "http.address",
                              f"address {http.address} is already used by metrics.address")
    if http.max_body_bytes is not None and http.max_body_bytes > batching.max_batch_bytes:
        raise ConfigError(name, "http.max_body_bytes",
                          f"must be at most batching.max_batch_bytes "
                          f"({batching.max_batch_bytes}): a larger value fits in no batch, "
                          f"got {http.max_body_bytes}")
    auth = p.section(doc, "auth", Auth, {"secret_file": _optional_path(base)})
    return dict(timing=timing, batching=batching, storage=storage, limits=limits, watch=watch,
                metrics=metrics, http=http, auth=auth, tls=p.tls(doc, "tls", base, ca_required=True),
                client_tls=p.tls(doc, "client_tls", base, ca_required=False))


def _resolve(base: Path, path: str) -> Path:
    """``path`` with ~ expanded, relative to ``base`` unless absolute, normalised."""
    resolved = Path(os.path.expanduser(path))
    if not resolved.is_absolute():
        resolved = base / resolved
    return Path(os.path.normpath(resolved))


def _check_node_id(name: str, node_id: Any, member_ids: tuple[int, ...], source: str = "") -> None:
    ids = ", ".join(str(i) for i in member_ids)
    if not _is_int(node_id) or node_id not in member_ids:
        raise ConfigError(
            name, "node_id", f"expected one of the member ids ({ids}){source}, got {_show(node_id)}"
        )


# ---------------------------------------------------------------------------------------------
# Value checks. Each takes (parser, key path, value) and returns the typed value or fails.


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(low: int, high: int | None, what: str) -> Callable[[_Parser, str, Any], int]:
    if high is None:
        expected = f"a positive integer ({what})" if low == 1 else f"an integer >= {low} ({what})"
    else:
        expected = f"an integer from {low} to {high} ({what})"

    def check(p: _Parser, key: str, value: Any) -> int:
        if not _is_int(value) or value < low or (high is not None and value > high):
            p.fail(key, value, expected)
        return value

    return check


def _bool(p: _Parser, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        p.fail(key, value, "true or false")
    return value


def _ms_range(p: _Parser, key: str, value: Any) -> tuple[int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(_is_int(v) and v > 0 for v in value)
    ):
        p.fail(key, value, "[min, max]: two positive integers (milliseconds)")
    return (value[0], value[1])


def _optional_address(p: _Parser, key: str, value: Any) -> Address | None:
    return None if value is None else p.address(key, value)


def _path(base: Path) -> Callable[[_Parser, str, Any], Path]:
    def check(p: _Parser, key: str, value: Any) -> Path:
        if not isinstance(value, str) or not value.strip():
            p.fail(key, value, "a file path (relative paths are relative to this file)")
        return _resolve(base, value)

    return check


def _optional(check: Callable[[_Parser, str, Any], Any]) -> Callable[[_Parser, str, Any], Any]:
    """``check``, with None (the key left out or null) taken as it is."""
    return lambda p, key, value: None if value is None else check(p, key, value)


def _optional_path(base: Path) -> Callable[[_Parser, str, Any], Path | None]:
    return _optional(_path(base))


_TIMING_CHECKS = {
    "heartbeat_ms": _int_in(1, None, "milliseconds"),
    "election_timeout_ms": _ms_range,
}
_BATCHING_CHECKS = {
    "window": _int_in(1, MAX_WINDOW, "slots in flight"),
    "max_batch_commands": _int_in(1, None, "commands per slot"),
    "max_batch_bytes": _int_in(1, None, "bytes per slot"),
}
_STORAGE_CHECKS = {
    "fsync": _bool,
    "snapshot_every_slots": _int_in(1, None, "slots"),
}
_LIMITS_CHECKS = {
    "max_frame_bytes": _int_in(MIN_FRAME_BYTES, MAX_FRAME_BYTES, "bytes"),
    "max_pending_commands": _int_in(1, None, "commands"),
    "max_clients": _int_in(1, None, "connections"),
}
_WATCH_CHECKS = {
    "history_revisions": _int_in(1, None, "revisions"),
    "history_bytes": _int_in(1, None, "bytes"),
    "max_pending_bytes": _int_in(1, None, "bytes"),
}
_METRICS_CHECKS = {"address": _optional_address}
_HTTP_CHECKS = {
    "address": _optional_address,
    "max_body_bytes": _optional(_int_in(1, None, "bytes")),
    "timeout_ms": _int_in(1, None, "milliseconds"),
}
_ROLES = ("peer", "client", "metrics", "http")  # the addresses a member listens on


def _same(a: Address, b: Address) -> bool:
    return (a.host.lower().rstrip("."), a.port) == (b.host.lower().rstrip("."), b.port)


class _Parser:
    """Validation helpers that know the file name, so every failure names it."""

    def __init__(self, name: str):
        self.name = name

    def fail(self, key: str, value: Any, expected: str) -> None:
        raise ConfigError(self.name, key, f"expected {expected}, got {_show(value)}")

    def check_keys(self, mapping: dict, prefix: str, allowed: list[str]) -> None:
        for key in mapping:
            if key not in allowed:
                path = f"{prefix}.{key}" if prefix else str(key)
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
                where = f"in {prefix}" if prefix else "at the top level"
                raise ConfigError(
                    self.name,
                    path,
                    f"unknown key {where}{did_you_mean}; allowed keys: {', '.join(allowed)}",
                )

    def section(self, doc: dict, key: str, cls: type, checks: dict) -> Any:
        value = doc.get(key)
        if value is None:
            return cls()
        if not isinstance(value, dict):
            self.fail(key, value, f"a mapping with keys {', '.join(checks)}")
        self.check_keys(value, key, list(checks))
        return cls(**{k: checks[k](self, f"{key}.{k}", v) for k, v in value.items()})

    def address(self, key: str, value: Any) -> Address:
        expected = "'host:port' with a port from 1 to 65535"
        if not isinstance(value, str):
            if _is_int(value):
                expected += " (quote it: YAML reads some unquoted a:b forms as numbers)"
            self.fail(key, value, expected)
        host, sep, port_text = value.strip().rpartition(":")
        if not sep or not port_text.isdigit() or not (1 <= int(port_text) <= 65535):
            self.fail(key, value, expected)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                self.fail(key, value, expected + " (an IPv6 literal inside the brackets)")
        elif not _HOSTNAME.fullmatch(host):
            self.fail(key, value, expected + " (host: a hostname or IP address; IPv6 as [addr])")
        return Address(host, int(port_text))

    def tls(self, doc: dict, key: str, base: Path, *, ca_required: bool) -> TLSFiles | None:
        """The TLS section ``key`` ({ca, cert, key}), or None when absent or null."""
        value = doc.get(key)
        if value is None:
            return None
        names = ["ca", "cert", "key"]
        if not isinstance(value, dict):
            self.fail(key, value, "a mapping {ca: FILE, cert: FILE, key: FILE} (PEM files)")
        self.check_keys(value, key, names)
        for required in (names if ca_required else names[1:]):
            if value.get(required) is None:
                raise ConfigError(self.name, f"{key}.{required}", "required key is missing")
        path = _path(base)
        ca = value.get("ca")
        return TLSFiles(
            ca=None if ca is None else path(self, f"{key}.ca", ca),
            cert=path(self, f"{key}.cert", value["cert"]),
            key=path(self, f"{key}.key", value["key"]),
        )

    def check_unused(self, key: str, addr: Address, members: tuple[Member, ...]) -> None:
        """``addr`` (at ``key``) is no member's peer, client, metrics or http address."""
        for m in members:
            for role in _ROLES:
                other = getattr(m, role)
                if other is not None and _same(other, addr):
                    raise ConfigError(self.name, key,
                                      f"address {addr} is already used by members.{m.id}.{role}")

    def members(self, value: Any) -> tuple[Member, ...]:
        if not isinstance(value, dict):
            self.fail(
                "members", value, "a mapping of member id to {peer: host:port, client: host:port}"
            )
        if not value:
            self.fail(
                "members", value, "at least one member (1, 3, 5 or 7 for a fault-tolerant cluster)"
            )
        members = []
        for member_id, spec in value.items():
            key = f"members.{member_id}"
            if not _is_int(member_id) or not (1 <= member_id <= MAX_NODE_ID):
                raise ConfigError(
                    self.name,
                    key,
                    f"expected a member id from 1 to {MAX_NODE_ID}, got {_show(member_id)}",
                )
            if not isinstance(spec, dict):
                self.fail(key, spec, "a mapping {peer: host:port, client: host:port}")
            self.check_keys(spec, key, ["peer", "client", "metrics", "http", "join"])
            for required in ("peer", "client"):
                if required not in spec:
                    raise ConfigError(self.name, f"{key}.{required}", "required key is missing")
            members.append(
                Member(
                    member_id,
                    peer=self.address(f"{key}.peer", spec["peer"]),
                    client=self.address(f"{key}.client", spec["client"]),
                    metrics=_optional_address(self, f"{key}.metrics", spec.get("metrics")),
                    join=_bool(self, f"{key}.join", spec.get("join", False)),
                    http=_optional_address(self, f"{key}.http", spec.get("http")),
                )
            )
        members.sort(key=lambda m: m.id)
        if len(members) > MAX_MEMBERS:
            raise ConfigError(
                self.name, "members", f"expected at most {MAX_MEMBERS} members, got {len(members)}"
            )
        initial = [m for m in members if not m.join]
        if not initial:
            raise ConfigError(self.name, "members", "every member is marked join: at least one "
                              "must be an initial member")
        if len(initial) % 2 == 0:
            raise ConfigError(
                self.name,
                "members",
                f"expected an odd number of initial members (1, 3, 5 or 7; members marked join "
                f"do not count), got {len(initial)}: "
                f"a majority quorum of an even count tolerates no more failures than one member "
                f"fewer, and a split in half elects no leader",
            )
        seen: dict[tuple[str, int], str] = {}
        for m in members:
            for role in _ROLES:
                addr = getattr(m, role)
                if addr is None:
                    continue
                ident = (addr.host.lower().rstrip("."), addr.port)
                key = f"members.{m.id}.{role}"
                if ident in seen:
                    raise ConfigError(
                        self.name, key, f"address {addr} is already used by {seen[ident]}"
                    )
                seen[ident] = key
        return tuple(members)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(value: Any) -> str:
    return {list: "a list", str: "a string", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"YAML syntax error: {problem}"


class _DuplicateKey(Exception):
    def __init__(self, key_path: str, problem: str):
        self.key_path = key_path
        self.problem = problem


def _load_yaml(text: str) -> Any:
    """Plain data from YAML (SafeLoader), refusing a key given twice in one mapping."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        loader.key_paths = _key_paths(node, "")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _key_paths(node: yaml.Node, path: str, out: dict | None = None) -> dict[int, str]:
    """The dotted key path of every mapping node under ``node``, by node identity."""
    if out is None:
        out = {}
    if isinstance(node, yaml.MappingNode):
        if id(node) in out:  # an alias seen before
            return out
        out[id(node)] = path
        for key_node, value_node in node.value:
            key = getattr(key_node, "value", "?")
            _key_paths(value_node, f"{path}.{key}" if path else str(key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _key_paths(item, f"{path}.{i}", out)
    return out


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping.

    Plain PyYAML keeps the last one silently, which would drop a member or a setting.
    """

    key_paths: dict[int, str] = {}

    def construct_mapping(self, node, deep=False):
        prefix = self.key_paths.get(id(node), "")
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports unhashable keys
            if key in seen:
                line = key_node.start_mark.line + 1
                first = seen[key].start_mark.line + 1
                raise _DuplicateKey(
                    f"{prefix}.{key}" if prefix else str(key),
                    f"key given twice (line {first} and line {line}); give it once",
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


# ---------------------------------------------------------------------------------------------
# Rendering.


def describe(config: Config) -> str:
    """The effective settings as YAML: defaults filled in, paths absolute.

    Loading the text back (with the same path) gives an equal ``Config``.
    """
    lines = [
        f"# effective configuration from {config.path}",
        f"cluster: {_scalar(config.cluster)}",
        f"node_id: {_scalar(config.node_id)}",
        f"members:  # quorum: {config.quorum} of {len(config.initial_members)} initial members",
    ]
    for m in config.members:
        lines.append(f"  {m.id}:")
        lines.append(f"    peer: {_scalar(str(m.peer))}")
        lines.append(f"    client: {_scalar(str(m.client))}")
        if m.metrics is not None:
            lines.append(f"    metrics: {_scalar(str(m.metrics))}")
        if m.http is not None:
            lines.append(f"    http: {_scalar(str(m.http))}")
        if m.join:
            lines.append("    join: true  # not an initial member")
    node_dir = f"  # this node: {config.node_dir()}" if config.node_id is not None else ""
    lines.append(f"data_dir: {_scalar(str(config.data_dir))}{node_dir}")
    for section in ("timing", "batching", "storage", "limits", "watch", "metrics", "http", "auth",
                    "tls", "client_tls"):
        settings = getattr(config, section)
        if settings is None:
            lines.append(f"{section}: null")
            continue
        lines.append(f"{section}:")
        for f in dataclasses.fields(settings):
            value = getattr(settings, f.name)
            if isinstance(value, tuple):
                text = "[" + ", ".join(_scalar(v) for v in value) + "]"
            elif isinstance(value, (Address, Path)):
                text = _scalar(str(value))
            else:
                text = _scalar(value)
            lines.append(f"  {f.name}: {text}")
    if config.node_id is not None:
        address = config.metrics_address()
        lines.append(f"# this node serves metrics: "
                     f"{'http://' + str(address) + '/metrics' if address else 'no'}")
        address = config.http_address()
        scheme = "https" if config.client_tls is not None else "http"
        lines.append(f"# this node serves the HTTP API: "
                     f"{scheme + '://' + str(address) + '/v1/' if address else 'no'}"
                     f" (body limit {config.http_max_body_bytes} bytes)")
    return "\n".join(lines) + "\n"


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    try:
        plain_ok = yaml.safe_load(text) == text and "#" not in text and text == text.strip()
    except yaml.YAMLError:
        plain_ok = False
    return text if plain_ok else json.dumps(text)
