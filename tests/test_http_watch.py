"""``GET /v1/watch`` (daemon.gateway.watch) as Server-Sent Events, with httpx against real
3-node clusters: order and once-only delivery, prefix and key, prev_kv, Last-Event-ID within
a revision of several changes, compaction, heartbeats, and streams that outlive a leader
killed under writes. Writes go through the client library's CBOR port (the same store)."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
import trio

from daemon.client import txn
from daemon.client.client import PaxosdError, SyncClient, Unavailable
from daemon.client.watch import WatchCancelled, WatchEvent
from daemon.gateway.problems import Problem
from daemon.gateway.watch import HEARTBEAT_S, EventStream, parse_last_event_id
from tests.http_cluster import HTTPCluster, http_cluster, running  # noqa: F401 - the fixture

READ_TIMEOUT = 15.0  # seconds a stream may stay silent before a test gives up on it
TAKE_DEADLINE = 30.0  # seconds a test waits for the events it expects (heartbeats keep a
FOLLOW_DEADLINE = 90.0  # stream from ever timing out: every loop over frames checks these)


def cbor(cluster) -> SyncClient:
    return SyncClient(cluster.nodes.endpoints, timeout=10)


def frames(response, deadline: float = TAKE_DEADLINE):
    """The frames of an event stream: dicts of its fields (event, id, data as JSON), or
    {"comment": text} for a comment line; AssertionError once ``deadline`` seconds passed
    (checked at every line: a heartbeat comes every HEARTBEAT_S at least)."""
    give_up = time.monotonic() + deadline
    fields: dict = {}
    for line in response.iter_lines():
        if time.monotonic() > give_up:
            raise AssertionError(f"the stream did not give what was expected in {deadline:g} s")
        if line == "":
            if fields:
                yield fields
            fields = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            fields[name] = json.loads(value) if name == "data" else value


def take(web: httpx.Client, count: int, headers=None, **params) -> list[dict]:
    """The first ``count`` event frames (comments left out) of a watch."""
    got = []
    with web.stream("GET", "/v1/watch", params=params, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for frame in frames(response):
            if "comment" not in frame:
                got.append(frame)
            if len(got) == count:
                break
    return got


def test_a_watch_from_a_revision_sees_every_change_once_in_order(http_cluster):
    with cbor(http_cluster) as client:
        first = client.put("order/a", "1")
        client.put("order/b", b"\xff\xfe")
        client.put("order/a", "2")
        client.delete("order/b")
        multi = client.txn([], [txn.put("order/c", "3"), txn.put("order/d", "4"),
                                txn.put("order/e", "5")]).revision
    with http_cluster.http(2) as web:
        got = take(web, 7, prefix="order/", from_revision=first)
    assert [(f["event"], f["data"]["key"]) for f in got] == [
        ("put", "order/a"), ("put", "order/b"), ("put", "order/a"), ("delete", "order/b"),
        ("put", "order/c"), ("put", "order/d"), ("put", "order/e")]
    revisions = [f["data"]["revision"] for f in got]
    assert revisions == sorted(revisions) and revisions[0] == first
    assert revisions[4:] == [multi] * 3
    ids = [f["id"] for f in got]
    assert ids[:4] == [f"{r}:0" for r in revisions[:4]]
    assert ids[4:] == [f"{multi}:0", f"{multi}:1", f"{multi}:2"]
    a2 = got[2]["data"]
    assert (a2["value"], a2["value_encoding"], a2["version"]) == ("2", "utf-8", 2)
    assert a2["create_revision"] == first and a2["mod_revision"] == revisions[2]
    binary = got[1]["data"]
    assert (binary["value"], binary["value_encoding"]) == ("//4=", "base64")
    assert "value" not in got[3]["data"] and "prev_kv" not in got[3]["data"]


def test_last_event_id_resumes_in_the_middle_of_a_revision_and_after_a_whole_one(http_cluster):
    with cbor(http_cluster) as client:
        multi = client.txn([], [txn.put("mid/a", "1"), txn.put("mid/b", "2"),
                                txn.put("mid/c", "3")]).revision
        after = client.put("mid/z", "4")
    with http_cluster.http(3) as web:
        rest = take(web, 3, headers={"Last-Event-ID": f"{multi}:0"}, prefix="mid/",
                    from_revision=1)  # the header wins: it is the retry of a stream
        whole = take(web, 1, headers={"Last-Event-ID": str(multi)}, prefix="mid/")
        bad = web.get("/v1/watch", params={"prefix": "mid/"},
                      headers={"Last-Event-ID": "seven"})
    assert [(f["id"], f["data"]["key"]) for f in rest] == [
        (f"{multi}:1", "mid/b"), (f"{multi}:2", "mid/c"), (f"{after}:0", "mid/z")]
    assert [(f["id"], f["data"]["key"]) for f in whole] == [(f"{after}:0", "mid/z")]
    assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["detail"]


def test_prefix_and_key_watches_see_only_their_keys(http_cluster):
    with cbor(http_cluster) as client:
        start = client.put("pk/one", "1")
        client.put("pk/two", "2")
        client.put("pkx", "3")
        client.put("pk/one", "4")
        client.put("pk/one/sub", "5")
    with http_cluster.http(1) as web:
        by_key = take(web, 2, key="pk/one", from_revision=start)
        by_prefix = take(web, 4, prefix="pk/", from_revision=start)
    assert [f["data"]["value"] for f in by_key] == ["1", "4"]
    assert [f["data"]["key"] for f in by_prefix] == ["pk/one", "pk/two", "pk/one", "pk/one/sub"]


def test_prev_kv_carries_the_record_before_each_change(http_cluster):
    with cbor(http_cluster) as client:
        start = client.put("prev/k", "old")
        client.put("prev/k", "new")
        client.delete("prev/k")
    with http_cluster.http(2) as web:
        got = [f["data"] for f in take(web, 3, prefix="prev/", from_revision=start,
                                       prev_kv="true")]
    assert got[0]["prev_kv"] is None
    assert got[1]["prev_kv"]["value"] == "old" and got[1]["prev_kv"]["mod_revision"] == start
    assert got[2]["type"] == "delete" and got[2]["prev_kv"]["value"] == "new"


def test_bad_watch_parameters_are_400_naming_them(http_cluster):
    with http_cluster.http(1) as web:
        for params, named in [({}, "key=K"), ({"key": "a", "prefix": "b"}, "exactly one"),
                              ({"prefix": "a", "from_revision": "-1"}, "from_revision"),
                              ({"prefix": "a", "prev_kv": "maybe"}, "prev_kv"),
                              ({"key": ""}, "key")]:
            reply = web.get("/v1/watch", params=params)
            assert reply.status_code == 400, (params, reply.text)
            assert named in reply.json()["detail"], (params, reply.json())


def test_an_idle_stream_carries_keepalive_comments(http_cluster):
    with http_cluster.http(3) as web:
        with web.stream("GET", "/v1/watch", params={"prefix": "idle/"}) as response:
            first = next(frames(response))
    assert first == {"comment": "keepalive"}
    assert HEARTBEAT_S <= READ_TIMEOUT / 2  # it comes well before a test would give up


def test_head_on_a_watch_answers_its_headers_and_opens_no_watch(http_cluster):
    def watches() -> int:
        total = 0
        for i in (1, 2, 3):
            with http_cluster.http(i) as web:
                total += web.get("/v1/status").json()["watches"]
        return total

    before = watches()
    with http_cluster.http(2) as web:
        for _ in range(3):
            reply = web.head("/v1/watch", params={"prefix": "head/"})
            assert reply.status_code == 200
            assert reply.headers["content-type"].startswith("text/event-stream")
        # A GET's headers come only once its watch is open on the node (EventStream.__call__),
        # so a watch a HEAD opened would already be counted here (keep-alive: still open).
        assert watches() == before


def test_a_watch_from_a_compacted_revision_gets_the_compacted_event_and_ends(tmp_path):
    cluster = HTTPCluster(tmp_path)
    try:
        for path in cluster.nodes.config_path.values():
            with open(path, "a") as config:
                config.write("watch: {history_revisions: 20}\n")
        cluster.start()
        with cbor(cluster) as client:
            first = client.put("c/0", "0")
            for i in range(30):
                client.put("c/x", str(i))
        with cluster.http(2) as web:
            with web.stream("GET", "/v1/watch", params={"prefix": "c/",
                                                        "from_revision": first}) as response:
                assert response.status_code == 200
                got = list(frames(response))  # the stream ends by itself
            listed = web.get("/v1/openapi.json")  # the node still serves
        assert listed.status_code == 200
        assert [f.get("event") for f in got] == ["compacted"]
        data = got[0]["data"]
        assert data["type"] == "compacted" and data["compacted_revision"] >= first
        assert "list the keys again" in data["detail"]
    finally:
        cluster.close()


# -- streams that outlive a leader killed under writes ----------------------------------------


class Follower(threading.Thread):
    """Follows a prefix's watch over HTTP from node ``first``, reconnecting to the other
    nodes with Last-Event-ID whenever the stream breaks, until the key ``until`` is seen."""

    def __init__(self, cluster, first: int, prefix: str, start: int, until: str) -> None:
        super().__init__(daemon=True)
        self.cluster, self.prefix, self.start_revision, self.until = cluster, prefix, start, until
        self.order = [first] + [i for i in cluster.ids if i != first]
        self.events: list[dict] = []
        self.connections: list[int] = []
        self.last_id: str | None = None
        self.failure: str | None = None

    def run(self) -> None:
        self.deadline = time.monotonic() + FOLLOW_DEADLINE
        attempt = 0
        while time.monotonic() < self.deadline:
            node = self.order[attempt % len(self.order)]
            attempt += 1
            try:
                if self._follow(node):
                    return
            except httpx.HTTPError:
                time.sleep(0.05)  # the node is gone: the next one
            except AssertionError as exc:
                self.failure = str(exc)
                return
        self.failure = f"{self.until!r} not seen within {FOLLOW_DEADLINE:g} s"

    def _follow(self, node: int) -> bool:
        headers = {} if self.last_id is None else {"Last-Event-ID": self.last_id}
        timeout = httpx.Timeout(5.0, read=READ_TIMEOUT)
        with httpx.Client(base_url=self.cluster.url(node), timeout=timeout) as web:
            with web.stream("GET", "/v1/watch", headers=headers, params={
                    "prefix": self.prefix, "from_revision": self.start_revision}) as response:
                if response.status_code != 200:
                    return False
                self.connections.append(node)
                for frame in frames(response, self.deadline - time.monotonic()):
                    if "comment" in frame:
                        continue
                    if frame["event"] not in ("put", "delete"):
                        self.failure = f"unexpected {frame}"
                        return True
                    self.events.append(frame["data"])
                    self.last_id = frame["id"]
                    if frame["data"]["key"] == self.until:
                        return True
        return False


def write_and_kill(cluster, victim: int, prefix: str) -> tuple[dict, set]:
    """Puts ``prefix/N`` through the CBOR client, SIGKILLs ``victim`` after a third of them,
    goes on under the next leader, and ends with ``prefix/end``: the acknowledged writes
    {key: (value, revision)} and the keys whose outcome is unknown."""
    acked, unknown = {}, set()
    with cbor(cluster) as client:
        for i in range(90):
            if i == 30:
                cluster.kill(victim)
            key = f"{prefix}/{i:03d}"
            try:
                acked[key] = (str(i), client.put(key, str(i)))
            except PaxosdError:
                unknown.add(key)  # in flight when the leader died: may or may not be applied
        acked[f"{prefix}/end"] = ("end", client.put(f"{prefix}/end", "end"))
    return acked, unknown


def check_exactly_once(follower: Follower, acked: dict, unknown: set) -> None:
    assert follower.failure is None, follower.failure
    seen = [(e["key"], e["value"], e["revision"]) for e in follower.events]
    revisions = [r for _, _, r in seen]
    assert revisions == sorted(set(revisions)), "out of order or repeated"
    keys = [k for k, _, _ in seen]
    assert len(keys) == len(set(keys)), "a change seen twice"
    got = {k: (v, r) for k, v, r in seen}
    for key, expected in acked.items():
        assert got.get(key) == expected, f"acknowledged {key} {expected}, watch saw " \
                                         f"{got.get(key)}"
    assert set(got) - set(acked) <= unknown


def leader_kill_under_a_watch(tmp_path, watch_on_leader: bool) -> Follower:
    with running(tmp_path) as cluster:
        leader = cluster.leader()
        node = leader if watch_on_leader else next(i for i in cluster.ids if i != leader)
        with cbor(cluster) as client:
            start = client.put("lk/start", "s") + 1
        with cluster.http(node) as web:
            # a write through the node's gateway: its Client now sends to the leader, so the
            # gateway's own watch opens there too, and the kill makes that watch move
            assert web.post("/v1/lease", json={"ttl": 60}).status_code == 201
        follower = Follower(cluster, node, "lk/", start, "lk/end")
        follower.start()
        acked, unknown = write_and_kill(cluster, leader, "lk")
        follower.join(FOLLOW_DEADLINE + READ_TIMEOUT)
        assert not follower.is_alive(), "the follower did not finish"
        check_exactly_once(follower, acked, unknown)
        assert len(follower.events) >= 60
        return follower


def test_a_stream_on_a_follower_survives_the_leader_killed_under_writes(tmp_path):
    """The follower's gateway watches through its Client, which reads from the leader: when
    the leader dies the Client resumes the watch on another node by itself."""
    follower = leader_kill_under_a_watch(tmp_path, watch_on_leader=False)
    # the follower's gateway resumed by itself: one HTTP stream from start to end
    assert len(follower.connections) == 1


def test_a_stream_on_the_leader_resumes_elsewhere_with_last_event_id(tmp_path):
    follower = leader_kill_under_a_watch(tmp_path, watch_on_leader=True)
    # the killed leader's stream broke: the client reconnected to another node
    assert len(follower.connections) >= 2
    assert follower.connections[0] != follower.connections[-1]


def test_the_stream_ends_when_its_node_is_told_to_stop(tmp_path):
    with running(tmp_path) as cluster:
        got = []
        with cluster.http(1) as web:
            with web.stream("GET", "/v1/watch", params={"prefix": "stop/"}) as response:
                assert response.status_code == 200
                with cbor(cluster) as client:
                    client.put("stop/a", "1")
                for frame in frames(response):
                    got.append(frame)
                    if frame.get("event") == "put":
                        cluster.nodes.terminate(1)  # SIGTERM: the gateway ends the stream
                # the loop ended: the server closed the stream (no read timeout, no error)
        assert [f["data"]["key"] for f in got if "data" in f] == ["stop/a"]


@pytest.mark.parametrize("bad", ["1:x", "-1", "1:2:3", "r7", ":3"])
def test_parse_last_event_id_refuses_what_is_no_id(bad):
    with pytest.raises(Problem, match="Last-Event-ID"):
        parse_last_event_id(bad)


def test_parse_last_event_id_reads_both_forms():
    assert parse_last_event_id("14:2") == (14, 2)
    assert parse_last_event_id(" 14 ") == (14, None)


# -- the stream's last events, on the ASGI app alone -----------------------------------------
# A server's cancellation needs a reader slower than megabytes of changes, and an error needs
# every node gone for the whole request deadline: the framing of both is checked here with a
# watch that ends that way, the rest of the stream as in production.


class EndingWatch:
    """A stand-in for daemon.client's Watch: yields ``events``, then raises ``error``."""

    def __init__(self, events, error) -> None:
        self.events, self.error, self.revision = list(events), error, None
        self.closed = False

    async def start(self):
        return 0

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.events:
            event = self.events.pop(0)
            self.revision = event.revision
            return event
        raise self.error

    async def aclose(self):
        self.closed = True


async def stream_of(watch, skip=None) -> tuple[list[dict], list[dict]]:
    """The messages an EventStream over ``watch`` sends, and its frames."""
    gateway = SimpleNamespace(client=SimpleNamespace(watch=lambda *a, **k: watch), timeout=1.0,
                              server=SimpleNamespace(stopping=trio.Event()))
    sent = []

    async def receive():
        await trio.sleep_forever()

    async def send(message):
        sent.append(message)

    with trio.fail_after(10):
        start, through = (3, skip) if skip is not None else (1, None)
        await EventStream(gateway, b"k/", True, start, through, False)({}, receive, send)
    body = b"".join(m.get("body", b"") for m in sent).decode()
    parsed = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        fields["data"] = json.loads(fields["data"])
        parsed.append(fields)
    return sent, parsed


def change(revision: int, key: str):
    return WatchEvent("put", key.encode(), b"v", revision, revision, 1, 0, revision)


async def test_a_cancelled_watch_ends_the_stream_with_where_to_resume():
    watch = EndingWatch([change(3, "k/a")], WatchCancelled("too slow", 4))
    sent, frames_ = await stream_of(watch)
    assert [f["event"] for f in frames_] == ["put", "cancelled"]
    assert frames_[1]["data"]["resume_from"] == 4 and "too slow" in frames_[1]["data"]["reason"]
    assert sent[0]["status"] == 200 and sent[-1]["more_body"] is False and watch.closed


async def test_a_watch_no_node_takes_ends_the_stream_with_an_error_and_where_to_resume():
    watch = EndingWatch([change(3, "k/a"), change(3, "k/b"), change(4, "k/c")],
                        Unavailable("no node took the watch"))
    _, frames_ = await stream_of(watch, skip=0)  # Last-Event-ID 3:0: k/a was sent before
    assert [(f["event"], f.get("id")) for f in frames_] == [
        ("put", "3:1"), ("put", "4:0"), ("error", None)]
    assert frames_[-1]["data"]["code"] == "unavailable"
    assert frames_[-1]["data"]["resume_from"] == 5
