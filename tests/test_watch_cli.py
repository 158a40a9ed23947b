"""``paxosd watch`` as a real process against a real three-node cluster (``paxosd cluster``):
one change a line, text or JSON, from a revision; Ctrl-C exits 0; a compacted start exits 1
saying so. Every process is bounded and ended by its pid."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from functools import partial

import pytest
import trio

from tests.test_cli import ROOT, cluster, paxosd  # noqa: F401 - cluster: the fixture

LINE_TIMEOUT = 20.0


def start_watch(*args: str) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if k != "PAXOSD_CONFIG"}
    return subprocess.Popen([sys.executable, "-m", "daemon.tools.cli", "watch", *args],
                            cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def read_lines(process: subprocess.Popen, n: int) -> list[bytes]:
    """The next ``n`` lines of the process's output, each within LINE_TIMEOUT (read from the
    pipe unbuffered: what a line-buffered read took in would hide from select)."""
    buffered = _buffers.setdefault(process.pid, bytearray())
    fd = process.stdout.fileno()
    while buffered.count(b"\n") < n:
        ready, _, _ = select.select([fd], [], [], LINE_TIMEOUT)
        assert ready, f"no output within {LINE_TIMEOUT} s after {bytes(buffered)!r}"
        chunk = os.read(fd, 1 << 16)
        assert chunk, f"the watch ended: {process.stderr.read().decode()}"
        buffered += chunk
    lines = bytes(buffered).split(b"\n")
    del buffered[:sum(len(line) + 1 for line in lines[:n])]
    return lines[:n]


_buffers: dict[int, bytearray] = {}


def interrupt(process: subprocess.Popen) -> int:
    """Ctrl-C, then its exit code (killed by pid if it does not stop)."""
    try:
        process.send_signal(signal.SIGINT)
        return process.wait(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_watch_prints_each_change_a_line_and_exits_0_on_ctrl_c(cluster):  # noqa: F811
    config, _process, out_path = cluster
    cfg = ["--config", str(config), "--timeout", "15"]
    result = paxosd("put", "w/a", "1", *cfg)
    assert result.returncode == 0, result.stderr + out_path.read_text()
    status = json.loads(paxosd("get", "w/a", "--json", *cfg).stdout)
    first = status["header"]["revision"]

    process = start_watch("w/", "--prefix", "--rev", str(first), "--prev-kv", *cfg)
    try:
        assert read_lines(process, 1) == [b"PUT w/a 1"]  # from the history
        for args in (("put", "w/a", "2"), ("put", "wx", "no"), ("delete", "w/a")):
            assert paxosd(*args, *cfg).returncode == 0
        assert read_lines(process, 2) == [b"PUT w/a 2 1", b"DELETE w/a 2"]
    finally:
        code = interrupt(process)
    assert code == 0, process.stderr.read().decode()

    process = start_watch("w/a", "--rev", str(first), "--json", *cfg)
    try:
        docs = [json.loads(line) for line in read_lines(process, 3)]
    finally:
        interrupt(process)
    assert [d["type"] for d in docs] == ["PUT", "PUT", "DELETE"]
    assert docs[0]["kv"] == {"key": "w/a", "value": "1", "create_revision": first,
                             "mod_revision": first, "version": 1, "lease": 0}
    assert docs[0]["revision"] == first and docs[2]["kv"] == {"key": "w/a"}
    assert docs[1]["prev_kv"] is None and docs[2]["revision"] > docs[1]["revision"]


@pytest.fixture
def small_history_node(tmp_path):
    """One node with a watch history of 5 revisions, served by a trio loop in a background
    thread; yields its client address."""
    from daemon.runtime.config import load_config
    from daemon.runtime.server import serve
    from tests.test_server import write_config

    path = write_config(tmp_path, members=1)
    path.write_text(path.read_text() + "watch: {history_revisions: 5}\n")
    config = load_config(path, node_id=1)
    ready = threading.Event()
    box: dict = {}

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(serve, new_cluster=True), config)
            box.update(token=trio.lowlevel.current_trio_token(), cancel=nursery.cancel_scope)
            ready.set()

    thread = threading.Thread(target=trio.run, args=(run,), daemon=True)
    thread.start()
    try:
        assert ready.wait(15)
        yield str(config.member(1).client)
    finally:
        if "token" in box:
            trio.from_thread.run_sync(box["cancel"].cancel, trio_token=box["token"])
        thread.join(15)


def test_watch_from_before_the_history_exits_1_saying_compacted(small_history_node):
    from daemon.client.client import SyncClient

    with SyncClient([small_history_node], timeout=15) as client:
        for i in range(10):
            client.put("k", str(i))
    result = paxosd("watch", "k", "--rev", "1", "--endpoints", small_history_node,
                    "--timeout", "10")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "compacted at revision" in result.stderr and "list again" in result.stderr
    result = paxosd("watch", "k", "--rev", "-2", "--endpoints", small_history_node)
    assert result.returncode == 2 and "--rev" in result.stderr
