"""Load the hot modules compiled by Cython when they match their source.

``./run setup`` compiles the modules on the simulator's and the node's hot
path (``replicaio.compiled_build.HOT_MODULES``) with Cython, from the same
``.py`` files, unchanged: pure-Python mode with annotation typing off, so
every name, integer and exception behaves as the interpreter's. The results
go to ``replicaio/_compiled/`` beside a manifest of each source's SHA-256.

Guarantee: a compiled module is loaded only when the SHA-256 of its ``.py``
file (and of the ``.pxd`` beside it, if any: ADR 0036, and of every ``.pxd``
that one cimports, transitively: ADR 0038) now equals the one it was compiled
from, and only when every module it cimports is loaded compiled as well (its
code reads their objects' C structs: beside a module imported as source it
would fail at import, or worse). Anything else is imported as source (and
recompiled by the next ``./run setup`` or ``./run test``), so a stale build
never runs. The event log hash of every run is the same
compiled or not (``tests/test_compiled.py`` compares them on several
targets); only speed differs.

``REPLICAIO_COMPILED=0`` in the environment turns the compiled modules off
(``bench_sim.py --profile`` and ``--opcodes`` rerun themselves so: cProfile
and the bytecode tracer see a compiled module as one opaque call). Without a
build (no C compiler, a wheel install), every module is imported as source.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
BUILD_DIR = PACKAGE_DIR / "_compiled"
MANIFEST = "manifest.json"
ENV_SWITCH = "REPLICAIO_COMPILED"


def source_path(module: str, package_dir: Path = PACKAGE_DIR) -> Path:
    """The ``.py`` file of a dotted module name under the package directory."""
    parts = module.split(".")
    assert parts[0] == "replicaio", module
    return package_dir.joinpath(*parts[1:]).with_suffix(".py")


_CIMPORT = re.compile(
    r"^(?:from\s+(replicaio(?:\.\w+)+)\s+cimport\b|cimport\s+(replicaio(?:\.\w+)+))",
    re.MULTILINE,
)


def cimports(declarations: str) -> list[str]:
    """The project's modules a ``.pxd`` text cimports (``from replicaio.x cimport
    Y`` or ``cimport replicaio.x``), in order of appearance."""
    return [match.group(1) or match.group(2) for match in _CIMPORT.finditer(declarations)]


def _closure(names: list[str], package_dir: Path, without: str = "") -> list[str]:
    found: set[str] = set()
    todo = [name for name in names if name != without]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        path = source_path(name, package_dir).with_suffix(".pxd")
        if path.is_file():
            todo += [other for other in cimports(path.read_text()) if other != without]
    return sorted(found)


def cimported(module: str, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Every module whose declarations ``module``'s ``.pxd`` depends on: the ones it
    cimports, theirs, and so on (sorted; without ``module`` itself)."""
    path = source_path(module, package_dir).with_suffix(".pxd")
    if not path.is_file():
        return []
    return _closure(cimports(path.read_text()), package_dir, without=module)


def source_digest(path: Path, package_dir: Path = PACKAGE_DIR) -> str:
    """The SHA-256 of a module's ``.py`` file, of the ``.pxd`` beside it when there
    is one (its typed declarations are part of what was compiled), and of the
    ``.pxd`` of every module that one cimports, transitively (their struct layouts
    are compiled into this module's code: ADR 0038). ``package_dir``: where the
    cimported modules' files are."""
    digest = hashlib.sha256(path.read_bytes())
    declarations = path.with_suffix(".pxd")
    if declarations.is_file():
        text = declarations.read_bytes()
        digest.update(b"\0pxd\0")
        digest.update(text)
        for name in _closure(cimports(text.decode()), package_dir):
            other = source_path(name, package_dir).with_suffix(".pxd")
            digest.update(b"\0cimport\0" + name.encode() + b"\0")
            digest.update(other.read_bytes() if other.is_file() else b"\0missing\0")
    return digest.hexdigest()


# ``cdef class Line(Slotted):`` names its extension-type base (ADR 0043).
_CDEF_CLASS = re.compile(r"^cdef class (\w+)(?:\(\w+\))?:\n((?:    .*\n?)*)", re.MULTILINE)
# An attribute declaration in a class body: ``cdef public object a, b`` or, for
# an attribute typed with another declared class (ADR 0038), ``cdef public Raft raft``.
ATTRIBUTE = re.compile(r"^cdef public (\w+) (\w+(?:\s*,\s*\w+)*)$")
_DECLARATIONS: dict[str, dict[str, tuple[str, ...]]] = {}


def declarations(module: str) -> dict[str, tuple[str, ...]]:
    """The classes the ``.pxd`` beside ``module`` declares as extension types
    (ADR 0036), each with its declared attributes in order; empty when none."""
    found = _DECLARATIONS.get(module)
    if found is None:
        found = {}
        path = source_path(module).with_suffix(".pxd")
        if path.is_file():
            for match in _CDEF_CLASS.finditer(path.read_text()):
                names: list[str] = []
                for line in match.group(2).splitlines():
                    attribute = ATTRIBUTE.match(line.strip())
                    if attribute:
                        names += [name.strip() for name in attribute.group(2).split(",")]
                found[match.group(1)] = tuple(names)
        _DECLARATIONS[module] = found
    return found


def abi_tag() -> str:
    """The interpreter a build is for (an extension built for another will not load)."""
    return f"{sys.implementation.cache_tag}-{sys.platform}-{os.uname().machine}"


@dataclass(frozen=True)
class Entry:
    """One compiled module: its extension file and the source digest it came from."""

    module: str
    library: Path
    digest: str


def read_manifest(build_dir: Path = BUILD_DIR) -> dict[str, Entry]:
    """The manifest's entries for this interpreter; empty when there is none or it is unreadable."""
    try:
        raw = json.loads((build_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict) or raw.get("abi") != abi_tag():
        return {}
    modules = raw.get("modules")
    if not isinstance(modules, dict):
        return {}
    entries: dict[str, Entry] = {}
    for module, item in modules.items():
        if isinstance(item, dict) and isinstance(item.get("library"), str) \
                and isinstance(item.get("sha256"), str):
            entries[module] = Entry(module, build_dir / item["library"], item["sha256"])
    return entries


class CompiledFinder(importlib.abc.MetaPathFinder):
    """A meta path finder that answers the compiled extension of a listed module.

    It answers only for a module in the manifest whose extension file exists,
    whose source's digest matches, and each of whose cimported modules
    (``cimported``) would be answered too and is not already imported as
    source; for anything else it answers ``None`` and the normal finders
    import the source.
    """

    def __init__(self, entries: dict[str, Entry], package_dir: Path = PACKAGE_DIR) -> None:
        self.entries = entries
        self.package_dir = package_dir
        self.loaded: list[str] = []
        self.stale: list[str] = []

    def fresh(self, module: str) -> bool:
        """Whether ``module`` has a build of its current source and declarations
        (read again at every call: a source edited meanwhile is stale at once)."""
        entry = self.entries.get(module)
        try:
            return entry is not None and entry.library.is_file() and source_digest(
                source_path(module, self.package_dir), self.package_dir) == entry.digest
        except OSError:
            return False

    def loadable(self, module: str) -> bool:
        """Fresh, and so is every module it cimports."""
        return self.fresh(module) and all(
            self.fresh(name) for name in cimported(module, self.package_dir))

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        entry = self.entries.get(fullname)
        if entry is None:
            return None
        # A cimported module already imported, but not by us, is source: its
        # classes are not the structs this build reads.
        if not self.loadable(fullname) or any(
            name in sys.modules and name not in self.loaded
            for name in cimported(fullname, self.package_dir)
        ):
            self.stale.append(fullname)
            return None
        self.loaded.append(fullname)
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(entry.library))
        spec = importlib.machinery.ModuleSpec(fullname, loader, origin=str(entry.library))
        spec.has_location = True
        return spec


_finder: CompiledFinder | None = None


def install() -> CompiledFinder | None:
    """Put the finder first on ``sys.meta_path`` (once), unless switched off or unbuilt."""
    global _finder
    if _finder is not None:
        return _finder
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    entries = read_manifest()
    if not entries:
        return None
    _finder = CompiledFinder(entries)
    sys.meta_path.insert(0, _finder)
    return _finder


def status() -> dict[str, object]:
    """What this process runs: for benchmarks to print beside their figures.

    True whenever it is called: the manifest's modules not imported yet are
    imported first (compiled where the finder answers for them, else as source),
    so "loaded" is every module this process runs compiled, "stale" every one of
    the manifest it runs as source, even before the hot path has run once.
    """
    if _finder is None:
        reason = "off (REPLICAIO_COMPILED=0)" if os.environ.get(ENV_SWITCH, "1") == "0" \
            else "not built"
        return {"compiled": False, "reason": reason, "loaded": [], "stale": []}
    for module in sorted(_finder.entries):
        # (a module the build still lists but the source tree no longer has is none)
        if module not in sys.modules and source_path(module, _finder.package_dir).is_file():
            importlib.import_module(module)
    return {"compiled": bool(_finder.loaded), "reason": "manifest",
            "loaded": sorted(_finder.loaded), "stale": sorted(_finder.stale)}


def planned() -> str:
    """One line: what a process started now from this checkout would load compiled.

    For a benchmark whose measured processes are others (the live nodes).
    """
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return "compiled hot modules: none (REPLICAIO_COMPILED=0)"
    entries = read_manifest()
    finder = CompiledFinder(entries)
    fresh = [module for module in entries if finder.loadable(module)]
    if not fresh:
        return "compiled hot modules: none (not built)"
    stale = len(entries) - len(fresh)
    return f"compiled hot modules: {len(fresh)} (Cython)" + (f"; {stale} stale" if stale else "")


def describe() -> str:
    """One line for a benchmark's conditions."""
    info = status()
    loaded = info["loaded"]
    stale = info["stale"]
    assert isinstance(loaded, list) and isinstance(stale, list)
    if not loaded:
        return f"compiled hot modules: none ({info['reason']})"
    text = f"compiled hot modules: {len(loaded)} (Cython)"
    if stale:
        text += f"; {len(stale)} stale, imported as source: {', '.join(stale)}"
    return text
