"""A declarative op-type pattern matcher, after TF's Graph Transform Tool (OpTypePattern).

    OpTypePattern("Mul", [OpTypePattern("Conv2D|MatMul", [OpTypePattern("*"), CONST]), CONST])

matches a Mul whose first input is a Conv2D or MatMul with a constant second input and
whose second input is a constant. Commutative ops also match with their inputs swapped.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tfopt.graph import is_control, node_name

COMMUTATIVE = frozenset({"Mul", "Add", "AddV2"})


@dataclass(frozen=True)
class OpTypePattern:
    op: str  # "A|B" alternatives, "*" for anything
    inputs: tuple["OpTypePattern", ...] = field(default_factory=tuple)
    name: str | None = None  # key under which the matched node is returned

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))

    def accepts(self, op: str) -> bool:
        return self.op == "*" or op in self.op.split("|")


CONST = OpTypePattern("Const")


def data_inputs(node) -> list[str]:
    return [ref for ref in node.input if not is_control(ref)]


def match(pattern: OpTypePattern, node, nodes: dict) -> dict | None:
    """The named nodes of a match, keyed by pattern name, or None."""
    found: dict = {}
    return found if _match(pattern, node, nodes, found) else None


def _match(pattern: OpTypePattern, node, nodes: dict, found: dict) -> bool:
    if node is None or not pattern.accepts(node.op):
        return False
    if pattern.name:
        found[pattern.name] = node
    if not pattern.inputs:
        return True
    refs = data_inputs(node)
    if len(refs) < len(pattern.inputs):
        return False
    orders = [refs[:len(pattern.inputs)]]
    if node.op in COMMUTATIVE and len(pattern.inputs) == 2:
        orders.append(orders[0][::-1])
    for order in orders:
        trial = dict(found)
        if all(_match(p, nodes.get(node_name(r)), nodes, trial)
               for p, r in zip(pattern.inputs, order)):
            found.clear()
            found.update(trial)
            return True
    return False
