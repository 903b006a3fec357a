"""One self-contained HTML page of a run's space-time diagram.

The page is a single file: the diagram model (``replicaio.trace.diagram``)
as inline JSON, and the page's own script and style (``diagram.js`` and
``diagram.css`` beside this module, package data) inline too. Opening it
needs no network and no server: ``file://`` is enough. How to read it:
docs/visualisation.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from replicaio.trace.diagram import build_diagram, load_log

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="replicaio">
<title>__TITLE__</title>
<style>
__CSS__
</style>
</head>
<body>
<header id="top">
  <h1 id="title">__TITLE__</h1>
  <span id="summary"></span>
  __CUT__
  <span id="perf"></span>
  <span class="spacer"></span>
  <label>time <select id="mode"><option value="time">virtual time</option>
    <option value="order">event order</option></select></label>
  <button id="zoom-in" title="zoom in (+)">+</button>
  <button id="zoom-out" title="zoom out (-)">&minus;</button>
  <button id="zoom-fit" title="whole run (0)">fit</button>
</header>
<main>
  <aside id="filters">
    <section id="violations-box"><h2>Violations</h2><ol id="violations"></ol></section>
    <section><h2>Nodes</h2><div id="node-filter"></div></section>
    <section><h2>Message types</h2><div id="type-filter"></div>
      <button id="types-all">all</button> <button id="types-none">none</button></section>
    <section><h2>Instance</h2>
      <input id="instance-filter" list="instance-list" placeholder="e.g. bcast/3/0">
      <datalist id="instance-list"></datalist></section>
    <section><h2>Term / view</h2>
      <input id="term-min" type="number" placeholder="min">
      <input id="term-max" type="number" placeholder="max"></section>
    <section><h2>Show</h2><div id="show-filter"></div></section>
    <section id="legend"><h2>Legend</h2><div id="legend-body"></div></section>
  </aside>
  <div id="canvas-box"><canvas id="canvas"></canvas></div>
  <aside id="details"><h2 id="details-title">Details</h2>
    <p class="hint">Click a step (dot) or a message (arrow). Drag or wheel to scroll,
    ctrl+wheel or +/&minus; to zoom.</p>
    <div id="details-actions"></div>
    <pre id="details-body"></pre></aside>
</main>
<script type="application/json" id="diagram-data">__DATA__</script>
<script>
__JS__
</script>
</body>
</html>
"""


def page_title(model: dict[str, Any]) -> str:
    meta = model["meta"]
    where = "live nodes" if meta.get("live") else f"seed {meta.get('seed')}"
    return f"replicaio: {meta.get('protocol')}, {meta.get('n')} nodes, {where}"


def escape_html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_html(model: dict[str, Any]) -> str:
    """The page for ``model`` (see the module docstring)."""
    folder = resources.files("replicaio.trace")
    script = folder.joinpath("diagram.js").read_text(encoding="utf-8")
    style = folder.joinpath("diagram.css").read_text(encoding="utf-8")
    # Inside <script>, "</" could end the element early; JSON allows "<\/".
    data = json.dumps(model, separators=(",", ":"), ensure_ascii=True).replace("</", "<\\/")
    cut = model["meta"].get("cut") or {}
    notice = "".join(
        f'<span class="cut-log" style="color:#b00;font-weight:bold">{escape_html(name)} was '
        f"{escape_html(why)}: drawn up to its last whole record.</span> "
        for name, why in sorted(cut.items()))
    parts = {"__TITLE__": escape_html(page_title(model)), "__CSS__": style, "__JS__": script,
             "__CUT__": notice}
    page = TEMPLATE
    for key, value in parts.items():
        page = page.replace(key, value)
    return page.replace("__DATA__", data)


def write_html(model: dict[str, Any], path: str | Path) -> int:
    """Write the page for ``model`` to ``path``; returns its size in bytes."""
    page = render_html(model).encode("utf-8")
    Path(path).write_bytes(page)
    return len(page)


def write_logs_html(logs: Sequence[str | Path], path: str | Path) -> dict[str, Any]:
    """Draw the event logs ``logs`` (one run, or live nodes' logs merged by time)
    into the page ``path``; returns what it drew. Message classes must be
    registered (import the assembly) for their fields to be named."""
    loaded = []
    for name in logs:
        with open(name, "rb") as stream:
            loaded.append(load_log(stream, Path(name).name))
    model = build_diagram(loaded)
    size = write_html(model, path)
    return {
        "html": str(path),
        "bytes": size,
        "steps": len(model["events"]["t"]),
        "messages": len(model["messages"]["t0"]),
        "violations": len(model["violations"]),
        "cut": dict(model["meta"]["cut"]),
    }
