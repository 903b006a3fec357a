"""``replicaio kv admit-usig --cluster FILE --node I``: the operator admits a
new USIG epoch for a MinBFT replica whose USIG state was lost (ADR 0026,
docs/minbft.md *Recovery*).

A replica that finds its storage damaged stays inert and logs ``minbft USIG
state lost``; a replica whose data directory was wiped cannot tell that from
a first start, so the operator admits *before* restarting it. The command
makes the next epoch's admission (the node's ``usig_epoch`` plus one) with the
operator's key (``kind = "ed25519"``: the key ``kv up`` wrote to
``D/usig-operator.key``, or ``--operator-key``; ``kind = "hmac"``: the shared
secret of ``[usig] secret_file``), writes ``usig_epoch`` and
``usig_admission`` into the node's ``[[nodes]]`` table (the file is rewritten:
comments are not kept), and checks the result loads. Restart the node
afterwards (``kv up --data-dir D --node I``); its peers switch to the new
epoch when its STATUS shows them the admission, with nothing to restart.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path
from typing import Any

from replicaio.assembly import admit_usig
from replicaio.cli_common import print_json
from replicaio.core.errors import UsageError
from replicaio.runtime.config import (
    USIG_OPERATOR_KEY_FILE,
    load_cluster_file,
    read_hex_file,
    toml_value,
)


def add_admit_usig_command(actions: Any) -> None:
    admit = actions.add_parser(
        "admit-usig", help="admit a new USIG epoch for a MinBFT node whose USIG state was lost",
    )
    admit.add_argument("--cluster", required=True, help="the cluster file (rewritten)")
    admit.add_argument("--node", type=int, required=True, metavar="I", help="the node")
    admit.add_argument("--operator-key", default=None,
                       help=f"the operator's key (default: {USIG_OPERATOR_KEY_FILE} next to "
                       "the cluster file; kind ed25519 only)")
    admit.add_argument("--json", action="store_true", help="one JSON object on stdout")
    admit.set_defaults(handler=command_kv_admit_usig)


def command_kv_admit_usig(args: argparse.Namespace) -> int:
    path = Path(args.cluster)
    epoch = admit_usig_epoch(path, args.node, args.operator_key)
    if args.json:
        print_json({"node": args.node, "usig_epoch": epoch, "cluster": str(path)})
    else:
        print(f"node {args.node}: USIG epoch {epoch} admitted in {path}; restart the node")
    return 0


def admit_usig_epoch(path: Path, node_id: int, operator_key: str | None = None) -> int:
    """Write the next USIG epoch's admission for ``node_id`` into the cluster
    file at ``path``; returns the epoch."""
    cluster = load_cluster_file(path)
    if cluster.usig is None:
        raise UsageError("this cluster has no trusted USIG (no [usig] table)")
    entry = cluster.node(node_id)
    epoch = entry.usig_epoch + 1
    if cluster.usig == "hmac":
        certificate = admit_usig("hmac", node_id, epoch, cluster.usig_secret)
    else:
        key_path = Path(operator_key) if operator_key else path.parent / USIG_OPERATOR_KEY_FILE
        key = read_hex_file(key_path, "--operator-key", None)
        certificate = admit_usig("ed25519", node_id, epoch, key)
    data = tomllib.loads(path.read_text())
    for node in data["nodes"]:
        if node.get("id") == node_id:
            node["usig_epoch"] = epoch
            node["usig_admission"] = certificate.hex()
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(render_toml(data))
    os.replace(temporary, path)
    load_cluster_file(path)  # still valid (the new admission checked by the node at start)
    return epoch


def render_toml(data: dict[str, Any]) -> str:
    """A parsed cluster file as TOML again (tables, arrays of tables, scalars)."""
    lines = ["# replicaio cluster file (see docs/runtime.md)"]

    def section(name: str, values: dict[str, Any]) -> None:
        scalars = [(key, value) for key, value in values.items()
                   if not isinstance(value, dict) and not is_tables(value)]
        if scalars or not values:
            lines.extend(["", f"[{name}]"])
            lines.extend(f"{key} = {render_value(value)}" for key, value in scalars)
        for key, value in values.items():
            if isinstance(value, dict):
                section(f"{name}.{key}", value)
            elif is_tables(value):
                for item in value:
                    lines.extend(["", f"[[{name}.{key}]]"])
                    lines.extend(f"{k} = {render_value(v)}" for k, v in item.items())

    for name, value in data.items():
        if isinstance(value, dict):
            section(name, value)
        elif is_tables(value):
            for item in value:
                lines.extend(["", f"[[{name}]]"])
                lines.extend(f"{key} = {render_value(v)}" for key, v in item.items())
        else:
            raise UsageError(f"cannot rewrite the top-level value {name!r}")
    return "\n".join(lines) + "\n"


def is_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def render_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(render_value(item) for item in value) + "]"
    if isinstance(value, float):
        return repr(value)
    return toml_value(value)
