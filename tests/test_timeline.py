"""bench/timeline.py and its probe (daemon.runtime.timeline): off by default, and a short run
on real processes traces every command end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_probe_is_off_without_the_environment_variable():
    code = ("import daemon.runtime.timeline as t, daemon.runtime.server; "
            "print(t.ENABLED, daemon.runtime.server.TIMELINE)")
    env = {k: v for k, v in os.environ.items() if k != "PAXOSD_TIMELINE"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_short_timeline_traces_every_command(tmp_path):
    out = tmp_path / "timeline.md"
    subprocess.run([sys.executable, "bench/timeline.py", "--commands", "30", "--warmup", "10",
                    "--disk-count", "20", "--disk-dir", str(tmp_path), "--out", str(out)],
                   cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    text = out.read_text()
    assert "30 of 30 commands were traced" in text
    assert "| [repl] follower fdatasync |" in text
    assert "| zero-filled |" in text
    end_to_end = next(line for line in text.splitlines() if line.startswith("| end to end"))
    assert end_to_end.split("|")[4].strip() == "30"  # every command has both ends
