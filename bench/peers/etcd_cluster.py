"""A local etcd cluster for the peer benchmarks and their smoke test: Debian's etcd-server, N
members on 127.0.0.1 on free ports, fdatasync on (etcd's only mode), data in a fresh directory
from ``tempfile.mkdtemp`` (the same file system that `paxosd bench` puts its nodes' data on),
every member started and stopped by its pid. Standard library only."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import common

__all__ = ["Cluster", "etcd_binary", "etcd_version", "running"]


def etcd_binary() -> str | None:
    """The etcd server on PATH (Debian: /usr/bin/etcd from etcd-server), or None."""
    return shutil.which("etcd")


def etcd_version(etcd: str) -> str:
    """``etcd 3.4.23`` for the binary ``etcd``."""
    out = subprocess.run([etcd, "--version"], capture_output=True, text=True, timeout=10).stdout
    return out.split("\n")[0].replace("etcd Version: ", "etcd ")


@dataclass
class Cluster:
    """A running cluster: its member processes, client URLs and the leader's client port."""
    procs: list = field(default_factory=list)
    client_ports: list = field(default_factory=list)
    leader_port: int = 0
    directory: str = ""
    version: str = ""

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"


def post(conn, path: str, body: dict) -> dict:
    """POST ``body`` as JSON to etcd's HTTP gateway on ``conn``; the decoded reply (RuntimeError
    naming the path and status if it is not 200)."""
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status}: {data[:200]!r}")
    return json.loads(data)


def _leader(client_ports: list[int], deadline: float) -> int:
    """The client port of the member that calls itself leader (bounded by ``deadline``)."""
    while time.monotonic() < deadline:
        for port in client_ports:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                status = post(conn, "/v3/maintenance/status", {})
                conn.close()
                if status.get("leader") == status.get("header", {}).get("member_id"):
                    return port
            except (OSError, RuntimeError, ValueError):
                pass
        time.sleep(0.2)
    raise TimeoutError("no etcd leader within the deadline")


def _stop(procs: list) -> None:
    for pr in procs:
        pr.terminate()
    for pr in procs:
        try:
            pr.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pr.kill()
            pr.wait(timeout=10)


@contextlib.contextmanager
def running(nodes: int = 3, etcd: str | None = None, leader_timeout: float = 30.0):
    """Start ``nodes`` etcd members, wait for a leader and yield the ``Cluster``; on exit stop
    each member by its pid and remove the data directory. Logs go to m<i>.log in the data
    directory (printed on failure to start)."""
    etcd = etcd or etcd_binary()
    if etcd is None:
        raise FileNotFoundError("etcd not found: apt-get install etcd-server")
    cluster = Cluster(directory=tempfile.mkdtemp(prefix="etcd-bench-"),
                      version=etcd_version(etcd))
    ports = common.free_ports(2 * nodes)
    peer_ports, cluster.client_ports = ports[:nodes], ports[nodes:]
    initial = ",".join(f"m{i}=http://127.0.0.1:{peer_ports[i]}" for i in range(nodes))
    try:
        for i in range(nodes):
            with open(os.path.join(cluster.directory, f"m{i}.log"), "wb") as log:
                cluster.procs.append(subprocess.Popen([
                    etcd, "--name", f"m{i}", "--data-dir", os.path.join(cluster.directory, f"m{i}"),
                    "--listen-peer-urls", f"http://127.0.0.1:{peer_ports[i]}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_ports[i]}",
                    "--listen-client-urls", cluster.url(cluster.client_ports[i]),
                    "--advertise-client-urls", cluster.url(cluster.client_ports[i]),
                    "--initial-cluster", initial, "--initial-cluster-state", "new",
                    "--initial-cluster-token", "bench", "--log-level", "warn"],
                    stdout=log, stderr=subprocess.STDOUT))
        try:
            cluster.leader_port = _leader(cluster.client_ports, time.monotonic() + leader_timeout)
        except TimeoutError:
            for i in range(nodes):
                path = os.path.join(cluster.directory, f"m{i}.log")
                with open(path, "rb") as f:
                    tail = f.read()[-2000:].decode(errors="replace")
                print(f"--- {path}\n{tail}", flush=True)
            raise
        yield cluster
    finally:
        _stop(cluster.procs)
        shutil.rmtree(cluster.directory, ignore_errors=True)
