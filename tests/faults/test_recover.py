"""Disaster recovery on real processes, as the README's "Disaster recovery (losing a
majority)" says it: two of three members are lost for good (SIGKILL, data deleted); on the
survivor, stopped, the file keeps only its own member (and the new one to come, marked
join), ``paxosd recover`` makes it a one-member cluster, a plain serve serves it (every
acknowledged write is there, new writes work), and ``paxosd member add`` grows it: the new
node catches up."""

from __future__ import annotations

import shutil

import trio

from daemon.client.client import Client
from tests.faults.cluster import ProcessCluster, put_concurrently
from tests.test_cli import paxosd

KEYS = 500
WRITERS = 16


async def _write(endpoints: list[str], prefix: str, count: int) -> None:
    async with Client(endpoints, timeout=20) as client:
        await put_concurrently(client, ((f"{prefix}/{i:04d}", f"value {i}")
                                        for i in range(count)), WRITERS)


async def _count(endpoints: list[str], prefix: str) -> int:
    async with Client(endpoints, timeout=20) as client:
        return (await client.range(prefix + "/", prefix=True, count_only=True)).count


async def _caught_up(cluster: ProcessCluster, leader: int, learner: int) -> bool:
    """Whether ``learner`` became a voter and applied what ``leader`` has (bounded wait)."""
    with trio.move_on_after(30):
        while True:
            lead, st = await cluster.status(leader), await cluster.status(learner)
            if lead and st and st.get("voter") and st["revision"] == lead["revision"]:
                return True
            await trio.sleep(0.1)
    return False


def _survivor_file(cluster: ProcessCluster) -> str:
    """cluster.yaml with the lost members 2 and 3 taken out and node 4 marked join."""
    lines = [line for line in cluster.config_path[None].read_text().splitlines()
             if not line.lstrip().startswith(("2:", "3:"))]
    path = cluster.directory / "recovered.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_recover_one_survivor_serves_alone_and_grows_by_member_add(tmp_path):
    cluster = ProcessCluster(tmp_path, 3, proxy=False, spares=1)
    try:
        cluster.start_all()
        trio.run(_write, cluster.endpoints, "before", KEYS)
        for lost in (2, 3):
            cluster.kill(lost)
            shutil.rmtree(cluster.node_dir(lost))

        survivor = str(cluster.node_dir(1))
        running = paxosd("recover", "--data-dir", survivor)
        assert running.returncode == 1 and "in use by another paxosd process" in running.stderr
        assert cluster.terminate(1) == 0
        config = _survivor_file(cluster)
        recovered = paxosd("recover", "--data-dir", survivor, "-c", config)
        assert recovered.returncode == 0, recovered.stderr
        assert "one-member cluster" in recovered.stdout and "note:" not in recovered.stdout

        cluster.config_path[1] = cluster.config_path[4] = cluster.directory / "recovered.yaml"
        cluster.start(1)
        alone = [f"127.0.0.1:{cluster.client_port[1]}"]
        assert trio.run(_count, alone, "before") == KEYS
        trio.run(_write, alone, "after", 50)

        added = paxosd("member", "add", "4", f"127.0.0.1:{cluster.peer_port[4]}",
                       f"127.0.0.1:{cluster.client_port[4]}", "-c", config)
        assert added.returncode == 0, added.stderr
        cluster.start(4, join=True)
        assert trio.run(_caught_up, cluster, 1, 4), trio.run(cluster.describe)
        both = alone + [f"127.0.0.1:{cluster.client_port[4]}"]
        assert trio.run(_count, both, "before") == KEYS
        assert trio.run(_count, both, "after") == 50
        assert not cluster.unexpected_exits()
    finally:
        cluster.close()
