"""A paxosd cluster of real processes on 127.0.0.1, for the fault tests.

Each member runs ``python -m daemon.runtime.server --config node-N.yaml --node-id N`` with its own data
directory under ``directory``. With a proxy (the default), node N's file names, as the peer
address of every other member M, the proxy port of the link (N, M) (tests.faults.proxy), so
every peer byte crosses the proxy; its own peer address is its real listener. ``cluster.yaml``
names the real addresses (for clients and tools). Client connections never cross the proxy.

Processes are started with ``subprocess.Popen`` and ended by their pid: ``kill`` (SIGKILL),
``pause``/``resume`` (SIGSTOP/SIGCONT), ``terminate`` (SIGTERM) and ``close`` (every node,
always, in a ``finally``). A node's stdout and stderr go to ``node-N.log``, appended across
restarts. Every wait here is bounded.

Power loss
----------
``kill -9`` alone loses nothing the node wrote: the page cache survives the process. A power
cut also loses everything written since the last fsync. To model it the node needs to say what
was synced, and only the node knows: with ``PAXOSD_TEST_SYNCED_MARKER=<file>`` in its
environment, daemon.runtime.storage writes ``"<inode> <synced length> <written length>"`` of
wal.log to that file after every fsync of the log returns and every write (one fixed-width
``pwrite``, so a kill leaves the old line or the new one, never half of one) and when it opens
the log; the file itself runs on in zeros allocated ahead of the groups. ``power_cut`` (after
``kill``) truncates wal.log to the synced length, or to a random point between it and the
written length (``torn=True``: part of the last unsynced write reached the disk), and the node
restarts from what is left.

Why this is faithful: the marker is written after the fsync it describes and before the WAL
writer reports the bytes durable, so nothing the node sent (an Accepted, a Promise, a reply)
depends on bytes beyond it; cutting there removes exactly what a power cut may remove. Cutting
a little more than was really synced (a kill between an fsync and its marker) is also a state a
power cut can leave. If the inode in the marker is not wal.log's, compaction replaced the log
with a new file that it wrote and synced whole before the rename, and nothing has been synced
into it since; nothing is cut then. Snapshot files, the log's creation and its replacement are
fsynced (file and directory) before they are used, so they need no model. The mode needs
``fsync: true``. The storage's own synced-length marker (``wal.synced``) is left as the kill
left it: it is written after this one, so it never claims more than the cut keeps.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio

from fastpath import FrameReader, dumps, encode_frame, loads

from daemon.codec import wire
from tests.faults.proxy import FaultProxy
from tests.ports import free_ports

__all__ = ["ProcessCluster", "free_ports", "put_concurrently", "raw_call", "REPO"]

REPO = Path(__file__).resolve().parents[2]
MARKER_ENV = "PAXOSD_TEST_SYNCED_MARKER"
STOP_TIMEOUT = 10.0
_NET_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


async def put_concurrently(client, items, writers: int) -> None:
    """Put every ``(key, value)`` of ``items`` with ``client``, ``writers`` calls at a time."""
    items = iter(items)

    async def writer() -> None:
        for key, value in items:
            await client.put(key, value)

    async with trio.open_nursery() as nursery:
        for _ in range(writers):
            nursery.start_soon(writer)


async def raw_call(port: int, request: list, timeout: float = 0.5):
    """One client request ``[op, client_id, seq, key, arg1, arg2]`` on a fresh connection to
    127.0.0.1:port; the decoded reply, or None if none came within ``timeout``."""
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError:
            return None
        try:
            await stream.send_all(encode_frame(dumps([[1, *request]])))
            reader = FrameReader(1 << 24)
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return None
                for payload in reader.feed(data):
                    return wire.decode_reply(loads(payload)[0])
        except _NET_ERRORS:
            return None
        finally:
            await trio.aclose_forcefully(stream)
    return None


class ProcessCluster:
    """``n`` nodes (ids 1..n) in ``directory``, and ``spares`` more (ids n+1..) that the files
    list with ``join: true``, for membership changes. Nothing runs until ``start``."""

    def __init__(self, directory: Path, n: int = 3, *, proxy: bool = True,
                 power_loss: bool = False, heartbeat_ms: int = 30,
                 election_timeout_ms: tuple[int, int] = (200, 400),
                 snapshot_every_slots: int | None = None, max_frame_bytes: int = 4 * 1024 * 1024,
                 log_level: str = "INFO", spares: int = 0, http: bool = False) -> None:
        assert not (spares and proxy), "spare nodes are not wired through the proxy"
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ids = tuple(range(1, n + 1))
        self.spares = tuple(range(n + 1, n + spares + 1))
        self.power_loss = power_loss
        self.max_frame_bytes = max_frame_bytes
        self.log_level = log_level
        total = n + spares
        ports = free_ports(3 * total)
        self.peer_port = {i: ports[i - 1] for i in self.ids + self.spares}
        self.client_port = {i: ports[total + i - 1] for i in self.ids + self.spares}
        # ``http``: every member serves the HTTP API (daemon.gateway), run by ``paxosd serve``.
        self.http_port = ({i: ports[2 * total + i - 1] for i in self.ids + self.spares}
                          if http else {})
        self.proxy = FaultProxy(self.peer_port) if proxy else None
        self.procs: dict[int, subprocess.Popen] = {}
        self.paused: set[int] = set()
        self.starts = {i: 0 for i in self.ids + self.spares}
        self.expected_exit: set[int] = set()  # nodes we stopped on purpose
        settings = [
            f"data_dir: {self.directory / 'data'}",
            f"timing: {{heartbeat_ms: {heartbeat_ms}, election_timeout_ms: "
            f"[{election_timeout_ms[0]}, {election_timeout_ms[1]}]}}",
            "storage: {fsync: true"
            + (f", snapshot_every_slots: {snapshot_every_slots}" if snapshot_every_slots else "")
            + "}",
            f"batching: {{max_batch_bytes: {max_frame_bytes // 4}}}",
            f"limits: {{max_frame_bytes: {max_frame_bytes}}}",
        ]
        self.config_path = {}
        for me in (None, *self.ids, *self.spares):
            lines = ["cluster: faults", "members:"]
            for m in self.ids + self.spares:
                if me is None or m == me or self.proxy is None:
                    peer = self.peer_port[m]
                else:
                    peer = self.proxy.port(me, m)
                lines.append(f"  {m}: {{peer: 127.0.0.1:{peer}, "
                             f"client: 127.0.0.1:{self.client_port[m]}"
                             + (f", http: 127.0.0.1:{self.http_port[m]}" if http else "")
                             + (", join: true" if m in self.spares else "") + "}")
            path = self.directory / ("cluster.yaml" if me is None else f"node-{me}.yaml")
            path.write_text("\n".join(lines + settings) + "\n")
            self.config_path[me] = path

    # -- paths -----------------------------------------------------------------------------------

    def node_dir(self, i: int) -> Path:
        return self.directory / "data" / f"node-{i}"

    def wal_path(self, i: int) -> Path:
        return self.node_dir(i) / "wal.log"

    def marker_path(self, i: int) -> Path:
        return self.directory / f"node-{i}.synced"

    def log_path(self, i: int) -> Path:
        return self.directory / f"node-{i}.log"

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{self.client_port[i]}" for i in self.ids]

    # -- processes -------------------------------------------------------------------------------

    def start(self, i: int, *, join: bool = False) -> None:
        """Start node ``i``; ``join``: with ``--join`` (an empty data directory starts under a
        new incarnation)."""
        assert not self.running(i), f"node {i} is already running"
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        if self.power_loss:
            env[MARKER_ENV] = str(self.marker_path(i))
        else:
            env.pop(MARKER_ENV, None)
        self.starts[i] += 1
        with open(self.log_path(i), "ab") as log:
            log.write(f"==== start #{self.starts[i]} at {time.monotonic():.3f}\n".encode())
            log.flush()
            command = ([sys.executable, "-m", "daemon.tools.cli", "serve"] if self.http_port
                       else [sys.executable, "-m", "daemon.runtime.server", "--log-level",
                             self.log_level])
            self.procs[i] = subprocess.Popen(
                command + ["--config", str(self.config_path[i]), "--node-id", str(i)]
                + (["--join"] if join else []),
                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT)
        self.expected_exit.discard(i)
        self.paused.discard(i)

    def start_all(self) -> None:
        for i in self.ids:
            self.start(i)

    def running(self, i: int) -> bool:
        proc = self.procs.get(i)
        return proc is not None and proc.poll() is None

    def pid(self, i: int) -> int:
        return self.procs[i].pid

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (by its pid) and reap it."""
        proc = self.procs.get(i)
        if proc is None:
            return
        self.expected_exit.add(i)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT)
        self.paused.discard(i)

    def terminate(self, i: int) -> int | None:
        """SIGTERM node ``i``; its exit code (SIGKILL after STOP_TIMEOUT: then None)."""
        proc = self.procs.get(i)
        if proc is None:
            return None
        self.expected_exit.add(i)
        if proc.poll() is None:
            if i in self.paused:
                os.kill(proc.pid, signal.SIGCONT)
                self.paused.discard(i)
            os.kill(proc.pid, signal.SIGTERM)
            try:
                return proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill(i)
                return None
        return proc.returncode

    def pause(self, i: int) -> None:
        if self.running(i) and i not in self.paused:
            os.kill(self.pid(i), signal.SIGSTOP)
            self.paused.add(i)

    def resume(self, i: int) -> None:
        if i in self.paused:
            self.paused.discard(i)
            if self.running(i):
                os.kill(self.pid(i), signal.SIGCONT)

    def close(self) -> None:
        """Kill every node still running (by pid) and close the proxy's listeners."""
        for i, proc in self.procs.items():
            if proc.poll() is None:
                self.expected_exit.add(i)
                os.kill(proc.pid, signal.SIGKILL)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not fail
                pass
        self.paused.clear()
        if self.proxy is not None:
            self.proxy.close()

    def unexpected_exits(self) -> dict[int, int]:
        """Nodes that exited without being told to: id -> exit code."""
        out = {}
        for i, proc in self.procs.items():
            code = proc.poll()
            if code is not None and i not in self.expected_exit:
                out[i] = code
        return out

    # -- power loss ------------------------------------------------------------------------------

    def unsynced_bytes(self, i: int) -> int:
        """How far wal.log's groups run beyond its last fsync, by the marker (0 if unknown)."""
        lengths = self._marker_lengths(i)
        return 0 if lengths is None else max(0, lengths[1] - lengths[0])

    def _marker_lengths(self, i: int) -> tuple[int, int] | None:
        """(synced, written) of node ``i``'s wal.log by its marker; None if unknown or the
        marker is of a log compaction has since replaced."""
        try:
            inode_text, synced_text, written_text = self.marker_path(i).read_text().split()
            stat = self.wal_path(i).stat()
        except (FileNotFoundError, ValueError):
            return None
        if int(inode_text) != stat.st_ino:
            return None
        return int(synced_text), int(written_text)

    async def kill_unsynced(self, i: int, attempts: int = 40) -> bool:
        """kill -9 node ``i``, if possible while its WAL holds bytes no fsync covers yet: stop
        it, look, and kill it stopped if so, else let it run 5 ms and look again (at most
        ``attempts`` times, then kill it anyway). True if it died with unsynced bytes."""
        for _ in range(attempts):
            if not self.running(i):
                break
            self.pause(i)
            if self.unsynced_bytes(i):
                self.kill(i)
                return True
            self.resume(i)
            await trio.sleep(0.005)
        self.kill(i)
        return False

    def power_cut(self, i: int, rng: random.Random | None = None, torn: bool = False) -> int:
        """After ``kill(i)``: drop what wal.log holds beyond its last fsync (see the module doc);
        the number of bytes cut."""
        assert self.power_loss, "power_cut needs the cluster made with power_loss=True"
        assert not self.running(i), "cut the power of a stopped node only"
        if not self.unsynced_bytes(i):
            return 0
        synced, written = self._marker_lengths(i)
        keep = synced
        if torn and rng is not None:
            keep = rng.randint(synced, written)
        os.truncate(self.wal_path(i), keep)
        return written - keep

    # -- asking the nodes ------------------------------------------------------------------------

    async def status(self, i: int, timeout: float = 0.5) -> dict | None:
        if not self.running(i) or i in self.paused:
            return None
        reply = await raw_call(self.client_port[i], ["status", 0, 0, b"", None, None], timeout)
        if reply is None or reply.status != "ok":
            return None
        return reply.result

    async def statuses(self, timeout: float = 0.5) -> dict[int, dict | None]:
        out: dict[int, dict | None] = {}

        async def ask(i: int) -> None:
            out[i] = await self.status(i, timeout)

        async with trio.open_nursery() as nursery:
            for i in self.ids + tuple(s for s in self.spares if s in self.procs):
                nursery.start_soon(ask, i)
        return out

    async def leader(self) -> int | None:
        """The node that says it leads under the highest ballot, if any answers so."""
        best = None
        for i, st in (await self.statuses()).items():
            if st and st.get("role") == "leader":
                if best is None or st.get("ballot", 0) > best[1]:
                    best = (i, st.get("ballot", 0))
        return best[0] if best else None

    async def wait_for_leader(self, timeout: float = 20.0) -> int | None:
        """Poll until a majority of the nodes name the same live leader; it, or None."""
        with trio.move_on_after(timeout):
            while True:
                statuses = await self.statuses()
                named = [st.get("leader") for st in statuses.values() if st]
                for leader in set(named):
                    if (leader is not None and named.count(leader) > len(self.ids) // 2
                            and (statuses.get(leader) or {}).get("role") == "leader"):
                        return leader
                await trio.sleep(0.05)
        return None

    async def wait_caught_up(self, timeout: float = 20.0) -> bool:
        """Poll until every node answers and applied what the leader has committed."""
        with trio.move_on_after(timeout):
            while True:
                statuses = await self.statuses()
                if all(statuses.values()):
                    leaders = [st for st in statuses.values() if st.get("role") == "leader"]
                    if len(leaders) == 1:
                        commit = leaders[0]["commit_index"]
                        if all(st["applied_index"] >= commit for st in statuses.values()):
                            return True
                await trio.sleep(0.1)
        return False

    async def describe(self, lines: int = 8) -> str:
        """Each node's process state, status and last log lines: what a failed wait shows."""
        statuses = await self.statuses()
        out = []
        for i in self.ids:
            proc = self.procs.get(i)
            state = ("never started" if proc is None else "running" if proc.poll() is None
                     else f"exited with {proc.returncode}")
            if i in self.paused:
                state += ", paused"
            st = statuses.get(i)
            brief = ({k: st.get(k) for k in ("role", "leader", "ballot", "commit_index")}
                     if st else "no status answer")
            tail = self.log_text(i).splitlines()[-lines:]
            out.append(f"node {i}: {state}; {brief}\n" + "\n".join("    " + t for t in tail))
        return "\n".join(out)

    def log_text(self, i: int) -> str:
        try:
            return self.log_path(i).read_text(errors="replace")
        except FileNotFoundError:
            return ""
