"""The import-purity rules of pyproject.toml's import-linter contracts, checked
again on the source itself, where import-linter cannot look.

``lint-imports`` (run by ``./run test``) enforces the layer order of
``docs/architecture.md`` on the import graph. This test reads the same
contracts (``deterministic`` and ``observers`` in ``[tool.importlinter]``, so
there is one list) and also catches what the graph does not show: imports by
``__import__`` / ``importlib.import_module`` with a literal name. Every import
is found with ``ast`` (plain, ``from``, relative, dynamic), wherever it sits
in the file.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def contract(contract_id: str) -> dict[str, Any]:
    """The import-linter contract ``contract_id`` of pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    (found,) = [item for item in contracts if item.get("id") == contract_id]
    assert isinstance(found, dict)
    return found


def package_paths(modules: Iterable[str]) -> tuple[str, ...]:
    return tuple(module.replace(".", "/") for module in modules)


def split_forbidden(modules: Iterable[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    """(outside top-level names, ``replicaio.*`` prefixes) of a forbidden list."""
    modules = list(modules)
    outside = frozenset(name for name in modules if not name.startswith("replicaio."))
    return outside, tuple(name for name in modules if name.startswith("replicaio."))


def ignored(contract_config: dict[str, Any]) -> frozenset[tuple[str, str]]:
    """The contract's ``ignore_imports`` as ``(importer, imported)`` pairs."""
    pairs = (line.split(" -> ") for line in contract_config.get("ignore_imports", ()))
    return frozenset((importer.strip(), imported.strip()) for importer, imported in pairs)


DETERMINISTIC = contract("deterministic")
DETERMINISTIC_PACKAGES = package_paths(DETERMINISTIC["source_modules"])
NONDETERMINISTIC_MODULES, DETERMINISTIC_FORBIDDEN_INTERNAL = split_forbidden(
    DETERMINISTIC["forbidden_modules"]
)
OBSERVERS = contract("observers")
OBSERVER_PACKAGES = package_paths(OBSERVERS["source_modules"])
_, OBSERVER_FORBIDDEN_INTERNAL = split_forbidden(OBSERVERS["forbidden_modules"])
HOST_MODULES = ("replicaio.sim", "replicaio.runtime")


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    """The dotted name of the module at ``path`` and whether it is a package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` inside ``module``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        package = package[: len(package) - (level - 1)]
    base = ".".join(package)
    if not target:
        return base
    return f"{base}.{target}" if base else target


def imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """Every ``(line, absolute module name)`` the code may import."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = resolve_relative(module, is_package, node.level, node.module)
            else:
                base = node.module or ""
            yield node.lineno, base
            for alias in node.names:
                # `from replicaio import sim` imports the module replicaio.sim
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and dynamic_import(node):
            argument = node.args[0]
            assert isinstance(argument, ast.Constant)
            yield node.lineno, str(argument.value)


def dynamic_import(call: ast.Call) -> bool:
    function = call.func
    named = (isinstance(function, ast.Name) and function.id == "__import__") or (
        isinstance(function, ast.Attribute) and function.attr == "import_module"
    )
    return (
        named
        and bool(call.args)
        and isinstance(call.args[0], ast.Constant)
        and isinstance(call.args[0].value, str)
    )


def forbidden(name: str, top_level: frozenset[str], internal: Iterable[str]) -> bool:
    if name.split(".")[0] in top_level:
        return True
    return any(name == prefix or name.startswith(prefix + ".") for prefix in internal)


def offences(
    root: Path, packages: Iterable[str], top_level: frozenset[str], internal: Iterable[str],
    ignore: frozenset[tuple[str, str]] = frozenset(),
) -> list[str]:
    """``module:line imports name`` for every forbidden import under ``packages``
    (but the ``(importer, imported)`` pairs of ``ignore``)."""
    internal = tuple(internal)
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            module, is_package = module_name(path, root)
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            names = sorted(set(imported_names(tree, module, is_package)))
            found += [
                f"{path.relative_to(root)}:{line} imports {name}"
                for line, name in names
                if forbidden(name, top_level, internal)
                and not any(module == importer and forbidden(name, frozenset(), (imported,))
                            for importer, imported in ignore)
            ]
    return found


def python_files(packages: Iterable[str]) -> list[Path]:
    return [path for package in packages for path in (ROOT / package).rglob("*.py")]


def test_the_rule_sees_the_code_it_guards() -> None:
    # An empty or mistyped package list would make the rule pass vacuously.
    assert {"asyncio", "time", "random", "os", "socket", "threading"} <= NONDETERMINISTIC_MODULES
    assert {"replicaio.sim", "replicaio.runtime"} <= set(DETERMINISTIC_FORBIDDEN_INTERNAL)
    assert {"replicaio.sim", "replicaio.runtime", "replicaio.protocols"} <= set(
        OBSERVER_FORBIDDEN_INTERNAL
    )
    core = {path.name for path in python_files(["replicaio/core"])}
    assert {"scheduler.py", "lines.py", "node.py", "context.py"} <= core
    assert any(path.name == "bracha.py" for path in python_files(["replicaio/protocols"]))
    for package in (*DETERMINISTIC_PACKAGES, *OBSERVER_PACKAGES):
        assert (ROOT / package / "__init__.py").is_file(), package


def test_deterministic_layers_import_nothing_nondeterministic() -> None:
    found = offences(
        ROOT, DETERMINISTIC_PACKAGES, NONDETERMINISTIC_MODULES, DETERMINISTIC_FORBIDDEN_INTERNAL
    )
    assert found == [], "deterministic code imports:\n" + "\n".join(found)


def test_checkers_and_traces_do_not_depend_on_the_hosts() -> None:
    found = offences(
        ROOT, OBSERVER_PACKAGES, frozenset(), OBSERVER_FORBIDDEN_INTERNAL, ignored(OBSERVERS)
    )
    assert found == [], "observers import a host:\n" + "\n".join(found)


# -- the rule can fail ---------------------------------------------------------------

BAD_MODULE = '''\
"""A protocol module breaking every rule."""
import os.path
import asyncio as aio
from time import monotonic
from datetime import datetime
from replicaio.sim import simulator
from replicaio import runtime
from replicaio.storage.file import FileStorage
from ...sim.network import Network
from ... import sim
import importlib


def later():
    import random
    importlib.import_module("socket")
    return __import__("secrets")
'''

GOOD_MODULE = '''\
"""A protocol module keeping to the rules."""
from collections import deque
from replicaio.core.lines import first
from replicaio.storage.memory import MemoryStorage
from ..core import context
from . import neighbour
import timeit  # not time
import replicaio.simulation_helpers  # not replicaio.sim
'''


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_checker_flags_a_synthetic_bad_module(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "replicaio/__init__.py": "",
            "replicaio/protocols/__init__.py": "",
            "replicaio/protocols/bad/__init__.py": "",
            "replicaio/protocols/bad/module.py": BAD_MODULE,
        },
    )
    found = offences(
        tmp_path,
        ["replicaio/protocols"],
        NONDETERMINISTIC_MODULES,
        DETERMINISTIC_FORBIDDEN_INTERNAL,
    )
    where = "replicaio/protocols/bad/module.py"
    assert found == [
        f"{where}:2 imports os.path",
        f"{where}:3 imports asyncio",
        f"{where}:4 imports time",
        f"{where}:4 imports time.monotonic",
        f"{where}:5 imports datetime",
        f"{where}:5 imports datetime.datetime",
        f"{where}:6 imports replicaio.sim",
        f"{where}:6 imports replicaio.sim.simulator",
        f"{where}:7 imports replicaio.runtime",
        f"{where}:8 imports replicaio.storage.file",
        f"{where}:8 imports replicaio.storage.file.FileStorage",
        f"{where}:9 imports replicaio.sim.network",
        f"{where}:9 imports replicaio.sim.network.Network",
        f"{where}:10 imports replicaio.sim",
        f"{where}:15 imports random",
        f"{where}:16 imports socket",
        f"{where}:17 imports secrets",
    ]


def test_checker_passes_a_synthetic_good_module(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "replicaio/__init__.py": "",
            "replicaio/protocols/__init__.py": "",
            "replicaio/protocols/good.py": GOOD_MODULE,
            "replicaio/protocols/neighbour.py": "",
        },
    )
    found = offences(
        tmp_path,
        ["replicaio/protocols"],
        NONDETERMINISTIC_MODULES,
        DETERMINISTIC_FORBIDDEN_INTERNAL,
    )
    assert found == []


def test_observer_rule_allows_the_stdlib_but_not_the_hosts(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "replicaio/check/__init__.py": "import os\nimport time\n",
            "replicaio/check/history.py": "from replicaio.runtime.metrics import x\n",
        },
    )
    found = offences(tmp_path, ["replicaio/check"], frozenset(), HOST_MODULES)
    assert found == [
        "replicaio/check/history.py:1 imports replicaio.runtime.metrics",
        "replicaio/check/history.py:1 imports replicaio.runtime.metrics.x",
    ]


@pytest.mark.parametrize(
    ("module", "is_package", "level", "target", "expected"),
    [
        (
            "replicaio.protocols.broadcast.bracha",
            False,
            1,
            "echo",
            "replicaio.protocols.broadcast.echo",
        ),
        ("replicaio.protocols.broadcast.bracha", False, 2, None, "replicaio.protocols"),
        ("replicaio.protocols.broadcast.bracha", False, 3, "sim", "replicaio.sim"),
        ("replicaio.protocols.broadcast", True, 1, "beb", "replicaio.protocols.broadcast.beb"),
        ("replicaio.protocols.broadcast", True, 2, "core", "replicaio.protocols.core"),
    ],
)
def test_relative_imports_resolve_like_python(
    module: str, is_package: bool, level: int, target: str | None, expected: str
) -> None:
    assert resolve_relative(module, is_package, level, target) == expected
