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

**A node of several MinBFT groups** (``kv up --groups G --protocol minbft``)
has one USIG per group, each with its own epochs (ADR 0031): ``--group g``
admits the next epoch of group ``g``'s USIG only (written to the node's
``usig_groups``, an admission naming the group, which no other group takes).
``--group`` is required there: admitting every group of the node is not a safe
default. An admission is what lets a replica start a fresh counter; given for
a group whose USIG state is intact, it would hand the node a second live
counter under the same identity for that group (the old epoch's, until every
peer switched, and the new one): the equivocation ADR 0026 admits a new
epoch only after the old state is known to be gone to rule out. The operator
verifies that per group; ``--group all`` says the whole node's storage was
lost (a wiped data directory: every group's USIG with it).
"""

from __future__ import annotations

import argparse
import os
import tomllib
from pathlib import Path
from typing import Any

from replicaio.assembly import admit_usig, protocol_factory
from replicaio.cli_common import print_json
from replicaio.core.errors import UsageError
from replicaio.runtime.config import (
    USIG_OPERATOR_KEY_FILE,
    ClusterFile,
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
    admit.add_argument("--group", default=None, metavar="G|all",
                       help="a node of several MinBFT groups: the group whose USIG state was "
                       "lost (required there; 'all': the node's whole storage was lost)")
    admit.add_argument("--json", action="store_true", help="one JSON object on stdout")
    admit.set_defaults(handler=command_kv_admit_usig)


def command_kv_admit_usig(args: argparse.Namespace) -> int:
    path = Path(args.cluster)
    group = args.group
    if group is None:
        epoch = admit_usig_epoch(path, args.node, args.operator_key)
        if args.json:
            print_json({"node": args.node, "usig_epoch": epoch, "cluster": str(path)})
        else:
            print(f"node {args.node}: USIG epoch {epoch} admitted in {path}; restart the node")
        return 0
    if group != "all" and not group.isdigit():
        raise UsageError(f"--group is a group number or 'all', not {group!r}")
    epochs = admit_group_usig_epochs(path, args.node, None if group == "all" else int(group),
                                     args.operator_key)
    if args.json:
        print_json({"node": args.node, "usig_epochs": {str(g): e for g, e in epochs.items()},
                    "cluster": str(path)})
    else:
        admitted = ", ".join(f"group {g} epoch {e}" for g, e in epochs.items())
        print(f"node {args.node}: USIG {admitted} admitted in {path}; restart the node")
    return 0


def cluster_groups(cluster: ClusterFile) -> int:
    """The groups a node of ``cluster`` hosts (0: a node's only protocol)."""
    slots = getattr(protocol_factory(cluster.protocol), "slots", None)
    groups = getattr(slots, "groups", 0)
    return groups if isinstance(groups, int) else 0


def operator_admission(cluster: ClusterFile, path: Path, operator_key: str | None,
                       node_id: int, epoch: int, group: int | None = None) -> bytes:
    """The operator's certificate admitting USIG ``epoch`` of ``node_id`` (of
    ``group``'s USIG on a node of several groups)."""
    if cluster.usig == "hmac":
        return admit_usig("hmac", node_id, epoch, cluster.usig_secret, group)
    key_path = Path(operator_key) if operator_key else path.parent / USIG_OPERATOR_KEY_FILE
    key = read_hex_file(key_path, "--operator-key", None)
    return admit_usig("ed25519", node_id, epoch, key, group)


def admit_usig_epoch(path: Path, node_id: int, operator_key: str | None = None) -> int:
    """Write the next USIG epoch's admission for ``node_id`` into the cluster
    file at ``path``; returns the epoch. A node of several groups: see
    :func:`admit_group_usig_epochs` (raises ``UsageError`` here)."""
    cluster = load_cluster_file(path)
    if cluster.usig is None:
        raise UsageError("this cluster has no trusted USIG (no [usig] table)")
    groups = cluster_groups(cluster)
    if groups:
        raise UsageError(f"node {node_id} hosts {groups} MinBFT groups, each with its own USIG: "
                         "name the group whose USIG state was lost (--group G), or --group all "
                         "if the node's whole storage was lost")
    entry = cluster.node(node_id)
    epoch = entry.usig_epoch + 1
    certificate = operator_admission(cluster, path, operator_key, node_id, epoch)

    def update(node: dict[str, Any]) -> None:
        node["usig_epoch"] = epoch
        node["usig_admission"] = certificate.hex()

    rewrite(path, node_id, update)
    return epoch


def admit_group_usig_epochs(path: Path, node_id: int, group: int | None,
                            operator_key: str | None = None) -> dict[int, int]:
    """Write the next USIG epoch's admission of ``group`` (``None``: every group)
    for ``node_id`` of a cluster of several MinBFT groups into the cluster file
    at ``path`` (the node's ``usig_groups``); returns group -> epoch admitted."""
    cluster = load_cluster_file(path)
    if cluster.usig is None:
        raise UsageError("this cluster has no trusted USIG (no [usig] table)")
    groups = cluster_groups(cluster)
    if not groups:
        raise UsageError(f"{cluster.protocol} runs no groups: admit without --group")
    if group is not None and not 0 <= group < groups:
        raise UsageError(f"no group {group}: the cluster has groups 0..{groups - 1}")
    entry = cluster.node(node_id)
    admitted = {g: (e, c) for g, e, c in entry.usig_groups}
    epochs: dict[int, int] = {}
    for chosen in range(groups) if group is None else (group,):
        epoch = admitted.get(chosen, (0, b""))[0] + 1
        admitted[chosen] = (epoch, operator_admission(cluster, path, operator_key, node_id,
                                                      epoch, chosen))
        epochs[chosen] = epoch

    def update(node: dict[str, Any]) -> None:
        node["usig_groups"] = [[g, e, c.hex()] for g, (e, c) in sorted(admitted.items())]

    rewrite(path, node_id, update)
    return epochs


def rewrite(path: Path, node_id: int, update: Any) -> None:
    """The cluster file with ``update`` applied to node ``node_id``'s table,
    replaced atomically, checked to load."""
    data = tomllib.loads(path.read_text())
    for node in data["nodes"]:
        if node.get("id") == node_id:
            update(node)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(render_toml(data))
    os.replace(temporary, path)
    load_cluster_file(path)  # still valid (the new admission checked by the node at start)


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
