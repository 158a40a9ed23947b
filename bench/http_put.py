"""HTTP put throughput, and the CBOR path's with the HTTP API on and off.

    python bench/http_put.py                       # 64 keep-alive connections, 10 s
    python bench/http_put.py --connections 64 --duration 10 --target leader
    python bench/http_put.py --compare-cbor 3      # paxosd bench, HTTP API on vs off, x3

Starts a 3-node cluster on loopback (fsync on, timing and batching from etc/paxosd.yaml, an
``http`` address per node), then, from this process (not a node's): ``--connections``
HTTP/1.1 keep-alive connections (h11 over trio), each a closed loop of ``PUT /v1/kv/...``
with a ``--value-size`` body, spread over every node (``--target all``: followers forward to
the leader, as behind a load balancer) or all to the leader. Prints the commits per second
after ``--warmup`` and the latency percentiles.

``--compare-cbor N`` instead runs ``paxosd bench --config FILE --clients 4 --in-flight 1000
--duration 8 --warmup 2 --quiet`` N times against a cluster with the HTTP API on and N times
with it off, alternating, each on a fresh cluster: the CBOR path must not pay for the API.
Every process is ended by its pid.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import h11
import trio
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.tools.bench import LocalCluster, stop_processes  # noqa: E402
from daemon.tools.ports import free_ports  # noqa: E402
from daemon.tools.stats import latency_summary  # noqa: E402


def start_cluster(directory: Path, http: bool) -> tuple[dict, Path, dict[int, int]]:
    """A 3-node cluster (``http``: with an HTTP API per node) in ``directory``: (processes,
    config path, node id -> http port); every node ready (GET /readyz 200) or its client
    port answering."""
    ports = free_ports(9)
    base = yaml.safe_load((REPO / "etc" / "paxosd.yaml").read_text())
    members = {}
    for i in (1, 2, 3):
        members[i] = {"peer": f"127.0.0.1:{ports[3 * i - 3]}",
                      "client": f"127.0.0.1:{ports[3 * i - 2]}"}
        if http:
            members[i]["http"] = f"127.0.0.1:{ports[3 * i - 1]}"
    doc = {"cluster": "httpbench", "members": members, "data_dir": str(directory / "data"),
           "timing": base["timing"], "batching": base["batching"],
           "storage": {"fsync": True}}
    config = directory / "cluster.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    procs = {}
    for i in (1, 2, 3):
        with open(directory / f"node-{i}.log", "ab") as log:
            procs[i] = subprocess.Popen(
                [sys.executable, "-m", "daemon.tools.cli", "serve", "--config", str(config),
                 "--node-id", str(i)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    http_ports = {i: ports[3 * i - 1] for i in (1, 2, 3)} if http else {}
    if http:
        trio.run(wait_ready, http_ports)
    return procs, config, http_ports


async def wait_ready(http_ports: dict[int, int], timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        for port in http_ports.values():
            while (await request(port, "GET", "/readyz"))[0] != 200:
                await trio.sleep(0.1)


async def request(port: int, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body); (0, b"") if it failed."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return 0, b""
    async with stream:
        conn = H11(stream)
        try:
            return await conn.request(method, target, body)
        except (OSError, trio.BrokenResourceError, h11.ProtocolError):
            return 0, b""


class H11:
    """One keep-alive HTTP/1.1 connection: requests one after another."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        headers = [("Host", "bench"), ("Content-Length", str(len(body)))]
        data = self.conn.send(h11.Request(method=method, target=target, headers=headers))
        data += self.conn.send(h11.Data(data=body)) if body else b""
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        status, chunks = 0, []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        self.conn.start_next_cycle()
        return status, b"".join(chunks)


async def put_load(ports: list[int], connections: int, duration: float, warmup: float,
                   value_size: int) -> dict:
    """``connections`` closed loops of PUTs over ``ports`` (round robin); commits and latency
    after ``warmup``."""
    value = b"v" * value_size
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0}
    start = trio.current_time()
    measure_from, end = start + warmup, start + warmup + duration

    async def loop(n: int) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", ports[n % len(ports)])
        async with stream:
            conn = H11(stream)
            i = 0
            while trio.current_time() < end:
                t0 = trio.current_time()
                status, _ = await conn.request("PUT", f"/v1/kv/bench/{n}/{i % 1000}", value)
                t1 = trio.current_time()
                i += 1
                if t0 >= measure_from:
                    if status == 200:
                        counts["ok"] += 1
                        latencies.append(t1 - t0)
                    else:
                        counts["failed"] += 1

    async with trio.open_nursery() as nursery:
        for n in range(connections):
            nursery.start_soon(loop, n)
    return {"commits": counts["ok"], "failed": counts["failed"],
            "commits_per_s": counts["ok"] / duration,
            "latency_ms": latency_summary(latencies)}


def leader_port(http_ports: dict[int, int]) -> int:
    status, body = trio.run(request, http_ports[1], "GET", "/v1/status")
    leader = json.loads(body)["leader"] if status == 200 else 1
    return http_ports[leader]


def run_http(args) -> int:
    directory = Path(tempfile.mkdtemp(prefix="paxosd-httpbench-"))
    procs, _, http_ports = start_cluster(directory, http=True)
    # CPU seconds per node (LocalCluster reads them from /proc): a figure less noisy than
    # throughput on a shared machine.
    nodes = LocalCluster(nodes=3, directory=directory, processes=procs)
    try:
        ports = [leader_port(http_ports)] if args.target == "leader" else list(http_ports.values())
        before = nodes.cpu_seconds()
        result = trio.run(put_load, ports, args.connections, args.duration, args.warmup,
                          args.value_size)
        after = nodes.cpu_seconds()
    finally:
        stop_processes(procs.values(), grace=10)
    lat = result["latency_ms"] or {}
    total = args.warmup + args.duration
    cpu = {i: (after[i] - before.get(i, 0)) / total for i in after}
    print(f"HTTP PUT, {args.connections} keep-alive connections to {args.target}, "
          f"{args.value_size}-byte values, fsync on: {result['commits_per_s']:,.0f} commits/s "
          f"({result['commits']:,} in {args.duration:g} s, {result['failed']} failed); "
          f"latency p50 {lat.get('p50', 0):.1f} ms, p99 {lat.get('p99', 0):.1f} ms; node CPU "
          + ", ".join(f"{i}: {c:.0%}" for i, c in sorted(cpu.items())))
    return 0 if result["commits"] else 1


def run_cbor_compare(args) -> int:
    rows = []
    for round_ in range(args.compare_cbor):
        for http in (True, False):
            directory = Path(tempfile.mkdtemp(prefix="paxosd-httpbench-"))
            procs, config, _ = start_cluster(directory, http=http)
            out = directory / "bench.json"
            try:
                # No wait here: `paxosd bench --config` waits for a leader itself (find_leader).
                subprocess.run(
                    [sys.executable, "-m", "daemon.tools.cli", "bench", "--config", str(config),
                     "--clients", "4", "--in-flight", "1000", "--duration", "8", "--warmup",
                     "2", "--quiet", "--json", str(out)], cwd=REPO, check=False,
                    stdout=subprocess.DEVNULL, timeout=120)
            finally:
                stop_processes(procs.values(), grace=10)
            result = json.loads(out.read_text()) if out.exists() else {}
            rows.append((round_ + 1, "on" if http else "off", result.get("commits_per_s", 0),
                         (result.get("latency_ms") or {}).get("p99", 0)))
            print(f"round {rows[-1][0]}, HTTP API {rows[-1][1]:>3}: {rows[-1][2]:>9,.0f} "
                  f"commits/s, p99 {rows[-1][3]:.1f} ms", flush=True)
    for mode in ("on", "off"):
        values = [r[2] for r in rows if r[1] == mode]
        print(f"HTTP API {mode}: mean {sum(values) / len(values):,.0f} commits/s "
              f"(min {min(values):,.0f}, max {max(values):,.0f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--value-size", type=int, default=64)
    parser.add_argument("--target", choices=["all", "leader"], default="all")
    parser.add_argument("--compare-cbor", type=int, default=0, metavar="N",
                        help="paxosd bench with the HTTP API on and off, N times each")
    args = parser.parse_args(argv)
    return run_cbor_compare(args) if args.compare_cbor else run_http(args)


if __name__ == "__main__":
    sys.exit(main())
