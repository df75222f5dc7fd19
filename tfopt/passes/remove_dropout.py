"""Make dropout left in the inference path an identity.

    SelectV2(keep, Mul(x, 1/keep_prob), 0)        tf.nn.dropout (TF 2, Keras 3)
    Mul(Mul(x, 1/keep_prob), Cast(keep))          tf.nn.dropout (TF 1.13-1.15)
    Mul(RealDiv(x, keep_prob), Floor(keep_prob + u))  tf.nn.dropout (TF 1.x, keep_prob)
      with keep = GreaterEqual(u, rate), u = a uniform draw [* (max - min) + min]   -> x

Inverted dropout scales at training time, so at inference the layer is exactly x. Written
here because Grappler keeps random ops (they are stateful) and no converter drops them.
"""
from __future__ import annotations

from tfopt.graph import const_value, node_name, reachable
from tfopt.passes.base import PassContext, PassLog, register
from tfopt.passes.pattern import (
    ANY,
    OpTypePattern,
    Replacement,
    Skip,
    data_inputs,
    replace_matching,
    variants,
)

RANDOM = "RandomUniform|StatelessRandomUniform|StatelessRandomUniformV2"
_UNIFORM = [OpTypePattern(RANDOM),
            *variants("Add|AddV2", variants("Mul", [OpTypePattern(RANDOM)], [ANY]), [ANY])]
_COMPARE = variants("GreaterEqual|Greater", _UNIFORM, [ANY])
_KEEP = [*_COMPARE, *variants("Cast", _COMPARE),
         *variants("Floor", variants("Add|AddV2", [ANY], _UNIFORM))]
_X = OpTypePattern("*", name="x")
_SCALED = variants("Mul|RealDiv", [_X], [OpTypePattern("Const", name="scale")],
                   name="scaled")
PATTERNS = (variants("SelectV2|Select", _KEEP, _SCALED, [OpTypePattern("Const", name="zero")],
                     name="dropout")
            + variants("Mul", _SCALED, _KEEP, name="dropout"))


def _identity(found: dict, ctx: PassContext) -> Replacement | Skip:
    dropout, x, scale = found["dropout"], found["x"], found["scale"]
    if dropout.name in ctx.protected:
        return Skip(f"{dropout.name} is a signature output")
    if const_value(scale).size != 1:
        return Skip("the scale is not a scalar, so this is not inverted dropout")
    if "zero" in found and const_value(found["zero"]).any():
        return Skip("dropped elements become a non-zero value")
    if x.op == "Const":
        return Skip("the masked value is a constant: a random initializer, not a layer")
    # the exact tensor that is scaled (x may have several outputs)
    ref = next(r for r in data_inputs(found["scaled"]) if node_name(r) != scale.name)
    return Replacement(bypass={dropout.name: ref}, removed={"dropout": 1},
                       details={"node": dropout.name, "input": ref})


@register("remove_dropout")
def remove_dropout(graph_def, ctx: PassContext, log: PassLog):
    return replace_matching(graph_def, PATTERNS, lambda found, _: _identity(found, ctx),
                            log, keep=ctx.inputs + ctx.outputs, action="identity", removed=None,
                            within=reachable(graph_def, ctx.outputs))  # gradients mask too
