"""Lookup tables that a signature captures, frozen into the graph as constant tables.

Freezing folds variables but leaves a table's resource handle as an extra graph input.
Each such handle becomes `HashTableV2` + `LookupTableImportV2(keys, values)`, the keys and
values read from the live table with `LookupTableExportV2` (as tf2onnx's loader does), and
the import ordered before every lookup. TensorFlow runs that graph as it is, the TFLite
converter maps it to its HASHTABLE builtins, and the ONNX exporter turns each lookup into
an `ai.onnx.ml` LabelEncoder.
"""
from __future__ import annotations

from typing import Any

from tfopt.graph import add_const, consumers, forwarded_reads

LOOKUPS = frozenset({"LookupTableFindV2", "LookupTableSizeV2"})


def _lookups(graph_def: Any, name: str) -> list:
    """The lookup ops reading a table handle, through identities; none when something
    else reads it (not a plain lookup table)."""
    _, reads = forwarded_reads(consumers(graph_def), name)
    return reads if all(r.op in LOOKUPS for r in reads) else []


def freeze_tables(fn: Any, graph_def: Any, extra: list[str]) -> bool:
    """Replace every captured table handle left in graph_def (the extra inputs, by node
    name) by a constant table; False when one is not a table this can freeze (graph_def is
    then unchanged)."""
    import tensorflow as tf

    external = {internal.op.name: outer for outer, internal in fn.graph.captures}
    plans = []
    for name in extra:
        lookups = _lookups(graph_def, name)
        finds = [n for n in lookups if n.op == "LookupTableFindV2"]
        if not finds or name not in external:
            return False
        key_dtype, value_dtype = finds[0].attr["Tin"].type, finds[0].attr["Tout"].type
        keys, values = tf.raw_ops.LookupTableExportV2(
            table_handle=external[name], Tkeys=tf.as_dtype(key_dtype),
            Tvalues=tf.as_dtype(value_dtype))
        plans.append((name, key_dtype, value_dtype, keys.numpy(), values.numpy(), lookups))
    nodes = {n.name: n for n in graph_def.node}
    for name, key_dtype, value_dtype, keys, values, lookups in plans:
        table = nodes[name]
        table.op = "HashTableV2"
        table.attr.clear()
        table.attr["key_dtype"].type = key_dtype
        table.attr["value_dtype"].type = value_dtype
        table.attr["shared_name"].s = f"tfopt_table_{name}".encode()
        key_node = add_const(graph_def, f"{name}/keys", keys)
        value_node = add_const(graph_def, f"{name}/values", values)
        importer = graph_def.node.add(name=f"{name}/import", op="LookupTableImportV2",
                                      input=[name, key_node.name, value_node.name])
        importer.attr["Tin"].type = key_dtype
        importer.attr["Tout"].type = value_dtype
        for lookup in lookups:  # the import runs before each lookup (again: it is idempotent)
            lookup.input.append("^" + importer.name)
    return True
