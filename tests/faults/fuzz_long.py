"""The long fuzz run of the frame decoder and message validation.

    python -m tests.faults.fuzz_long --runs 1000000            # atheris (libFuzzer), if installed
    python -m tests.faults.fuzz_long --runs 1000000 --hypothesis

Each input is what a connection could deliver: it goes through tests.faults.hostile.feed_stream
(``fastpath.FrameReader`` with a 64 KiB limit, ``fastpath.loads``, ``wire.check_hello``,
``wire.decode_peer``, ``wire.decode_request``), in the pieces the input's first bytes choose.
Anything raised but ``FrameError`` and ``WireError`` is a crash: atheris stops and writes the
input to ``crash-*``; the hypothesis mode prints the shrunk input.

With atheris the Python side (daemon.codec.wire and the harness) is instrumented for coverage, so
the fuzzer steers towards new branches of the validation; fastpath is compiled C without
coverage hooks and is reached through it. The corpus starts from valid frames of every message
kind (tests.faults.hostile.SEEDS), written to ``--corpus`` (default a temporary directory).

A hang shows as libFuzzer's ``-timeout`` (default here 10 s for one input) in atheris mode.
libFuzzer ends the process itself: "Done N runs" and its final stats are the result; other
libFuzzer flags (``-jobs``, ``-seed``, ...) pass through.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests.faults.hostile import DOCUMENTED, seed_frames

MAX_INPUT = 4096


def split(data: bytes) -> list[bytes]:
    """Use the first byte (up to 7 cut points) and the next ones (where) to cut the rest."""
    if not data:
        return [b""]
    ncuts = data[0] & 7
    cuts = sorted(data[1 + i] for i in range(min(ncuts, len(data) - 1)))
    body = data[1 + ncuts:]
    out, last = [], 0
    for c in cuts:
        at = min(len(body), c * max(1, len(body)) // 256)
        out.append(body[last:at])
        last = max(last, at)
    out.append(body[last:])
    return out


def one_input(data: bytes) -> None:
    from tests.faults.hostile import feed_stream

    try:
        feed_stream(split(data))
    except DOCUMENTED:
        pass


def run_atheris(runs: int, corpus: Path, extra: list[str]) -> int:
    import atheris

    import daemon.codec.wire  # noqa: F401
    import tests.faults.hostile  # noqa: F401

    atheris.instrument_all()  # what is loaded by now: wire, the harness, their imports
    for i, frame in enumerate(seed_frames()):
        (corpus / f"seed-{i}").write_bytes(b"\x00" + frame)
        (corpus / f"seed-{i}-split").write_bytes(b"\x02\x10\x80" + frame + frame)
    args = [sys.argv[0], f"-atheris_runs={runs + 1}", f"-max_len={MAX_INPUT}", "-timeout=10",
            "-print_final_stats=1", *extra, str(corpus)]
    atheris.Setup(args, lambda data: one_input(bytes(data)))
    atheris.Fuzz()
    return 0


def run_hypothesis(runs: int) -> int:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    frames = seed_frames()
    inputs = (st.binary(max_size=MAX_INPUT)
              | st.builds(lambda i, cut, junk: b"\x01" + bytes([cut]) + frames[i % len(frames)]
                          + junk, st.integers(0, 99), st.integers(0, 255), st.binary(max_size=64)))

    @settings(max_examples=runs, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(inputs)
    def fuzz(data):
        one_input(data)

    fuzz()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.fuzz_long",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--hypothesis", action="store_true",
                        help="use hypothesis instead of atheris")
    parser.add_argument("--corpus", help="corpus directory (atheris; default: a new one)")
    args, extra = parser.parse_known_args(argv)
    started = time.monotonic()
    use_hypothesis = args.hypothesis
    if not use_hypothesis:
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("atheris is not installed: falling back to hypothesis", file=sys.stderr)
            use_hypothesis = True
    if not use_hypothesis:
        corpus = Path(args.corpus or tempfile.mkdtemp(prefix="paxosd-fuzz-"))
        corpus.mkdir(parents=True, exist_ok=True)
        return run_atheris(args.runs, corpus, extra)  # libFuzzer exits the process
    code = run_hypothesis(args.runs)
    print(f"fuzz_long: {args.runs} hypothesis inputs, no crash, "
          f"{time.monotonic() - started:.0f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
