"""The README's "Using paxosd from any language": its curl examples, run verbatim with real
``curl`` against a live 3-node cluster.

The convention (the section states it): every fenced ``sh`` block is one example, run with
``bash`` and ``PAXOSD`` set to a node's API URL (``http://127.0.0.1:PORT``); a fenced ``text``
block right after it is its output, where ``...`` stands for anything (trailing blanks of each
line ignored). Examples run in order, on a fresh cluster of this module's own, so revisions
and lease ids are the ones the README shows. A ``curl -N`` example (a watch) streams until
stopped: it is stopped, by its process group id, once its output is all there.

An example that uses a route the API does not describe fails, naming the route (the README
may not show what the server does not serve).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.http_cluster import http_cluster  # noqa: F401 - the fixture

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "### Using paxosd from any language"
RUN_TIMEOUT = 30.0  # seconds one example may take
STREAM_TIMEOUT = 20.0  # seconds a streaming example has to show its output


@dataclass(frozen=True)
class Example:
    line: int  # of the README, where the sh block starts
    command: str
    expected: str | None

    @property
    def streams(self) -> bool:
        return bool(re.search(r"curl\s+-\w*N", self.command))


def section(text: str) -> tuple[int, list[str]]:
    """(first line number, lines) of the section, up to the next heading of its level or
    above."""
    lines = text.splitlines()
    start = lines.index(SECTION)
    end = next((i for i in range(start + 1, len(lines))
                if re.match(r"#{1,3} ", lines[i])), len(lines))
    return start + 1, lines[start:end]


def examples(text: str) -> list[Example]:
    """Every ``sh`` block of the section with the ``text`` block after it (if any)."""
    first, lines = section(text)
    blocks: list[tuple[str, int, str]] = []
    i = 0
    while i < len(lines):
        fence = re.fullmatch(r"```(\w*)", lines[i])
        if fence is None:
            i += 1
            continue
        end = lines.index("```", i + 1)
        blocks.append((fence.group(1), first + i, "\n".join(lines[i + 1:end])))
        i = end + 1
    found = []
    for n, (kind, line, body) in enumerate(blocks):
        if kind == "sh":
            after = blocks[n + 1] if n + 1 < len(blocks) else None
            found.append(Example(line, body, after[2] if after and after[0] == "text" else None))
        else:
            assert kind == "text" and n > 0 and blocks[n - 1][0] == "sh", \
                f"README line {line}: a {kind or 'bare'} block that follows no sh block"
    return found


def matches(expected: str, actual: str) -> bool:
    """Whether ``actual`` is ``expected`` with each ``...`` standing for anything."""
    def tidy(text: str) -> str:
        return "\n".join(line.rstrip() for line in text.strip().splitlines())
    pattern = ".*?".join(re.escape(part) for part in tidy(expected).split("..."))
    return re.fullmatch(pattern, tidy(actual), re.DOTALL) is not None


def routes_used(command: str) -> list[tuple[str, str]]:
    """(method, path) of every curl in the command, as curl sends it."""
    used = []
    for call in re.split(r"\n|\|", command):
        if "curl" not in call:
            continue
        method = re.search(r"-X\s+(\w+)", call)
        data = re.search(r"\s(-d|--data\S*)\s", call)
        path = re.search(r'\$PAXOSD(/[^"?\s]*)', call)
        assert path is not None, f"a curl without $PAXOSD: {call!r}"
        used.append((method.group(1) if method else "POST" if data else "GET", path.group(1)))
    return used


def served(doc: dict, method: str, path: str) -> bool:
    for template, operations in doc["paths"].items():
        pattern = re.sub(r"\\\{key\\\}", ".+", re.escape(template))
        pattern = re.sub(r"\\\{\w+\\\}", "[^/]+", pattern)
        if re.fullmatch(pattern, path) and method.lower() in operations:
            return True
    return False


def run(example: Example, url: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of the example run by bash with PAXOSD=url."""
    env = {**os.environ, "PAXOSD": url}
    script = "set -eo pipefail\n" + example.command
    if not example.streams:
        done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                              timeout=RUN_TIMEOUT)
        return done.returncode, done.stdout, done.stderr
    proc = subprocess.Popen(["bash", "-c", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    deadline = time.monotonic() + STREAM_TIMEOUT
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if example.expected is not None and matches(example.expected, "".join(out)):
                break
            time.sleep(0.05)
        status = proc.poll()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the group bash -c made: bash and curl
        proc.wait(timeout=RUN_TIMEOUT)
        reader.join(RUN_TIMEOUT)
    # stopped while streaming, as a reader's Ctrl-C would: that is its success
    return (0 if status is None else status), "".join(out), proc.stderr.read()


def test_the_section_has_every_example_the_api_needs():
    found = examples(README.read_text())
    text = "\n".join(e.command for e in found)
    for needed in ["-X PUT", "/v1/kv/greeting\"", "format=json", "If-Match", "prefix=",
                   "-X DELETE \"$PAXOSD/v1/kv/", "/v1/txn", "/v1/lease\"", "?lease=",
                   "/keepalive", "curl -sN \"$PAXOSD/v1/watch", "/v1/status", "/v1/members",
                   "/livez", "/readyz", "/metrics"]:
        assert needed in text, f"no example with {needed!r}"
    for example in found:
        assert "127.0.0.1" not in example.command and "$PAXOSD" in example.command, \
            f"README line {example.line}: the base URL is $PAXOSD"


def test_the_readme_examples_run_verbatim_against_a_live_cluster(http_cluster):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed: the README's examples are curl commands")
    import httpx
    doc = httpx.get(http_cluster.url(1) + "/v1/openapi.json", timeout=10).json()
    url = http_cluster.url(1)
    for example in examples(README.read_text()):
        missing = [f"{m} {p}" for m, p in routes_used(example.command)
                   if not served(doc, m, p)]
        assert not missing, (f"README line {example.line} uses {', '.join(missing)}, which "
                             f"the API's description does not have")
        status, out, err = run(example, url)
        assert status == 0, f"README line {example.line}: exit {status}\n{err}"
        if example.expected is not None:
            assert matches(example.expected, out), (
                f"README line {example.line}: the output is not what the README shows\n"
                f"--- README\n{example.expected}\n--- got\n{out}")
