"""docs/adr/README.md, the index of the architecture decision records, names every
ADR file under its number, and names no file that is not there: an ADR added
without its row (or a row left behind by a renamed file) fails here, so a
newcomer's list of the decisions is the whole list."""

from __future__ import annotations

import re
from pathlib import Path

ADR = Path(__file__).resolve().parent.parent / "docs" / "adr"
ROW = re.compile(r"^\| (\d{4}) \| \[[^\]]+\]\(([^)]+)\) \| ([^|]+) \|$")


def test_the_index_names_every_adr_once() -> None:
    files = sorted(path.name for path in ADR.glob("[0-9][0-9][0-9][0-9]-*.md"))
    rows = [ROW.match(line) for line in (ADR / "README.md").read_text().splitlines()]
    listed = [(match.group(1), match.group(2)) for match in rows if match]
    missing = sorted(set(files) - {name for _, name in listed})
    assert not missing, f"docs/adr/README.md has no row for {missing}: add one per ADR"
    stale = sorted({name for _, name in listed} - set(files))
    assert not stale, f"docs/adr/README.md lists files that do not exist: {stale}"
    assert all(name.startswith(number) for number, name in listed), listed
    assert [name for _, name in listed] == files, "one row per ADR, in number order"
