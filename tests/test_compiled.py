"""The compiled hot modules (replicaio/compiled.py, ADR 0034): a stale build
never runs, and a compiled run is the same run as an interpreted one.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from replicaio import compiled
from replicaio.compiled import CompiledFinder, Entry, read_manifest, source_digest
from replicaio.compiled_build import HOT_MODULES, miscompiled

# Targets whose hot path crosses every compiled module: broadcast with the
# adversary, Raft with the KV store under crashes and partitions, PBFT and
# MinBFT with a Byzantine node, transactions across groups.
RUNS = (
    ("bracha", "--nodes", "4", "--byzantine", "1", "--faults", "crash,partition,loss,dup,reorder",
     "--seed", "7"),
    ("raft", "--nodes", "3", "--faults", "crash,partition,loss", "--seed", "11"),
    ("pbft", "--nodes", "4", "--byzantine", "1", "--faults", "crash,loss,reorder", "--seed", "5"),
    ("minbft", "--nodes", "3", "--byzantine", "1", "--faults", "crash,loss", "--seed", "4"),
    ("txn-kv:groups=2", "--nodes", "3", "--faults", "crash,loss", "--seed", "3"),
)

PROBE = """
import json, sys
from replicaio.cli import main
from replicaio import compiled
import replicaio.core.node, replicaio.sim.simulator
print(json.dumps({"file": replicaio.core.node.__file__, "status": compiled.status()}))
"""


def run_python(code: str, *args: str, compiled_on: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REPLICAIO_COMPILED": "1" if compiled_on else "0"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=600, check=False, env=env)


def sim_hash(args: tuple[str, ...], *, compiled_on: bool) -> str:
    code = "import sys; from replicaio.cli import main; sys.exit(main())"
    done = run_python(code, "sim", *args, "--json", compiled_on=compiled_on)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["violations"] == []
    digest = report["log_sha256"]
    assert isinstance(digest, str) and len(digest) == 64
    return digest


def built() -> bool:
    return bool(read_manifest())


def test_a_compiled_run_is_the_interpreted_run() -> None:
    """The event log hash of each target is the same compiled and interpreted."""
    if not built():
        pytest.skip("no compiled build here (./run setup without a C compiler or Cython)")
    for args in RUNS:
        assert sim_hash(args, compiled_on=True) == sim_hash(args, compiled_on=False), args


def test_setup_compiled_every_hot_module_and_they_load() -> None:
    if not built():
        pytest.skip("no compiled build here (./run setup without a C compiler or Cython)")
    manifest = read_manifest()
    missing = [module for module in HOT_MODULES if module not in manifest]
    assert missing == [], f"./run setup left these as source: {missing}"
    on = json.loads(run_python(PROBE, compiled_on=True).stdout)
    assert on["file"].endswith(".so"), on
    assert "replicaio.core.node" in on["status"]["loaded"]
    off = json.loads(run_python(PROBE, compiled_on=False).stdout)
    assert off["file"].endswith("node.py"), off
    assert off["status"] == {"compiled": False, "reason": "off (REPLICAIO_COMPILED=0)",
                             "loaded": [], "stale": []}


# ``status()`` before any hot module is imported, and after the hot path's are.
STATUS_FIRST = """
import json
from replicaio import compiled
print(json.dumps(compiled.status()))
"""
STATUS_AFTER = """
import json
import replicaio.core.node, replicaio.sim.simulator
from replicaio import compiled
print(json.dumps(compiled.status()))
"""


def test_status_tells_the_truth_before_and_after_the_hot_modules_are_imported() -> None:
    """Called first thing (one33: it said ``compiled: False`` then), ``status()``
    reports what the process runs as it does once the hot path is imported: every
    module of the manifest loaded compiled, none stale."""
    if not built():
        pytest.skip("no compiled build here (./run setup without a C compiler or Cython)")
    first = json.loads(run_python(STATUS_FIRST, compiled_on=True).stdout)
    after = json.loads(run_python(STATUS_AFTER, compiled_on=True).stdout)
    assert first == after
    assert first["compiled"] is True and first["reason"] == "manifest"
    assert first["loaded"] == sorted(read_manifest()) and first["stale"] == []
    for code in (STATUS_FIRST, STATUS_AFTER):
        assert json.loads(run_python(code, compiled_on=False).stdout) == {
            "compiled": False, "reason": "off (REPLICAIO_COMPILED=0)", "loaded": [], "stale": []}


def fake_package(tmp_path: Path) -> tuple[Path, Path]:
    package = tmp_path / "pkg"
    (package / "core").mkdir(parents=True)
    source = package / "core" / "hot.py"
    source.write_text("VALUE = 1\n")
    library = tmp_path / "replicaio.core.hot.so"
    library.write_bytes(b"not loaded by this test")
    return source, library


def test_a_build_of_an_edited_source_is_not_used(tmp_path: Path) -> None:
    source, library = fake_package(tmp_path)
    entry = Entry("replicaio.core.hot", library, source_digest(source))
    finder = CompiledFinder({entry.module: entry}, package_dir=source.parent.parent)
    spec = finder.find_spec("replicaio.core.hot", None)
    assert spec is not None and spec.origin == str(library)
    assert isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)
    source.write_text("VALUE = 2\n")  # edited after the build
    assert finder.find_spec("replicaio.core.hot", None) is None
    assert finder.stale == ["replicaio.core.hot"]
    assert finder.find_spec("replicaio.core.other", None) is None  # not listed: not ours


def test_a_missing_library_or_source_falls_back(tmp_path: Path) -> None:
    source, library = fake_package(tmp_path)
    entry = Entry("replicaio.core.hot", library, source_digest(source))
    finder = CompiledFinder({entry.module: entry}, package_dir=source.parent.parent)
    library.unlink()
    assert finder.find_spec("replicaio.core.hot", None) is None
    gone = Entry("replicaio.core.gone", library, entry.digest)
    finder = CompiledFinder({gone.module: gone}, package_dir=source.parent.parent)
    assert finder.find_spec("replicaio.core.gone", None) is None


def cimporting_package(tmp_path: Path) -> tuple[Path, dict[str, Entry]]:
    """``replicaio.core.hot`` cimports ``replicaio.core.base``, which cimports
    ``replicaio.core.root`` (ADR 0038): each with a ``.pxd``, each "built"."""
    package = tmp_path / "pkg"
    (package / "core").mkdir(parents=True)
    declarations = {
        "hot": "from replicaio.core.base cimport Base\n\ncdef class Hot:\n"
               "    cdef public Base base\n",
        "base": "cimport replicaio.core.root\n\ncdef class Base:\n"
                "    cdef public object x\n",
        "root": "cdef class Root:\n    cdef public object y\n",
    }
    for name, text in declarations.items():
        (package / "core" / f"{name}.py").write_text(f"NAME = {name!r}\n")
        (package / "core" / f"{name}.pxd").write_text(text)
    entries = {}
    for name in declarations:
        library = tmp_path / f"replicaio.core.{name}.so"
        library.write_bytes(b"not loaded by this test")
        module = f"replicaio.core.{name}"
        entries[module] = Entry(module, library,
                                source_digest(package / "core" / f"{name}.py", package))
    return package, entries


def test_the_digest_covers_every_cimported_declaration(tmp_path: Path) -> None:
    package, entries = cimporting_package(tmp_path)
    assert compiled.cimported("replicaio.core.hot", package) == [
        "replicaio.core.base", "replicaio.core.root"]
    hot = package / "core" / "hot.py"
    before = source_digest(hot, package)
    # A layout two cimports away changes: the module compiled against it must be rebuilt.
    (package / "core" / "root.pxd").write_text("cdef class Root:\n    cdef public object z\n")
    assert source_digest(hot, package) != before
    assert source_digest(package / "core" / "root.py", package) != \
        entries["replicaio.core.root"].digest
    # Editing a cimported module's .py (not its declarations) leaves this digest alone.
    after = source_digest(hot, package)
    (package / "core" / "base.py").write_text("NAME = 'edited'\n")
    assert source_digest(hot, package) == after


def test_a_module_is_loaded_only_with_everything_it_cimports(tmp_path: Path) -> None:
    package, entries = cimporting_package(tmp_path)
    finder = CompiledFinder(entries, package_dir=package)
    assert all(finder.loadable(module) for module in entries)
    # The root's source edited: it is imported as source, so neither module
    # compiled against its struct (directly or not) may load.
    (package / "core" / "root.py").write_text("NAME = 'edited'\n")
    finder = CompiledFinder(entries, package_dir=package)
    assert not finder.loadable("replicaio.core.root")
    assert not finder.loadable("replicaio.core.base")
    assert finder.find_spec("replicaio.core.hot", None) is None
    assert finder.stale == ["replicaio.core.hot"]
    assert compiled.cimported("replicaio.core.root", package) == []


def test_a_cimported_module_already_imported_as_source_keeps_the_build_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package, entries = cimporting_package(tmp_path)
    finder = CompiledFinder(entries, package_dir=package)
    spec = finder.find_spec("replicaio.core.base", None)
    assert spec is not None and spec.origin == str(entries["replicaio.core.base"].library)
    # Imported before the finder could answer (as source): not the struct compiled against.
    monkeypatch.setitem(sys.modules, "replicaio.core.root", importlib.util.module_from_spec(
        importlib.machinery.ModuleSpec("replicaio.core.root", None)))
    finder = CompiledFinder(entries, package_dir=package)
    assert finder.loadable("replicaio.core.base")  # the build itself is fresh
    assert finder.find_spec("replicaio.core.base", None) is None
    assert finder.find_spec("replicaio.core.hot", None) is None
    assert finder.stale == ["replicaio.core.base", "replicaio.core.hot"]


@pytest.mark.parametrize("text", [
    "", "not json", "[]", '{"abi": "cpython-27-other", "modules": {}}',
    json.dumps({"abi": compiled.abi_tag(), "modules": []}),
])
def test_a_foreign_or_damaged_manifest_is_no_build(tmp_path: Path, text: str) -> None:
    (tmp_path / compiled.MANIFEST).write_text(text)
    assert read_manifest(tmp_path) == {}


def test_a_manifest_for_this_interpreter_is_read(tmp_path: Path) -> None:
    entry = {"library": "replicaio.core.hot.so", "sha256": "ab" * 32}
    (tmp_path / compiled.MANIFEST).write_text(json.dumps(
        {"abi": compiled.abi_tag(), "modules": {"replicaio.core.hot": entry, "bad": 3}}))
    assert read_manifest(tmp_path) == {
        "replicaio.core.hot": Entry("replicaio.core.hot", tmp_path / entry["library"],
                                    entry["sha256"])}


# Cython 3.3.1 compiled this ``and`` chain (object comparisons, then ``bool``
# tests) into a C int cast to an object pointer: the linearizability model's
# latent writes crashed every Raft KV run with faults (sim24).
MISCOMPILED = '''
def latent(ops, seen):
    return [op[0] == "info" and op[1] in ("put", "append") and op[2] not in seen for op in ops]
'''
REWRITTEN = '''
def latent(ops, seen):
    return [one(op, seen) for op in ops]

def one(op, seen):
    if op[0] != "info" or op[1] not in ("put", "append"):
        return False
    return op[2] not in seen
'''


@pytest.mark.parametrize(("source", "refused"), [(MISCOMPILED, True), (REWRITTEN, False)])
def test_the_build_refuses_c_that_casts_a_c_int_to_an_object(
    tmp_path: Path, source: str, refused: bool
) -> None:
    cython = pytest.importorskip("Cython.Compiler.Main")
    (tmp_path / "probe.py").write_text(source)
    options = cython.CompilationOptions(
        cython.default_options, language_level=3, output_file=str(tmp_path / "probe.c")
    )
    cython.compile(str(tmp_path / "probe.py"), options)
    found = miscompiled((tmp_path / "probe.c").read_text())
    assert bool(found) == refused, found
