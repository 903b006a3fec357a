"""The hot classes declared as extension types in a ``.pxd`` beside their module
(ADR 0036): each declaration follows its source, the build digest covers it,
and the adversary's probe sees a compiled object's attributes in the
interpreter's order.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from replicaio.compiled import ATTRIBUTE, PACKAGE_DIR, read_manifest, source_digest
from replicaio.compiled_build import HOT_MODULES
from replicaio.sim.adversary import attributes

CLASS = re.compile(r"^cdef class (\w+)(?:\(\w+\))?:\n((?:    .*\n?)*)", re.MULTILINE)


def declarations() -> dict[str, dict[str, tuple[tuple[str, ...], bool]]]:
    """module -> class -> (declared attribute names in order, has a __dict__)."""
    found: dict[str, dict[str, tuple[tuple[str, ...], bool]]] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.pxd")):
        module = ".".join(("replicaio", *path.relative_to(PACKAGE_DIR).with_suffix("").parts))
        classes = {}
        for match in CLASS.finditer(path.read_text()):
            names: list[str] = []
            has_dict = False
            for line in match.group(2).splitlines():
                line = line.strip()
                if line == "pass":  # an empty base (core/generic.pxd, ADR 0043)
                    continue
                if line == "cdef dict __dict__":
                    has_dict = True
                elif attribute := ATTRIBUTE.match(line):
                    names += [name.strip() for name in attribute.group(2).split(",")]
                elif line and not line.startswith(("@cython.locals(", "cpdef ")):
                    raise AssertionError(f"{path}: unexpected declaration {line!r}")
            classes[match.group(1)] = (tuple(names), has_dict)
        found[module] = classes
    return found


def test_every_pxd_sits_beside_a_hot_module() -> None:
    """A .pxd beside a module that is not compiled would declare nothing."""
    modules = declarations()
    assert modules, "no .pxd found"
    assert sorted(set(modules) - set(HOT_MODULES)) == []


# Runs every declared class's module interpretedly, through simulations that
# make their instances, and reports each instance's attribute order.
ORDER = """
import gc, json, sys
from replicaio.sim.kv_harness import KvWorkload, kv_options
from replicaio.sim.simulator import Simulator
wanted = set(json.loads(sys.argv[1]))
keep = []
for protocol, n, f in (("raft", 3, 1), ("pbft", 4, 1)):
    options = kv_options(1, n, (), KvWorkload(clients=3, ops=30),
                         protocol=None if protocol == "raft" else protocol)
    simulator = Simulator(protocol, options, f=f, record=True)
    simulator.run()
    keep.append(simulator)
orders = {}
for item in gc.get_objects():
    kind = type(item)
    module = getattr(kind, "__module__", None)
    if type(module) is not str:
        continue
    name = module + "." + kind.__qualname__
    if name in wanted and hasattr(item, "__dict__"):
        orders.setdefault(name, []).append(list(vars(item)))
print(json.dumps(orders))
"""


def test_declared_order_is_the_interpreted_assignment_order() -> None:
    """The adversary's probe relies on it (sim/adversary.py: attributes): in an
    interpreted instance, the declared attributes come first, in declared order."""
    wanted = {
        f"{module}.{name}": names
        for module, classes in declarations().items()
        for name, (names, has_dict) in classes.items()
        if has_dict
    }
    env = {**os.environ, "REPLICAIO_COMPILED": "0"}
    done = subprocess.run([sys.executable, "-c", ORDER, json.dumps(sorted(wanted))],
                          capture_output=True, text=True, timeout=600, check=False, env=env)
    assert done.returncode == 0, done.stderr
    orders = json.loads(done.stdout)
    seen = set()
    for name, instances in orders.items():
        declared = list(wanted[name])
        for order in instances:
            assert order[: len(declared)] == declared, (name, order)
        seen.add(name)
    # The two runs make an instance of nearly every one (not every protocol's).
    assert len(seen) >= len(wanted) - 2, sorted(set(wanted) - seen)


def test_compiled_classes_declare_what_their_pxd_says() -> None:
    if not read_manifest():
        pytest.skip("no compiled build here (./run setup without a C compiler or Cython)")
    code = """
import importlib, json, sys
from replicaio.sim.adversary import declared_attributes
found = {}
for module, classes in json.loads(sys.argv[1]).items():
    loaded = importlib.import_module(module)
    for name in classes:
        cls = getattr(loaded, name)
        descriptors = [attribute for attribute, value in vars(cls).items()
                       if type(value).__name__ == "getset_descriptor"]
        found[module + "." + name] = [loaded.__file__, list(declared_attributes(cls)),
                                      bool(cls.__flags__ & (1 << 9)), descriptors]
print(json.dumps(found))
"""
    wanted = {module: sorted(classes) for module, classes in declarations().items()}
    done = subprocess.run([sys.executable, "-c", code, json.dumps(wanted)],
                          capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "REPLICAIO_COMPILED": "1"})
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    for module, classes in declarations().items():
        for name, (names, _) in classes.items():
            library, declared, heap_type, descriptors = found[f"{module}.{name}"]
            assert library.endswith(".so"), library
            assert not heap_type, (module, name)  # an extension type
            assert tuple(declared) == names, (module, name)
            assert set(names) <= set(descriptors), (module, name)


INTERPRETED = """
import json
from replicaio.protocols.raft.replication import Replication
from replicaio.sim.adversary import declared_attributes
from replicaio.smr.replica import Replica
heap = bool(Replica.__flags__ & (1 << 9)) and bool(Replication.__flags__ & (1 << 9))
declared = [list(declared_attributes(kind)) for kind in (Replica, Replication)]
print(json.dumps([heap, *declared]))
"""


def test_interpreted_classes_declare_nothing() -> None:
    """Run as source (``REPLICAIO_COMPILED=0``, in a process of its own, since
    this one may have loaded the compiled build): plain heap classes, nothing
    declared, so the adversary's probe reads their ``__dict__`` alone."""
    env = {**os.environ, "REPLICAIO_COMPILED": "0"}
    done = subprocess.run([sys.executable, "-c", INTERPRETED], capture_output=True, text=True,
                          env=env, check=True, timeout=120)
    assert json.loads(done.stdout) == [True, [], []]


def test_attributes_lists_declared_then_dict() -> None:
    class Plain:
        def __init__(self) -> None:
            self.a = 1
            self.b = [2]

    assert attributes(Plain()) == [1, [2]]


def test_attributes_lists_slots_then_dict_of_a_subclass() -> None:
    """An interpreted subclass of a class with ``__slots__`` (a planted variant of
    ``Replication``, ADR 0041) has both: the slots come first, in their order, as the
    compiled base's declarations do, so both runs probe the same values."""

    class Slotted:
        __slots__ = ("a", "b")

        def __init__(self) -> None:
            self.b = 2
            self.a = 1

    class Variant(Slotted):
        def __init__(self) -> None:
            super().__init__()
            self.c = [3]

    assert attributes(Slotted()) == [1, 2]
    assert attributes(Variant()) == [1, 2, [3]]


def test_the_build_digest_covers_the_pxd(tmp_path: Path) -> None:
    source = tmp_path / "module.py"
    source.write_text("class A:\n    pass\n")
    alone = source_digest(source)
    (tmp_path / "module.pxd").write_text("cdef class A:\n    cdef public object x\n")
    declared = source_digest(source)
    assert declared != alone
    (tmp_path / "module.pxd").write_text("cdef class A:\n    cdef public object y\n")
    assert source_digest(source) != declared


def test_a_slots_class_declares_its_slots() -> None:
    """A compiled class with ``__slots__`` has no ``__dict__``: an attribute
    its source adds to ``__slots__`` but its ``.pxd`` does not declare would
    raise ``AttributeError`` compiled, and only there."""
    import ast

    for module, classes in declarations().items():
        source = ast.parse(Path(PACKAGE_DIR, *module.split(".")[1:]).with_suffix(".py")
                           .read_text())
        for node in source.body:
            if not isinstance(node, ast.ClassDef) or node.name not in classes:
                continue
            names, has_dict = classes[node.name]
            slots = [
                ast.literal_eval(item.value) for item in node.body
                if isinstance(item, ast.Assign)
                and any(isinstance(target, ast.Name) and target.id == "__slots__"
                        for target in item.targets)
            ]
            if slots:
                assert not has_dict, (module, node.name)
                assert sorted(names) == sorted(slots[0]), (module, node.name)
            else:
                assert has_dict, (module, node.name)


# A compiled module imports the modules it cimports before its own body runs
# (ADR 0038), so a typed attribute against the direction of the Python imports
# makes a cycle that fails only when one of its modules is imported first.
#
# One fresh interpreter per module cost ~0.75 s each (60 modules: the suite's
# slowest test). The server below pays the interpreter's start and the imports
# that are not replicaio's once: a first child imports every hot module and
# names the other modules that brought in; the server imports those (none of
# them is replicaio's, so no hot module is loaded yet, which it checks) and
# forks one child per hot module, which imports it first, as a fresh process
# would.
FIRST = """
import importlib, json, os, sys, traceback
from replicaio import compiled
from replicaio.compiled_build import HOT_MODULES

def ours(name):
    return name == "replicaio" or name.startswith("replicaio.")

def in_child(work):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            answer = {"ok": True, **work()}
        except BaseException:
            answer = {"ok": False, "error": traceback.format_exc()[-2000:]}
        os.write(write_end, json.dumps(answer).encode())
        os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 1 << 16):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))

loaded_before = set(sys.modules)

def everything():
    for module in HOT_MODULES:
        importlib.import_module(module)
    return {"others": sorted(name for name in set(sys.modules) - loaded_before
                             if not ours(name))}

others = in_child(everything)
assert others["ok"], others["error"]
for name in others["others"]:
    if name not in sys.modules:
        try:
            importlib.import_module(name)
        except ImportError:  # a name only a module's own import made up (six.moves)
            pass
early = sorted(name for name in sys.modules
               if ours(name) and name not in ("replicaio", "replicaio.compiled",
                                              "replicaio.compiled_build"))
assert early == [], early

def first(module):
    importlib.import_module(module)
    return {"status": compiled.status()}

print(json.dumps({module: in_child(lambda: first(module)) for module in HOT_MODULES}))
"""


@pytest.mark.timeout(900)  # 60 imports: ~1 min alone, 3-5 under a loaded machine
def test_every_hot_module_can_be_imported_first() -> None:
    entries = read_manifest()
    if not entries:
        pytest.skip("no compiled build here (./run setup without a C compiler or Cython)")
    done = subprocess.run([sys.executable, "-c", FIRST], capture_output=True, text=True,
                          timeout=600, check=False,
                          env={**os.environ, "REPLICAIO_COMPILED": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    answers = json.loads(done.stdout)
    assert sorted(answers) == sorted(HOT_MODULES)
    for module in HOT_MODULES:
        answer = answers[module]
        assert answer["ok"], (module, answer.get("error"))
        status = answer["status"]
        assert status["stale"] == [], (module, status["stale"])
        if module in entries:
            assert module in status["loaded"], module


GENERIC = """
import json
from replicaio.core.context import Link
from replicaio.core.lines import Line
from replicaio.core.scheduler import Scheduler, Task
scheduler = Scheduler(lambda label, count: 0)
line = Line(scheduler, "x")
class Sub(Line):  # an interpreted subclass, as a test or a variant makes
    __slots__ = ("extra",)
sub = Sub(scheduler, "y")
sub.extra = 1
line.set(5)
print(json.dumps([
    [cls[int] is cls for cls in (Line, Task, Link)],
    [bool(cls.__flags__ & (1 << 9)) for cls in (Line, Task, Link)],
    hasattr(line, "__dict__"), isinstance(sub, Line), line.value(), sub.extra,
]))
"""


@pytest.mark.parametrize("compiled", ["0", "1"])
def test_generic_classes_compiled_or_not(compiled: str) -> None:
    """``Line``, ``Task`` and ``Link`` are generic for mypy and extension types
    compiled (ADR 0043): subscribing one at run time gives the class itself,
    compiled or not; they have no ``__dict__``; interpreted subclasses work."""
    if compiled == "1" and not read_manifest():
        pytest.skip("no compiled build here (./run setup without a C compiler or Cython)")
    done = subprocess.run([sys.executable, "-c", GENERIC], capture_output=True, text=True,
                          env={**os.environ, "REPLICAIO_COMPILED": compiled}, check=False,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    subscribed, heap, has_dict, is_line, value, extra = json.loads(done.stdout)
    assert subscribed == [True, True, True]
    assert heap == [compiled == "0"] * 3  # extension types only compiled
    assert (has_dict, is_line, value, extra) == (False, True, 5, 1)


HOST = """
import json, sys
from replicaio.runtime.config import load_cluster_file
from replicaio.runtime.durability import DurabilityPipeline
from replicaio.runtime.host import Flight, NodeHost

cluster = load_cluster_file(sys.argv[1])
released = []

class Recorder(NodeHost):
    def release_sends(self, sends):
        released.append([(peer, data.decode()) for peer, data in sends])

host, recorder = NodeHost(cluster, 1), Recorder(cluster, 1)
try:
    host.release_sends = released.append
    replaced = True
except AttributeError:
    replaced = False
# The compiled release chain calls the subclass's override (Cython's override check).
recorder.release_held([(0, b"ack")], [], [], (0, 0, 0), True, {})
recorder.durability_pipeline = Recorder  # a variant's swap, on a subclass's instance
print(json.dumps([
    [bool(cls.__flags__ & (1 << 9)) for cls in (NodeHost, Flight)],
    hasattr(host, "__dict__"), replaced, released, recorder.stats["batches"],
    NodeHost.durability_pipeline is DurabilityPipeline,
    recorder.durability_pipeline is Recorder, host.durability_pipeline is DurabilityPipeline,
]))
"""


@pytest.mark.parametrize("compiled", ["0", "1"])
def test_the_node_host_is_an_extension_type_extended_by_subclassing(
    tmp_path: Path, compiled: str,
) -> None:
    """``NodeHost`` and ``Flight`` are extension types compiled (ADR 0067), heap
    classes interpreted, without an instance dict either way: a method cannot
    be replaced on one host; a subclass overrides it, and the compiled release
    chain calls the override; ``durability_pipeline`` is swapped on a subclass."""
    from test_runtime_host import cluster_file

    if compiled == "1" and not read_manifest():
        pytest.skip("no compiled build here (./run setup without a C compiler or Cython)")
    cluster_file(tmp_path, 3, protocol="raft")
    done = subprocess.run([sys.executable, "-c", HOST, str(tmp_path / "cluster.toml")],
                          capture_output=True, text=True, timeout=120, check=False,
                          cwd=tmp_path, env={**os.environ, "REPLICAIO_COMPILED": compiled})
    assert done.returncode == 0, done.stderr
    heap, has_dict, replaced, released, batches, *pipelines = json.loads(done.stdout)
    assert heap == [compiled == "0"] * 2
    assert (has_dict, replaced) == (False, False)
    assert released == [[[0, "ack"]]]
    assert batches == 1
    assert pipelines == [True, True, True]
