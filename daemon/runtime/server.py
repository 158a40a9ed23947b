"""The trio daemon: the one driver of the protocol core that has side effects.

One nursery tree per node::

    serve
    ├── transport        peer listener, one dialer per higher-id peer, per connection a sender
    │                    and a receiver (daemon.runtime.transport)
    ├── client listener  per connection a reader and a writer task (daemon.runtime.clients)
    ├── core loop        the only caller of the Node
    ├── WAL writer       group commit: one append and one fsync for whatever accumulated
    ├── ticker           a tick every 10 ms
    └── services         what the caller adds once the node listens, each given the Server
                         (``paxosd serve``: the HTTP API, health and /metrics, daemon.gateway)

Everything reaches the core loop through one bounded inbox (peer messages, client requests,
ticks, "the WAL is durable up to here"). Each iteration takes every event available without
awaiting between them, feeds them to the Node, calls ``node.ready()`` once and carries the
outputs out in the order of the core's contract (daemon.core.node): records to the WAL writer;
``send`` to the peer queues at once; ``send_after_persist`` held by the durability gate
(daemon.runtime.durability) until the WAL writer reports the records before them durable;
replies to client connections.
Messages a node sends itself go back into the core on the same terms (the leader's own vote
counts only once its own write is durable).

``serve(config)`` runs a node until cancelled; ``run(config)`` is the process entry: it handles
SIGTERM/SIGINT (let the services drain, stop serving, flush and close the WAL) and returns the
exit code. The runtime knows nothing of what a service is: the tools compose them.
``python -m daemon.runtime.server --config FILE --node-id N`` runs one node, without services
(no HTTP API, no /metrics: ``paxosd serve`` is the node with them).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import random
import signal
import socket
import sys
from collections import deque
from functools import partial

import trio

from daemon.codec import wire
from daemon.runtime.config import ConfigError, load_config
from daemon.core.node import LEADER, CoreConfig, DurableState, Node
from daemon.runtime.backup import SnapshotService
from daemon.runtime.clients import ClientPort, queue_replies
from daemon.runtime.durability import DurabilityGate
from daemon.runtime.log import node_logger, setup as setup_logging
from daemon.core.messages import Accept, IncarnationChosen, Snapshot
from daemon.runtime.metrics import NodeMetrics
from daemon.core.kv import decode_image, encode_image
from daemon.runtime.storage import (SNAPSHOT_FILE, WAL, StorageError, load_incarnation, read_snapshot,
                            save_incarnation, write_snapshot)
from daemon.runtime.timeline import ENABLED as TIMELINE, mark
from daemon.runtime.transport import Transport
from daemon.runtime.walwriter import WalWriter
from daemon.runtime.watches import Watches
from daemon.core.reads import RANGE_REPLY_MARGIN

__all__ = ["Server", "core_config", "load_snapshot", "main", "run", "sd_notify", "serve",
           "watchdog_interval"]

TICK_INTERVAL = 0.010
# Net allocations of tracked objects between young-generation collections (see run): the
# commands and (client, seq) keys are untracked, so 10,000 only made the collector walk the
# in-flight tags and replies more often (at the peak: 12-13% of each node's busy CPU, 7-9%
# at 100,000; a young collection of 100,000 live objects takes ~4 ms here).
GC_THRESHOLD = 100_000
INBOX_CAPACITY = 1024  # events (each a list of messages or requests) waiting for the core

# Inbox event kinds.
EV_PEER = 0  # payload: list of validated peer messages
EV_CLIENT = 1  # payload: list of (is_read, tag, command tuple | key)
EV_TICK = 2
EV_WAKE = 3  # no payload: the core's own messages wait (Server._wake_core)
EV_TRANSFER = 4  # payload: (tag, node id to hand leadership to)
EV_MEMBER = 5  # payload: (tag, ("add", id, peer, client) | ("remove", id))
EV_WATCH = 6  # payload: (connection, a "watch" or "unwatch" wire.Request)
JOIN_HELP = ("join a running cluster: with an empty data directory, start under a new "
             "incarnation (a new member, or a member whose data was lost); ignored when the "
             "data directory holds state")
NEW_CLUSTER_HELP = ("only when creating a cluster: with an empty data directory, take "
                    "incarnation 0 at once instead of waiting until every other initial member "
                    "reports that it never promised anything; never for a member that may "
                    "have lost its data; ignored when the data directory holds state")
DECIDING_LOG_INTERVAL = 10.0  # seconds between "still deciding the incarnation" lines
SERVICE_GRACE = 3.0  # seconds the services get to finish what they serve on SIGTERM


def core_config(config) -> CoreConfig:
    """The protocol settings the YAML file gives."""
    return CoreConfig(
        heartbeat_interval=config.timing.heartbeat_s,
        election_timeout=config.timing.election_timeout_s,
        window=config.batching.window,
        max_batch_commands=config.batching.max_batch_commands,
        max_batch_bytes=config.batching.max_batch_bytes,
        max_pending_commands=config.limits.max_pending_commands,
        max_message_bytes=config.limits.max_frame_bytes // 2,
        snapshot_every=config.storage.snapshot_every_slots,
    )


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings systemd asks for (half its WatchdogSec), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2e6, TICK_INTERVAL)
    except ValueError:
        return None


def sd_notify(state: str, log=None) -> bool:
    """Tell systemd ``state`` (e.g. "READY=1") if NOTIFY_SOCKET is set; True if sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] == "@":  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        if log is not None:
            log.warning("sd_notify %s to %s failed: %s", state, os.environ["NOTIFY_SOCKET"], exc)
        return False
    return True


class Server:
    """One node: the Node, its WAL, its transport (peers) and its client port.

    Created by ``serve``; handed to ``task_status.started`` so tests can look inside.
    """

    def __init__(self, config, *, join: bool = False, new_cluster: bool = False) -> None:
        if config.node_id is None:
            raise ConfigError(str(config.path), "node_id",
                              "not set: give node_id in the file or --node-id")
        self.config = config
        self.id = config.node_id
        self.log = node_logger(self.id)
        self.join = join or config.member(self.id).join
        if self.join and new_cluster:
            raise ConfigError(str(config.path), f"members.{self.id}",
                              "--new-cluster is for an initial member creating the cluster; "
                              "this node joins (--join or join: true)")
        self.new_cluster = new_cluster
        self._deciding_logged = -DECIDING_LOG_INTERVAL
        self.members = tuple(m.id for m in config.initial_members)
        self.client_address = {m.id: str(m.client) for m in config.members}
        self._config_version = 0  # the core's, when the transport last heard of its members
        self.incarnation = 0
        self.node: Node | None = None
        self.wal: WAL | None = None
        self._inbox_send, self._inbox_recv = trio.open_memory_channel(INBOX_CAPACITY)
        self.transport = Transport(config, self._deliver_peer,
                                   node_logger(self.id, "paxosd.transport"))
        self._self_msgs: deque = deque()
        self._tick_pending = False
        # The gate numbers the hand-offs to the WAL writer (once the WAL is open) and holds
        # Promise and Accepted until the writer reports them durable.
        self.writer: WalWriter | None = None
        self._gate = DurabilityGate()
        send = self._inbox_send.send
        self.clients = ClientPort(
            config, self.id, self.log, submit=lambda work: self._to_core((EV_CLIENT, work)),
            transfer=lambda tag, target: send((EV_TRANSFER, (tag, target))),
            change_members=lambda tag, change: send((EV_MEMBER, (tag, change))),
            status=self.status, leader=self._leader_address,
            watch=lambda conn, req: send((EV_WATCH, (conn, req))),
            snapshots=SnapshotService(config.cluster, lambda: snapshot_state(self.node),
                                      config.limits.max_frame_bytes))
        self.watches: Watches | None = None  # once the node exists
        self._watchdog = watchdog_interval()
        self._next_watchdog = 0.0
        self._role = None
        self._leader = None
        self.metrics = NodeMetrics(config.batching.max_batch_commands)
        self.metrics.registry.on_collect(
            lambda: self.metrics.collect(self.node, self.transport, self.clients.count))
        # What the metrics have counted: the commit index, and the state machine's count of
        # applied commands (a snapshot installed from the leader replaces the state machine).
        self._counted_commit = 0
        self._counted_kv = None
        self._counted_applied = 0
        self.cancel_scope: trio.CancelScope | None = None
        # Set before a clean stop: the services finish what they serve and return (drain).
        self.stopping = trio.Event()
        self._services_done: trio.Event | None = None  # once they run: set when they returned

    # -- lifecycle -------------------------------------------------------------------------------

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED, *, services=()) -> None:
        """Serve until cancelled; ``services``: async callables ``service(server, *,
        task_status)`` started (in order) once the node listens."""
        config = self.config
        node_dir = config.node_dir(self.id)
        self.log.info("config loaded from %s: cluster %s, members %s, data dir %s, fsync %s, "
                      "peer authentication %s, client TLS %s", config.path, config.cluster,
                      ",".join(map(str, self.members)), node_dir,
                      "on" if config.storage.fsync else "OFF", self.transport.protection,
                      self.clients.protection)
        self.wal, records = await trio.to_thread.run_sync(
            partial(WAL.open, node_dir, fsync=config.storage.fsync,
                    log=node_logger(self.id, "paxosd.storage")))
        self.writer = WalWriter(self.wal, fsync=config.storage.fsync, metrics=self.metrics,
                                log=self.log, write_special=self._write_with_snapshots,
                                on_durable=self._wal_progress, core_busy=self._core_busy)
        try:
            durable = DurableState.from_records(records, await trio.to_thread.run_sync(
                load_snapshot, node_dir))
            empty = not records and durable.snapshot is None
            self.incarnation, how = await trio.to_thread.run_sync(partial(
                load_incarnation, node_dir, empty=empty, join=self.join,
                new_cluster=self.new_cluster, fsync=config.storage.fsync))
            self.log.info("incarnation %s (%s)",
                          "undecided" if self.incarnation is None else self.incarnation, how)
            if (self.join or self.new_cluster) and not empty:
                self.log.info("the data directory holds state: starting from it (--%s only "
                              "matters for an empty one)", "join" if self.join else "new-cluster")
            initial = {m.id: (str(m.peer), str(m.client)) for m in config.initial_members}
            try:
                self.node = Node(self.id, initial, core_config(config), random.Random(),
                                 trio.current_time(), durable, self.incarnation)
            except ValueError as exc:
                raise ConfigError(str(config.path), f"members.{self.id}", str(exc)) from None
            self.log.info("recovered %d WAL records: promised ballot %s, commit index %d",
                          len(records), wire.format_ballot(durable.promised),
                          durable.commit_index)
            # The first "still deciding" warning comes after a moment: a cluster started all
            # at once decides in one round trip.
            self._deciding_logged = trio.current_time() - DECIDING_LOG_INTERVAL + 2.0
            self._membership_changed()
            self.watches = Watches(self.node.kv, config.watch,
                                   core_config(config).max_message_bytes - RANGE_REPLY_MARGIN)
            self._role, self._leader = self.node.role, self.node.leader_id
            self._counted_commit = self.node.commit_index
            self._counted_kv, self._counted_applied = self.node.kv, self.node.kv.applied_commands
            with trio.CancelScope() as self.cancel_scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.transport.run)
                    await nursery.start(self.clients.run)
                    nursery.start_soon(self._core_loop)
                    nursery.start_soon(self.writer.run)
                    nursery.start_soon(self._ticker)
                    await nursery.start(self.clients.snapshots.run)
                    me = config.member(self.id)
                    self.log.info("listening: peers on %s, clients on %s", me.peer, me.client)
                    await nursery.start(self._services, services)
                    sd_notify("READY=1", self.log)
                    task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                sd_notify("STOPPING=1", self.log)
                self._close_wal()

    async def _services(self, services, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._services_done = done = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                for service in services:
                    await nursery.start(service, self)
                task_status.started()
        finally:
            done.set()

    async def drain(self, grace: float = SERVICE_GRACE) -> None:
        """Tell the services to stop (``stopping``) and wait, at most ``grace`` seconds, until
        they have finished what they were serving."""
        self.stopping.set()
        if self._services_done is not None:
            with trio.move_on_after(grace):
                await self._services_done.wait()

    def stop(self) -> None:
        """Stop serving (as SIGTERM does): the WAL is flushed and closed on the way out."""
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()

    def _write_with_snapshots(self, items: list) -> float:
        """Write records in order; at each Snapshot: sync, write the snapshot file, and start
        the log afresh from its checkpoint (compaction); at an IncarnationChosen: write the
        incarnation file (durable before anything after it is released). Runs in a worker
        thread."""
        wal = self.wal
        seconds = 0.0
        start = 0
        for i, item in enumerate(items):
            if type(item) is IncarnationChosen:
                wal.append(items[start:i])
                save_incarnation(wal.directory, item.incarnation, fsync=wal.fsync_enabled)
                self.incarnation = item.incarnation
                self.log.info("incarnation %d (%s)", item.incarnation, item.why)
                start = i + 1
                continue
            if type(item) is not Snapshot:
                continue
            wal.append(items[start:i])
            seconds += wal.sync()
            before = wal.written_bytes
            try:
                size = write_snapshot(wal.directory, item.index, encode_image(item.state),
                                      fsync=wal.fsync_enabled)
            except StorageError as exc:
                wal.fail(f"the snapshot write failed: {exc}")  # nothing more is written
                raise
            wal.rotate(list(item.checkpoint))
            self.log.info("snapshot at slot %d written (%d bytes); log compacted from %d to %d bytes",
                          item.index, size, before, wal.written_bytes)
            start = i + 1
        wal.append(items[start:])
        return seconds + wal.sync()

    def _close_wal(self) -> None:
        wal = self.wal
        if wal is None:
            return
        try:
            writer = self.writer
            if writer is not None and writer.pending and not wal.failed:
                self._write_with_snapshots(writer.pending)
                writer.pending = []
            if not wal.failed:
                wal.close()
                self.log.info("WAL flushed and closed")
            else:
                wal.close()
        except StorageError as exc:
            self.log.error("closing the WAL failed: %s", exc)

    def status(self) -> dict:
        """The status map of the client protocol's "status" request."""
        status = self.node.status()
        status["peers"] = self.transport.reachable()
        status["cluster"] = self.config.cluster
        status["yaml_members"] = list(self.members)
        status["watches"] = self.watches.count()
        status["watch_events_sent"] = self.watches.delivered
        fresh = self.node.fresh
        if fresh is not None:  # deciding: not incarnation 0, not yet its new one either
            status["incarnation"] = None
            status["waiting_for"] = list(fresh.waiting_for)
        return status

    def _log_deciding(self, now: float) -> None:
        """Say, now and then, what a node deciding its incarnation waits for."""
        if now - self._deciding_logged >= DECIDING_LOG_INTERVAL:
            self._deciding_logged = now
            self.log.warning("%s", deciding_text(self.node))

    # -- the core loop ---------------------------------------------------------------------------

    async def _deliver_peer(self, msgs: list) -> None:
        await self._to_core((EV_PEER, msgs))

    async def _to_core(self, event: tuple) -> None:
        """Hand ``event`` to the core. When the core task is parked on an empty inbox (nothing
        handed to it, none of its own messages waiting), run its turn here, in the caller's
        task: one task switch less on the path of a follower's Accept, a leader's Accepted,
        a client's request. Otherwise queue it, behind what is queued (in order either way)."""
        stats = self._inbox_recv.statistics()
        if stats.tasks_waiting_receive and not stats.current_buffer_used and not self._self_msgs:
            try:
                self._turn([event])
            except Exception as exc:  # a bug in the core: not the caller's (peer's) fault
                raise CoreFailure(f"the core failed: {exc!r}") from exc
            if self._self_msgs:
                self._wake_core()
            return
        await self._inbox_send.send(event)

    def _wake_core(self) -> None:
        """Have the core task take its own messages (self_msgs) in a turn of its own."""
        try:
            self._inbox_send.send_nowait((EV_WAKE, None))
        except trio.WouldBlock:
            pass  # the inbox is full: the core's next turn takes them anyway

    async def _core_loop(self) -> None:
        receive = self._inbox_recv.receive
        receive_nowait = self._inbox_recv.receive_nowait
        self_msgs = self._self_msgs
        while True:
            if self_msgs:
                await trio.lowlevel.checkpoint()
                events = []
            else:
                events = [await receive()]
            while True:
                try:
                    events.append(receive_nowait())
                except trio.WouldBlock:
                    break
            self._turn(events)

    def _turn(self, events: list) -> None:
        """One turn of the core: feed it ``events`` and its own messages, carry out what it
        makes ready (sends, WAL hand-off, replies), deliver watch events."""
        node = self.node
        now = trio.current_time()
        if TIMELINE:
            _mark_events(events)
        for kind, payload in events:
            if kind == EV_CLIENT:
                node.submit_work(payload, now)
            elif kind == EV_PEER:
                for msg in payload:
                    node.receive(msg, now)
            elif kind == EV_TICK:
                self._tick(now)
            elif kind == EV_TRANSFER:
                node.transfer_leadership(payload[0], payload[1], now)
            elif kind == EV_MEMBER:
                node.change_members(payload[0], payload[1], now)
            elif kind == EV_WATCH:
                self.watches.request(payload[0], payload[1], self._leader_address())
            # EV_WAKE only wakes the core task for self_msgs (see _to_core, _wal_progress).
        self._release_durable()
        self_msgs = self._self_msgs
        while self_msgs:
            node.receive(self_msgs.popleft(), now)
        if node.membership.version != self._config_version:
            self._membership_changed()  # before anything is sent to a new member
        if TIMELINE:
            mark("core_fed")
        self._carry_out(node.ready())
        if TIMELINE:
            mark("core_carried")
        self.watches.deliver(node.kv, self._leader_address())
        if node.role != self._role or node.leader_id != self._leader:
            self._leadership_changed()
        if node.commit_index != self._counted_commit:
            self._count_progress()

    def _tick(self, now: float) -> None:
        node = self.node
        self._tick_pending = False
        node.tick(now)
        self.watches.forget_closed()
        if node.fresh is not None:
            self._log_deciding(now)
        if self._watchdog is not None and now >= self._next_watchdog:
            # Pinged from the core loop itself: a wedged loop stops the pings.
            self._next_watchdog = now + self._watchdog
            sd_notify(f"WATCHDOG=1\nSTATUS={status_line(self.node)}", self.log)

    def _leader_address(self) -> str | None:
        return self.client_address.get(self.node.leader_id)

    def _carry_out(self, ready) -> None:
        """Carry out one ``Ready`` in the contract's order, through the durability gate."""
        handoff = self._gate.take(ready)
        if handoff.seq:
            self.writer.hand(handoff.seq, handoff.records)
        if handoff.send:
            self._send(handoff.send)
        if handoff.replies:
            self._reply(handoff.replies)

    def _send(self, outgoing: list) -> None:
        me = self.id
        send = self.transport.send
        for dest, msg in outgoing:
            if dest == me:
                if type(msg) is Accept and msg.batches:  # slots this leader just opened
                    observe = self.metrics.batch.observe
                    for batch in msg.batches:
                        observe(len(batch))
                self._self_msgs.append(msg)
            else:
                send(dest, msg)

    def _release_durable(self) -> None:
        """Send what the WAL writer's progress lets the gate release."""
        durable = self.writer.durable
        if self._gate.durable_seq < durable:
            released = self._gate.durable(durable)
            if released:
                if TIMELINE:
                    mark("gate_released")
                self._send(released)

    def _reply(self, replies: list) -> None:
        """Queue each reply on its connection (daemon.runtime.clients.queue_replies)."""
        queue_replies(replies, self.client_address, self._leader_address(),
                      self.node.kv.revision)

    def _membership_changed(self) -> None:
        """The log (or a snapshot) brought a new configuration: reach its members, log it."""
        node = self.node
        self._config_version = node.membership.version
        addresses = node.addresses()
        for member_id, (peer, client) in addresses.items():
            if client is not None:
                self.client_address[member_id] = client
        self.transport.set_peers({i: peer for i, (peer, _) in addresses.items()
                                  if peer is not None})
        cfg = node.configuration
        if cfg.slot == 0:
            return
        me = cfg.get(self.id)
        members = ", ".join(f"{m.id}{'' if m.voter else ' (learner)'}"
                            f"{f' (incarnation {m.incarnation})' if m.incarnation else ''}"
                            for m in cfg.members)
        self.log.info("membership: %s (chosen in slot %d, in effect from slot %d)%s",
                      members, cfg.slot, cfg.effective,
                      "" if me is not None else "; this node is no longer a member")

    def _leadership_changed(self) -> None:
        node = self.node
        role, leader = node.role, node.leader_id
        if leader is not None and leader != self._leader:
            self.metrics.leader_changes.inc()
        if role == LEADER:
            self.log.info("became leader (ballot %s, commit index %d)",
                          wire.format_ballot(node.ballot), node.commit_index)
        elif leader is not None:
            if leader != self._leader:
                self.log.info("leader is node %d (ballot %s)", leader,
                              wire.format_ballot(node.promised))
        elif self._leader == self.id:
            self.log.info("stepped down as leader (promised ballot %s); waiting for an election",
                          wire.format_ballot(node.promised))
        elif self._leader is not None:
            self.log.info("lost leader node %d (promised ballot %s); waiting for an election",
                          self._leader, wire.format_ballot(node.promised))
        else:
            self.log.debug("standing for election (ballot %s)", wire.format_ballot(node.ballot))
        self._role, self._leader = role, leader

    def _count_progress(self) -> None:
        """The commands committed and applied since the last count (once per core loop
        iteration in which the commit index moved; per slot, not per command)."""
        node = self.node
        log = node.log
        committed = 0
        for slot in range(self._counted_commit + 1, node.commit_index + 1):
            entry = log.get(slot)  # None: installed with a snapshot, its commands unknown here
            if entry is not None:
                committed += len(entry[1])
        self._counted_commit = node.commit_index
        self.metrics.committed.inc(committed)
        kv = node.kv
        if kv is self._counted_kv:
            self.metrics.applied.inc(kv.applied_commands - self._counted_applied)
        self._counted_kv, self._counted_applied = kv, kv.applied_commands

    # -- the WAL writer's side ------------------------------------------------------------------

    def _wal_progress(self) -> None:
        """The WAL writer made hand-offs durable (called in its task, between core turns):
        send what the gate releases now, without a hop through the inbox; wake the core only
        when some of it is the core's own (a leader's vote for itself)."""
        self._release_durable()
        if self._self_msgs:
            self._wake_core()

    def _core_busy(self) -> bool:
        """Whether the core has work waiting (the WAL writer then keeps its fsync off-thread)."""
        return bool(self._self_msgs) or self._inbox_recv.statistics().current_buffer_used > 0

    # -- the ticker ------------------------------------------------------------------------------

    async def _ticker(self) -> None:
        deadline = trio.current_time()
        while True:
            deadline = max(deadline + TICK_INTERVAL, trio.current_time())
            await trio.sleep_until(deadline)
            if not self._tick_pending:
                try:
                    self._inbox_send.send_nowait((EV_TICK, None))
                    self._tick_pending = True
                except trio.WouldBlock:
                    pass  # the core is busy; the next tick will do



class CoreFailure(RuntimeError):
    """The protocol core raised (a bug), in a task that ran its turn for it (Server._to_core):
    not the peer's or the client's fault, so it stops the node as it would in the core task."""


def status_line(node) -> str:
    """One line of what ``node`` is doing (systemd's STATUS=)."""
    leader = node.leader_id if node.leader_id is not None else "none"
    deciding = ("" if node.fresh is None else "; deciding its incarnation, waiting for node(s) "
                + ", ".join(map(str, node.fresh.waiting_for)))
    return (f"{node.role}, leader {leader}, ballot {wire.format_ballot(node.promised)}, "
            f"commit {node.commit_index}, applied {node.applied_index}{deciding}")


def deciding_text(node) -> str:
    """What a node deciding its incarnation waits for, and what the operator can do."""
    waiting = ", ".join(map(str, node.fresh.waiting_for))
    return (f"empty data directory: not voting until the incarnation is decided; waiting for "
            f"node(s) {waiting} to report that they never promised anything (every other "
            f"initial member must, for a new cluster; one report that the cluster has run "
            f"makes this node rejoin as a learner under a new incarnation). If this is a "
            f"brand-new cluster and those members cannot start now, start this one with "
            f"--new-cluster")


def snapshot_state(node) -> tuple:
    """(applied index, state machine image, members) now, for ``paxosd snapshot save``
    (daemon.runtime.backup); called in the core loop."""
    return (node.applied_index, node.kv.image(),
            [m.as_list() for m in node.configuration.members])


_EVENT_MARKS = {EV_CLIENT: "core_client", EV_TICK: "core_tick", EV_WAKE: "core_durable",
                EV_TRANSFER: "core_transfer", EV_MEMBER: "core_member", EV_WATCH: "core_watch"}


def _mark_events(events: list) -> None:
    """Timeline marks for what one core loop iteration took from the inbox: a peer message
    by its type (an Accept that opens slots apart from a heartbeat), the rest by kind."""
    for kind, payload in events:
        if kind != EV_PEER:
            mark(_EVENT_MARKS[kind])
            continue
        for msg in payload:
            name = type(msg).__name__
            if type(msg) is Accept and msg.batches:
                name = "Accept_slots"
            mark(f"core_peer_{name}{msg.sender}")


def load_snapshot(directory) -> Snapshot | None:
    """The snapshot in data directory ``directory`` with its image decoded (None: there is
    none); StorageError naming the file if it is damaged or not a state machine image."""
    found = read_snapshot(directory)
    if found is None:
        return None
    index, blob = found
    try:
        image = decode_image(blob)
    except ValueError as exc:
        raise StorageError(f"{directory / SNAPSHOT_FILE}: not a state machine image: {exc}",
                           path=directory / SNAPSHOT_FILE) from None
    return Snapshot(index, image)

async def serve(config, *, join: bool = False, new_cluster: bool = False, services=(),
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run node ``config.node_id`` until cancelled; ``task_status.started(server)`` once it
    listens. On the way out (cancellation or error) the WAL is flushed and closed. With an
    empty data directory: ``join`` joins a running cluster under a new incarnation;
    ``new_cluster`` takes incarnation 0 at once; neither (the default) decides by asking the
    other initial members (daemon.core.incarnation). ``services``: see ``Server.serve``."""
    await Server(config, join=join, new_cluster=new_cluster).serve(task_status,
                                                                   services=services)


def _leaf_errors(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out = []
        for e in exc.exceptions:
            out.extend(_leaf_errors(e))
        return out
    return [exc]


def run(config, *, join: bool = False, new_cluster: bool = False, services=()) -> int:
    """Serve (with ``services``: see ``Server.serve``) until SIGTERM or SIGINT; return the
    process exit code (0 after a clean stop)."""
    setup_logging()
    # Commands and log entries are small tuples that never form cycles, and the default gen-0
    # threshold (700) makes the collector run every few hundred commands; with it a fifth of
    # a loaded leader's CPU went into collections. Collect less often, and never walk again
    # what start-up created.
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 10, 10)
    log = node_logger(config.node_id)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                server = Server(config, join=join, new_cluster=new_cluster)

                async def on_signal() -> None:
                    async for signum in signals:
                        log.info("received %s: shutting down", signal.Signals(signum).name)
                        await server.drain()
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(on_signal)
                await server.serve(services=services)

    try:
        trio.run(main)
    except BaseException as exc:  # noqa: BLE001 - the process boundary: report and exit
        errors = _leaf_errors(exc)
        if all(isinstance(e, KeyboardInterrupt) for e in errors):
            return 0
        for e in errors:
            if isinstance(e, (StorageError, ConfigError, OSError)):
                log.error("%s", e)
            else:
                log.critical("stopped by an unexpected error: %s: %s", type(e).__name__, e,
                             exc_info=e)
        return 1
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daemon.runtime.server",
                                     description="Run one paxosd node.")
    parser.add_argument("--config", "-c", required=True, help="the cluster's YAML file")
    parser.add_argument("--node-id", type=int, default=None,
                        help="this node's member id (overrides node_id in the file)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--join", action="store_true", help=JOIN_HELP)
    start.add_argument("--new-cluster", action="store_true", help=NEW_CLUSTER_HELP)
    args = parser.parse_args(argv)
    setup_logging(getattr(logging, args.log_level))
    try:
        config = load_config(args.config, node_id=args.node_id)
        if config.node_id is None:
            raise ConfigError(args.config, "node_id", "not set: give node_id in the file or --node-id")
    except ConfigError as exc:
        print(f"paxosd: {exc}", file=sys.stderr)
        return 2
    return run(config, join=args.join, new_cluster=args.new_cluster)


if __name__ == "__main__":
    sys.exit(main())
