"""The HTML space-time diagram, opened in headless Chromium: the DOM it renders
(summary, violations, details of a clicked step, filters) and a screenshot whose
pixels show the violation's chain. Skips, saying why, only where Chromium is not
installed (`./run setup` installs Debian's package when run as root).

Set REPLICAIO_WRITE_DOC_IMAGES=1 to also refresh the screenshots in docs/images/
(docs/visualisation.md shows them)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from replicaio.cli import main
from replicaio.testing.browser import dump_dom, find_chromium, read_png, screenshot
from replicaio.trace.diagram import build_diagram, load_log
from replicaio.trace.html import render_html

CHROMIUM, WHY_NOT = find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason=WHY_NOT)
DOC_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
CHAIN_RED = (0xD6, 0x27, 0x28)
BROKEN_RUN = ["sim", "echo-weak", "--nodes", "4", "--byzantine", "1", "--seed", "1"]
FAULTY_RUN = ["sim", "bracha", "--nodes", "4", "--byzantine", "1", "--faults",
              "crash,partition,loss,dup,reorder", "--seed", "3"]


def draw(tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
         ) -> tuple[Path, dict[str, Any]]:
    page, log = tmp_path / "run.html", tmp_path / "run.log"
    main([*argv, "--json", "--log", str(log), "--html", str(page)])
    assert "diagram:" in capsys.readouterr().err
    with log.open("rb") as stream:
        return page, build_diagram([load_log(stream, "run.log")])


def element(dom: str, element_id: str) -> tuple[dict[str, str], str]:
    """(attributes, text) of the element with ``element_id`` in ``dom``."""
    found = re.search(rf'<(\w+) id="{element_id}"([^>]*)>(.*?)</\1>', dom, re.S)
    assert found is not None, f"no #{element_id} in the rendered page"
    attributes = dict(re.findall(r'([\w-]+)="([^"]*)"', found.group(2)))
    return attributes, html.unescape(re.sub(r"<[^>]+>", "", found.group(3)))


def test_sim_json_output_is_unchanged_by_html(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    main([*FAULTY_RUN, "--json"])
    plain = json.loads(capsys.readouterr().out)
    main([*FAULTY_RUN, "--json", "--html", str(tmp_path / "run.html")])
    drawn = capsys.readouterr()
    with_html = json.loads(drawn.out)
    plain["stats"].pop("wall_seconds")
    with_html["stats"].pop("wall_seconds")
    assert plain == with_html
    assert f"-> {tmp_path / 'run.html'}" in drawn.err
    assert not list(tmp_path.glob("*.log")) and (tmp_path / "run.html").stat().st_size > 0


def test_the_page_is_self_contained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page, model = draw(tmp_path, FAULTY_RUN, capsys)
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=|url\(|@import|fetch\(|XMLHttpRequest""", text)
    assert text.count("<script") == 2  # the data and the page's own script, both inline
    assert render_html(model) == text


@needs_chromium
def test_chromium_renders_the_summary_and_the_violation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert CHROMIUM is not None
    page, model = draw(tmp_path, BROKEN_RUN, capsys)
    dom = dump_dom(CHROMIUM, page.as_uri())
    assert 'data-ready="1"' in dom
    _, title = element(dom, "title")
    assert title == "replicaio: echo-weak, 4 nodes, seed 1"
    summary, _ = element(dom, "summary")
    columns = model["messages"]
    assert int(summary["data-steps"]) == len(model["events"]["t"])
    assert int(summary["data-messages"]) == len(columns["t0"])
    assert int(summary["data-lost"]) == sum(1 for flags in columns["flags"] if flags & 1)
    assert summary["data-violations"] == "1"
    _, violations = element(dom, "violations")
    assert "agreement at node 1" in violations and "delivered" in violations
    perf, _ = element(dom, "perf")
    assert int(perf["data-arrows"]) == len(columns["t0"])  # fitted: the whole run drawn


@needs_chromium
def test_a_selected_step_shows_its_fields_and_filters_cut_the_arrows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert CHROMIUM is not None
    page, model = draw(tmp_path, BROKEN_RUN, capsys)
    event = model["violations"][0]["event"]
    dom = dump_dom(CHROMIUM, page.as_uri() + f"#select=e{event}")
    _, heading = element(dom, "details-title")
    assert heading == f"Step {event}: node 1, receive"
    _, body = element(dom, "details-body")
    facts = json.loads(body)
    assert facts["node"] == 1 and facts["time_us"] == model["violations"][0]["time_us"]
    assert facts["message"]["fields"]["type"] == "Envelope"
    assert any(output["type"] == "Delivered" for output in facts["outputs"])
    assert facts["violations"][0].startswith("agreement")
    echo = model["types"].index("ECHO")
    dom = dump_dom(CHROMIUM, page.as_uri() + "#type=ECHO&node=0,1,3")
    perf, _ = element(dom, "perf")
    columns = model["messages"]
    expected = sum(1 for m, kind in enumerate(columns["type"]) if kind == echo
                   and 2 not in (columns["src"][m], columns["dst"][m]))
    assert 0 < int(perf["data-arrows"]) == expected


@needs_chromium
def test_the_screenshot_shows_the_chain_that_led_to_the_violation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert CHROMIUM is not None
    page, _ = draw(tmp_path, BROKEN_RUN, capsys)
    plain = screenshot(CHROMIUM, page.as_uri(), tmp_path / "plain.png", width=1000, height=640)
    chained = screenshot(CHROMIUM, page.as_uri() + "#violation=0", tmp_path / "chain.png",
                         width=1000, height=640)
    width, height, rows = read_png(chained)
    assert (width, height) == (1000, 640)
    red = count_pixels(rows, CHAIN_RED)
    assert red > 300, f"only {red} pixels of the chain's red"
    colours = {row[index:index + 3] for row in rows[::7] for index in range(0, len(row), 21)}
    assert len(colours) > 20, "the page looks blank"
    _, _, plain_rows = read_png(plain)
    assert count_pixels(plain_rows, CHAIN_RED) < red  # the chain is what added the red
    if os.environ.get("REPLICAIO_WRITE_DOC_IMAGES") == "1":
        DOC_IMAGES.mkdir(exist_ok=True)
        shutil.copy(screenshot(CHROMIUM, page.as_uri() + "#violation=0",
                               tmp_path / "doc.png", width=1400, height=860),
                    DOC_IMAGES / "diagram-violation.png")


@needs_chromium
def test_faults_are_drawn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert CHROMIUM is not None
    page, model = draw(tmp_path, FAULTY_RUN, capsys)
    dom = dump_dom(CHROMIUM, page.as_uri())
    summary, text = element(dom, "summary")
    columns = model["messages"]
    assert int(summary["data-duplicates"]) == sum(1 for f in columns["flags"] if f & 2)
    assert int(summary["data-reordered"]) == sum(1 for f in columns["flags"] if f & 4)
    assert f"{len(model['downs'])} down spans, {len(model['partitions'])} partitions" in text
    shot = screenshot(CHROMIUM, page.as_uri() + "#t=90000-110000", tmp_path / "faults.png",
                      width=1000, height=640)
    _, _, rows = read_png(shot)
    partition_tint = count_pixels(rows, (0xFF, 0xEC, 0xD3), tolerance=12)
    assert partition_tint > 1000, "the partition band is not drawn"
    if os.environ.get("REPLICAIO_WRITE_DOC_IMAGES") == "1":
        DOC_IMAGES.mkdir(exist_ok=True)
        shutil.copy(screenshot(CHROMIUM, page.as_uri() + "#mode=order&t=0-40000",
                               tmp_path / "doc.png", width=1400, height=860),
                    DOC_IMAGES / "diagram-faults.png")


def count_pixels(rows: list[bytes], colour: tuple[int, int, int], tolerance: int = 30) -> int:
    red, green, blue = colour
    found = 0
    for row in rows:
        for index in range(0, len(row), 3):
            if (abs(row[index] - red) <= tolerance and abs(row[index + 1] - green) <= tolerance
                    and abs(row[index + 2] - blue) <= tolerance):
                found += 1
    return found
