"""Headless Chromium for tests and benchmarks of the pages replicaio writes.

Debian's ``chromium`` package (``./run setup`` installs it when run as root
where apt-get exists). :func:`find_chromium` says where it is, or why it is
not there, so a test can skip saying exactly that. Chromium runs with a fresh
profile and no background networking (the machine has no network; without
these flags it keeps trying), renders the page, runs its scripts for a
virtual-time budget, then dumps the DOM or writes a screenshot.
:func:`read_png` decodes the screenshot into RGB rows (no imaging library
needed), so a test can check what was drawn.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import zlib
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--mute-audio",
)
TIMEOUT_S = 120


def find_chromium() -> tuple[str | None, str]:
    """(path, "") when Chromium is installed, else (None, why not)."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path is not None:
            return path, ""
    return None, ("chromium is not installed (Debian package 'chromium'; `./run setup` "
                  "installs it when run as root where apt-get exists)")


def run_chromium(chromium: str, url: str, *arguments: str, width: int = 1400,
                 height: int = 900, budget_ms: int = 5000) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="replicaio-chromium-") as profile:
        return subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
             f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}",
             *arguments, url],
            capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
        )


def dump_dom(chromium: str, url: str, **options: int) -> str:
    """The page's DOM after its scripts ran (``--dump-dom``)."""
    done = run_chromium(chromium, url, "--dump-dom", **options)
    if done.returncode != 0 or "<html" not in done.stdout:
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def screenshot(chromium: str, url: str, path: Path, **options: int) -> Path:
    """A PNG of the rendered page at ``path``."""
    done = run_chromium(chromium, url, f"--screenshot={path}", **options)
    if done.returncode != 0 or not path.exists():
        raise RuntimeError(f"chromium made no screenshot ({done.returncode}): "
                           f"{done.stderr[-2000:]}")
    return path


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB or RGBA, non-interlaced PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, chunks, header = 8, [], b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        kind = data[position + 4:position + 8]
        body = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and color in (2, 6) and interlace == 0, "unsupported PNG layout"
    channels = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for row in range(height):
        start = row * (stride + 1)
        line = unfilter(raw[start], bytearray(raw[start + 1:start + 1 + stride]), previous,
                        channels)
        previous = line
        rows.append(bytes(line) if channels == 3 else bytes(
            value for index, value in enumerate(line) if index % 4 != 3))
    return width, height, rows


def unfilter(kind: int, line: bytearray, previous: bytearray, step: int) -> bytearray:
    for index in range(len(line)):
        left = line[index - step] if index >= step else 0
        up = previous[index]
        corner = previous[index - step] if index >= step else 0
        if kind == 1:
            line[index] = (line[index] + left) & 0xFF
        elif kind == 2:
            line[index] = (line[index] + up) & 0xFF
        elif kind == 3:
            line[index] = (line[index] + (left + up) // 2) & 0xFF
        elif kind == 4:
            estimate = left + up - corner
            pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
            nearest = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
            line[index] = (line[index] + nearest) & 0xFF
    return line
