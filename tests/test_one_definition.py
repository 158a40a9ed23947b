"""Each shared helper and each protocol constant is defined in one place; the rest import it.

Read from the source (module-level assignments and function definitions), so a copy that
drifts from the original cannot come back unnoticed.
"""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
TREES = ("daemon", "bench", "tests")

# Helper -> the one module that defines it (under any number of leading underscores).
HELPERS = {
    "free_ports": "daemon/tools/ports.py",
    "percentile": "daemon/tools/stats.py",
    "latency_summary": "daemon/tools/stats.py",
}
# Constant -> the one daemon module that assigns it (fastpath defines the limits and op codes;
# the daemon assigns none of them).
CONSTANTS = {
    **{name: "daemon/core/messages.py"
       for name in ("OK", "NOT_LEADER", "STALE", "BUSY", "ERROR", "SESSION_EXPIRED",
                    "REPLY_STATUSES")},
    **{name: None for name in ("OP_PUT", "OP_DELETE", "OP_CAS", "OP_READ", "U64_MAX", "SLOT_MAX",
                               "SLOT_LIMIT", "MAX_BALLOT", "MAX_ROUND", "BALLOT_CHOSEN")},
}


def _modules(*trees: str):
    for tree in trees:
        for path in sorted((ROOT / tree).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path))


def test_each_shared_helper_is_defined_once():
    found: dict[str, list[str]] = {name: [] for name in HELPERS}
    for rel, tree in _modules(*TREES):
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = node.name.lstrip("_")
                if name in found:
                    found[name].append(f"{rel}:{node.lineno}")
    for name, places in found.items():
        assert [p.split(":")[0] for p in places] == [HELPERS[name]], (name, places)


def test_each_protocol_constant_is_assigned_once_in_the_daemon():
    found: dict[str, list[str]] = {name: [] for name in CONSTANTS}
    for rel, tree in _modules("daemon"):
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else (
                [node.target] if isinstance(node, ast.AnnAssign) else [])
            for target in targets:
                if isinstance(target, ast.Name) and target.id in found:
                    found[target.id].append(rel)
    for name, places in found.items():
        expected = [CONSTANTS[name]] if CONSTANTS[name] else []
        assert places == expected, (name, places)
