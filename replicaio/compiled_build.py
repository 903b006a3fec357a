"""Compile the hot modules with Cython (``python -m replicaio.compiled_build``).

``./run setup`` calls this after installing the dependencies. It compiles each
module of ``HOT_MODULES`` whose source changed since its last build (or that
was never built), from the unchanged ``.py`` file, into
``replicaio/_compiled/``, and records each source's SHA-256 in the manifest
``replicaio.compiled`` checks before it loads one (a stale build never runs).

A ``.pxd`` beside a module (ADR 0036) declares some of its classes as
extension types with their attributes, so that compiled methods read
``self``'s attributes from the object's struct; the build digest covers it.
It may type an attribute with a class another ``.pxd`` declares (``from
replicaio... cimport Raft``, ADR 0038): the digest then covers that ``.pxd``
too, transitively, so changing a layout rebuilds every module compiled
against it, and the loader loads a module only with everything it cimports.

Compilation is an optimisation, never a requirement: without Cython or a C
compiler, or when a module fails to compile, it says so and that module is
imported as source. Directives: ``annotation_typing=False`` (the annotations
are for mypy; with them Cython would turn ``float`` into a C double and
refuse subclasses of annotated builtin types), ``language_level=3``.

Why these modules: the profile of a simulated run (``bench_sim.py --profile``,
``bench_sim_raft_kv.py``) and of a live leader spends its time in the node's
step and dispatch, the scheduler, lines, the context, reliable links, the
codec, the event log, the in-memory storage and the simulator's event loop;
ADR 0034 has the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

from replicaio.compiled import (
    BUILD_DIR,
    MANIFEST,
    PACKAGE_DIR,
    abi_tag,
    read_manifest,
    source_digest,
    source_path,
)

HOT_MODULES: tuple[str, ...] = (
    "replicaio.core.codec",
    "replicaio.core.context",
    "replicaio.core.effects",
    "replicaio.core.generic",
    "replicaio.core.lines",
    "replicaio.core.node",
    "replicaio.core.reliable",
    "replicaio.core.scheduler",
    "replicaio.core.stream",
    "replicaio.trace.eventlog",
    "replicaio.storage.base",
    "replicaio.storage.memory",
    "replicaio.sim.simulator",
    "replicaio.sim.group_commit",
    "replicaio.sim.harness",
    "replicaio.sim.kv_harness",
    "replicaio.protocols.broadcast.bracha",
    "replicaio.protocols.broadcast.instances",
    # Each delivery asks it whether the node is behind (sim32: 1.2k instructions
    # per message delivered, interpreted).
    "replicaio.protocols.broadcast.catchup",
    "replicaio.protocols.raft.membership",
    "replicaio.protocols.raft.raft",
    "replicaio.protocols.raft.replication",
    "replicaio.protocols.raft.state",
    "replicaio.smr.replica",
    "replicaio.services.kv.state_machine",
    "replicaio.check.broadcast",
    "replicaio.check.history",
    # The Raft KV simulation's own path (sim23: its profile with the modules
    # above compiled): SMR's front and sessions, Raft's reads, snapshots,
    # elections and lease, the KV commands and snapshot, the simulator's
    # observers and the Raft checker, which runs at every output.
    "replicaio.smr.protocol",
    "replicaio.smr.sessions",
    "replicaio.smr.auth",
    "replicaio.protocols.raft.reads",
    "replicaio.protocols.raft.snapshot",
    "replicaio.protocols.raft.election",
    "replicaio.protocols.raft.lease",
    "replicaio.services.kv.kv_snapshot",
    "replicaio.services.kv.values",
    "replicaio.services.kv.commands_keys",
    "replicaio.services.kv.commands_collections",
    "replicaio.sim.membership",
    "replicaio.sim.operator",
    "replicaio.sim.footprint",
    "replicaio.sim.kv_ops",
    "replicaio.sim.kv_transactions",
    "replicaio.check.raft",
    # The linearizability checker (sim24): out in sim23 for a segmentation
    # fault, which was Cython miscompiling one expression of the model (see
    # ``miscompiled``); the expression is rewritten and the build refuses the pattern.
    "replicaio.check.linearizability.model",
    "replicaio.check.linearizability.search",
    "replicaio.check.linearizability.transactions",
    # The live path (cpu30, ADR 0049): a live node's main thread spends its time
    # in the host's batch loop, the peer transport and reader, and (the leader)
    # the Redis front: the parser, the command table, the connection and the
    # service that groups commands into SMR requests and answers them.
    "replicaio.runtime.host",
    "replicaio.runtime.peer_reader",
    "replicaio.runtime.transport",
    "replicaio.runtime.kv.connection",
    "replicaio.runtime.kv.requests",
    "replicaio.runtime.kv.service",
    "replicaio.services.kv.redis_commands",
    "replicaio.services.kv.redis_plan",
    "replicaio.services.kv.resp",
    # The rest of a live node's per-batch path (cpu31, ADR 0053): the store's
    # writes, seal and flushes (on the loop and, holding the GIL between its
    # system calls, the log thread), the disk threads, the frame MAC and the
    # histograms a batch observes.
    "replicaio.storage.file",
    "replicaio.runtime.durability",
    "replicaio.runtime.framing",
    "replicaio.runtime.metrics",
    # The runtime's named counters (host35): a leader counts a few per SET (the
    # KV front's, the host's), each a method call the interpreter ran.
    "replicaio.runtime.counters",
)

DIRECTIVES: dict[str, Any] = {"language_level": 3, "annotation_typing": False}
# Cython's generated C draws warnings that say nothing about our code; -O2 without
# debug information compiles in half the time of the interpreter's own -O3 -g.
C_FLAGS: tuple[str, ...] = ("-w", "-O2", "-g0")


def library_name(module: str) -> str:
    return module + EXTENSION_SUFFIXES[0]


def wanted(build_dir: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The modules to (re)build, and the manifest entries still good as they are."""
    current = read_manifest(build_dir)
    keep: dict[str, dict[str, str]] = {}
    todo: list[str] = []
    for module in HOT_MODULES:
        entry = current.get(module)
        digest = source_digest(source_path(module))
        if entry is not None and entry.digest == digest and entry.library.is_file():
            keep[module] = {"library": entry.library.name, "sha256": digest}
        else:
            todo.append(module)
    return todo, keep


# Cython 3.3.1 miscompiles some ``and`` chains mixing object comparisons and
# ``bool`` tests (``[a == b and x not in s for ...]``): the C casts the C
# ``int`` of a test to an object pointer (``t8 = ((PyObject *)t11);``), and
# the process crashes when it uses it (sim24: the linearizability model's
# latent writes, a segmentation fault in every Raft KV run with faults).
_CAST_TO_OBJECT = re.compile(r"= \(\(PyObject \*\)(__pyx_t_\d+)\);")
_C_SCALAR = re.compile(
    r"^\s+(?:int|long|long long|unsigned int|unsigned long|Py_ssize_t|size_t|char|"
    r"Py_UCS4|double|float) (__pyx_t_\d+);", re.MULTILINE
)
_C_DECLARATION = r"^\s+[A-Za-z_][\w ]*?[\s*]{}(?: = NULL)?;"


def miscompiled(c_source: str) -> list[str]:
    """The C scalars ``c_source`` assigns as object pointers (empty when none):
    each is a temporary whose nearest declaration above the cast is a C
    integer or float, not a pointer (see ``_CAST_TO_OBJECT``)."""
    found = []
    for cast in _CAST_TO_OBJECT.finditer(c_source):
        name = cast.group(1)
        declarations = list(re.finditer(
            _C_DECLARATION.format(re.escape(name)), c_source[: cast.start()], re.MULTILINE
        ))
        if declarations and _C_SCALAR.match(declarations[-1].group(0)):
            line = c_source.count("\n", 0, cast.start()) + 1
            found.append(f"line {line}: {cast.group(0)}")
    return found


def compile_modules(modules: list[str], work: Path, jobs: int) -> dict[str, Path]:
    """Cython then the C compiler, in ``work``; the built library of each module that made it."""
    import importlib

    # Both untyped: their names are taken as Any.
    cythonize: Any = importlib.import_module("Cython.Build").cythonize
    setuptools: Any = importlib.import_module("setuptools")
    Distribution, Extension = setuptools.Distribution, setuptools.Extension

    extensions = []
    for module in modules:
        extension = Extension(module, [str(source_path(module))],
                              extra_compile_args=list(C_FLAGS))
        try:
            # include_path: where a .pxd's ``cimport replicaio...`` finds the
            # others (ADR 0038).
            made = cythonize([extension], build_dir=str(work / "c"), quiet=True,
                             compiler_directives=DIRECTIVES,
                             include_path=[str(PACKAGE_DIR.parent)])
        except Exception as error:
            print(f"compiled_build: {module}: Cython failed ({type(error).__name__}); "
                  "it stays source", file=sys.stderr)
            continue
        bad = [
            line for made_extension in made for c_file in made_extension.sources
            if c_file.endswith(".c")
            for line in miscompiled(Path(c_file).read_text(errors="replace"))
        ]
        if bad:
            print(f"compiled_build: {module}: Cython cast a C int to an object "
                  f"({'; '.join(bad[:3])}); it stays source", file=sys.stderr)
            continue
        extensions += made
    built: dict[str, Path] = {}

    def build(batch: list[Any]) -> bool:
        distribution = Distribution({"name": "replicaio-compiled", "ext_modules": batch})
        command: Any = distribution.get_command_obj("build_ext")
        command.build_lib = str(work / "lib")
        command.build_temp = str(work / "tmp")
        command.parallel = jobs
        command.ensure_finalized()
        try:
            command.run()
        except Exception as error:
            print(f"compiled_build: C compiler failed on {[e.name for e in batch]}: {error}",
                  file=sys.stderr)
            return False
        for extension in batch:
            built[extension.name] = Path(command.get_ext_fullpath(extension.name))
        return True

    cwd = os.getcwd()
    os.chdir(work)  # setuptools must not read the project's own pyproject.toml
    try:
        if extensions and not build(extensions):
            for extension in extensions:  # find the one that fails; keep the others
                build([extension])
    finally:
        os.chdir(cwd)
    return built


def write_manifest(build_dir: Path, modules: dict[str, dict[str, str]]) -> None:
    text = json.dumps({"abi": abi_tag(), "modules": modules}, indent=1, sort_keys=True)
    temporary = build_dir / (MANIFEST + ".tmp")
    temporary.write_text(text + "\n")
    os.replace(temporary, build_dir / MANIFEST)


def prune(build_dir: Path, modules: dict[str, dict[str, str]]) -> None:
    """Remove every built library the manifest no longer lists."""
    listed = {entry["library"] for entry in modules.values()} | {MANIFEST}
    for path in build_dir.iterdir():
        if path.name not in listed:
            path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--clean", action="store_true", help="remove every compiled module")
    args = parser.parse_args(argv)
    build_dir = BUILD_DIR
    if args.clean:
        shutil.rmtree(build_dir, ignore_errors=True)
        return 0
    assert PACKAGE_DIR.is_dir()
    build_dir.mkdir(exist_ok=True)
    todo, keep = wanted(build_dir)
    if not todo:
        if set(read_manifest(build_dir)) != set(keep):
            # A module left HOT_MODULES: it must not load from an old build.
            write_manifest(build_dir, keep)
            prune(build_dir, keep)
        return 0
    try:
        import Cython  # noqa: F401
    except ImportError:
        print("compiled_build: Cython is not installed; every module runs as source",
              file=sys.stderr)
        write_manifest(build_dir, keep)
        return 0
    started = time.monotonic()
    print(f"compiled_build: compiling {len(todo)} hot module(s) with Cython "
          f"(once; later runs only what changed)", file=sys.stderr)
    digests = {module: source_digest(source_path(module)) for module in todo}
    with tempfile.TemporaryDirectory(prefix="replicaio-compiled-") as temporary:
        built = compile_modules(todo, Path(temporary), args.jobs)
        modules = dict(keep)
        for module, library in built.items():
            target = build_dir / library_name(module)
            shutil.copyfile(library, target.with_suffix(".tmp"))
            os.replace(target.with_suffix(".tmp"), target)
            # The digest taken before compiling: a source edited meanwhile is then stale.
            modules[module] = {"library": target.name, "sha256": digests[module]}
    write_manifest(build_dir, modules)
    prune(build_dir, modules)
    failed = sorted(set(todo) - set(built))
    print(f"compiled_build: {len(built)} compiled in {time.monotonic() - started:.0f} s"
          + (f"; left as source: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
