"""How events reach the core (Server._to_core): run in the caller's task when the core task is
parked on an empty inbox, queued behind anything already handed to it otherwise, so each
source's order holds; a failure inside a turn run for a caller stops the node (CoreFailure)
instead of passing for the caller's fault."""

from __future__ import annotations

import trio
import trio.testing

from daemon.runtime.config import load_config
from daemon.runtime.server import EV_PEER, CoreFailure, Server
from tests.test_server import write_config


def server_with_recorded_turns(tmp_path) -> tuple[Server, list]:
    """A Server whose core turns only record (event payloads, the task that ran them)."""
    server = Server(load_config(write_config(tmp_path, members=1), node_id=1))
    turns: list = []

    def turn(events: list) -> None:
        turns.append(([payload for _, payload in events], trio.lowlevel.current_task()))

    server._turn = turn
    return server, turns


async def test_a_parked_core_runs_the_turn_in_the_callers_task(tmp_path):
    server, turns = server_with_recorded_turns(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._core_loop)
        await trio.testing.wait_all_tasks_blocked()
        await server._to_core((EV_PEER, "a"))
        assert turns == [(["a"], trio.lowlevel.current_task())]
        nursery.cancel_scope.cancel()


async def test_an_event_already_handed_to_the_core_keeps_its_place(tmp_path):
    server, turns = server_with_recorded_turns(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._core_loop)
        await trio.testing.wait_all_tasks_blocked()
        core_task = next(t for t in nursery.child_tasks)
        # Handed straight to the parked core task (the inbox's buffer stays empty): the next
        # event must queue behind it, not run first in this task.
        server._inbox_send.send_nowait((EV_PEER, "first"))
        await server._to_core((EV_PEER, "second"))
        await trio.testing.wait_all_tasks_blocked()
        assert [payloads for payloads, _ in turns] in (
            [["first"], ["second"]], [["first", "second"]])
        assert all(task is core_task for _, task in turns)
        nursery.cancel_scope.cancel()


async def test_own_messages_left_by_a_callers_turn_wake_the_core(tmp_path):
    server, turns = server_with_recorded_turns(tmp_path)

    def turn(events: list) -> None:
        turns.append(([p for _, p in events], trio.lowlevel.current_task()))
        if events:
            server._self_msgs.append("its own vote")  # as a leader's turn leaves it
        else:
            server._self_msgs.clear()  # the core task's turn takes them

    server._turn = turn
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._core_loop)
        await trio.testing.wait_all_tasks_blocked()
        await server._to_core((EV_PEER, "a"))
        await trio.testing.wait_all_tasks_blocked()
        assert not server._self_msgs
        assert turns[0][1] is trio.lowlevel.current_task() and turns[1][1] is not turns[0][1]
        nursery.cancel_scope.cancel()


async def test_a_failure_in_a_turn_run_for_a_caller_is_a_core_failure(tmp_path):
    server, _ = server_with_recorded_turns(tmp_path)

    def turn(events: list) -> None:
        raise KeyError("a bug")

    server._turn = turn
    caught: list = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server._core_loop)
            await trio.testing.wait_all_tasks_blocked()
            await server._to_core((EV_PEER, "a"))
    except* CoreFailure as group:
        caught.extend(group.exceptions)
    assert [str(e) for e in caught] == ["the core failed: KeyError('a bug')"]
