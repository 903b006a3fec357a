"""How large a run the HTML space-time diagram draws, and how fast.

    .venv/bin/python bench/bench_viz.py [--protocol bracha --nodes 7 --profile long --seed 1]

Runs one simulation with ``--log``, then measures: building the diagram model
and writing the page (CPU seconds, page size), and in headless Chromium
(software rendering, ``--disable-gpu``) the page's own timing of its frames:
the first frame with the whole run in view, and frames scrolled through the
run at a few zoom levels (``#bench=N``; median and worst frame, and how many
arrows the busiest frame drew). Figures are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import replicaio.assembly  # noqa: F401 (message classes: decoded fields get names)
from replicaio.cli import main as replicaio_main
from replicaio.testing.browser import dump_dom, find_chromium
from replicaio.trace.html import write_logs_html


def perf_of(dom: str) -> dict[str, str]:
    found = re.search(r'<span id="perf"([^>]*)>', dom)
    assert found is not None
    return dict(re.findall(r'data-([\w-]+)="([^"]*)"', found.group(1)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", default="bracha")
    parser.add_argument("--nodes", default="7")
    parser.add_argument("--profile", default="long")
    parser.add_argument("--seed", default="1")
    parser.add_argument("--extra", default="", help="more sim arguments, space-separated")
    args = parser.parse_args()
    chromium, why = find_chromium()
    folder = Path(tempfile.mkdtemp(prefix="replicaio-bench-viz-"))
    log, page = folder / "run.log", folder / "run.html"
    argv = ["sim", args.protocol, "--nodes", args.nodes, "--profile", args.profile,
            "--seed", args.seed, "--log", str(log), "--json", *args.extra.split()]
    replicaio_main(argv)
    started = time.process_time()
    drawn = write_logs_html([log], page)
    drawn["build_seconds"] = round(time.process_time() - started, 2)
    drawn["log_bytes"] = log.stat().st_size
    print(json.dumps(drawn))
    if chromium is None:
        print(f"no browser figures: {why}")
        return
    for zoom in ("fit", "10ms", "100ms"):
        fragment = "#bench=30" if zoom == "fit" else \
            f"#t=0-{10_000 if zoom == '10ms' else 100_000}&bench=30"
        started = time.perf_counter()
        perf = perf_of(dump_dom(chromium, page.as_uri() + fragment, budget_ms=60_000))
        wall = time.perf_counter() - started
        print(json.dumps({"view": zoom, "first_frame_ms": perf.get("ms"),
                          "first_frame_arrows": perf.get("arrows"),
                          "frame_median_ms": perf.get("bench-median-ms"),
                          "frame_max_ms": perf.get("bench-max-ms"),
                          "busiest_frame_arrows": perf.get("bench-arrows-max"),
                          "chromium_wall_seconds": round(wall, 1)}))


if __name__ == "__main__":
    main()
