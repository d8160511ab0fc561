"""Op traits: rules are keyed on what an op *is* to relevance, not on its name.

``trait_of`` looks at the op type and at which operands carry relevance: a MatMul with a weight is
``linear``, a MatMul of two activations is ``bilinear``.
"""

from __future__ import annotations

from collections.abc import Callable

from lrpir.ir import LRPIR_DOMAIN, Node, Value
from lrpir.roles import RESHAPE_LIKE

CONV = "conv"                # a convolution with a weight: Conv, ConvTranspose
DENSE = "dense"              # a dense product with a weight: Gemm, MatMul, Einsum, MatMulAdd
AFFINE = "affine"            # elementwise scale/shift by static values, unfused batch norm
SUM = "sum"                  # a sum of activations (residual adds), or an add of a constant
AVERAGE = "average"          # average pooling, mean/sum reductions, linear resizing, and p-norm
#                              reductions (degree-1 homogeneous, so x·∂y/∂x splits y exactly)
MAX = "max"                  # max pooling and max/min reductions: winner takes all
ELEMENTWISE = "elementwise"  # a pointwise nonlinearity of one activation
SHAPE = "shape"              # moves or selects elements without arithmetic
PRODUCT = "product"          # an elementwise product of activations (gating)
BILINEAR = "bilinear"        # a matrix product of two activations
RATIO = "ratio"              # a quotient with an activation in the denominator
NORMALIZE = "normalize"      # x (centred or not) divided by a statistic of x: LRN, layer/instance/
#                              RMS/Lp norm
SOFTMAX = "softmax"
LOOKUP = "lookup"            # a row lookup into a parameter table with integer ids
INDEX = "index"              # an integer reshape on the way from an id input to a lookup

WEIGHTED = (CONV, DENSE)     # the traits whose ops have a weight (the rules of the z-plus family)

ALL_TRAITS = (CONV, DENSE, AFFINE, SUM, AVERAGE, MAX, ELEMENTWISE, SHAPE, PRODUCT, BILINEAR, RATIO,
              NORMALIZE, SOFTMAX, LOOKUP, INDEX)

_WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "MatMulAdd"}
_AVERAGE = {"AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum", "Resize", "Upsample",
            "ReduceL1", "ReduceL2", "LpPool"}
_MAX = {"MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin", "Max", "Min"}
_SHAPE = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Concat", "Split",
          "Pad", "Expand", "Tile", "Identity", "Dropout", "Gather", "GatherElements", "GatherND",
          "DepthToSpace", "SpaceToDepth", "Cast", "CastLike", "Where", "Trilu"}
SHAPE_OPS = frozenset(_SHAPE)  # ops that move, select or cast values without arithmetic
_ELEMENTWISE = {"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish",
                "Elu", "Selu", "Celu", "Softplus", "Softsign", "Gelu", "Mish", "ThresholdedRelu",
                "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Abs", "Sin", "Cos", "Tan", "Floor",
                "Ceil", "Round", "Sign", "Pow"}
_SUM = {"Add", "Sub", "Sum", "Mean"}
_NORMALIZE = {"LRN", "LayerNormalization", "LpNormalization", "InstanceNormalization"}
# lrpir-domain composites that pattern raising creates (``lrpir/raising.py``)
_LRPIR_NORMALIZE = {"RMSNormalization"}
_LRPIR_ELEMENTWISE = {"Silu"}

# Every op type some trait covers, for validating override keys.
KNOWN_OPS = (_WEIGHTED | _AVERAGE | _MAX | _SHAPE | _ELEMENTWISE | _SUM | _NORMALIZE | _LRPIR_NORMALIZE
             | _LRPIR_ELEMENTWISE | {"Mul", "Div", "Neg", "BatchNormalization", "Softmax"})


def trait_of(node: Node, carries: Callable[[Value | None], bool], is_lookup: bool = False,
             is_index: bool = False) -> str | None:
    """The node's trait, or ``None`` when no rule family covers it."""
    if is_lookup:
        return LOOKUP
    if is_index:
        return INDEX
    if node.domain not in ("", LRPIR_DOMAIN):
        return None
    op = node.op_type
    active = [i for i, v in enumerate(node.inputs) if carries(v)]
    n = len(active)
    if n == 0:
        return None
    if node.domain == LRPIR_DOMAIN:
        if op == "MatMulAdd":
            return DENSE if active == [0] else None
        if op in _LRPIR_NORMALIZE:
            return NORMALIZE if active == [0] else None
        return ELEMENTWISE if op in _LRPIR_ELEMENTWISE else None
    if op in _WEIGHTED:
        if op in ("Conv", "ConvTranspose"):
            return CONV if active == [0] else None
        if op == "Gemm":
            return DENSE if n == 1 and active[0] in (0, 1) else BILINEAR if active == [0, 1] else None
        return DENSE if n == 1 else BILINEAR if n == 2 else None
    if op in _SUM:
        return SUM
    if op in _AVERAGE:
        return AVERAGE if active == [0] else None
    if op in _MAX:
        return MAX
    if op in _SHAPE:
        if op == "Where":
            return SHAPE if 0 not in active else None
        return SHAPE
    if op in _ELEMENTWISE:
        return ELEMENTWISE if n == 1 else None
    if op == "Neg":
        return AFFINE
    if op == "Mul":
        return PRODUCT if n >= 2 else AFFINE
    if op == "Div":  # x / c is affine, c / x a pointwise function of x, x / y a ratio
        return AFFINE if active == [0] else ELEMENTWISE if active == [1] else RATIO
    if op == "BatchNormalization":
        return AFFINE if active == [0] else None
    if op in _NORMALIZE:
        return NORMALIZE if active == [0] else None
    if op == "Softmax":
        return SOFTMAX
    return None


def is_index_reshape(node: Node, index_values: set[int]) -> bool:
    return (node.op_type in RESHAPE_LIKE and not node.domain and bool(node.inputs)
            and node.inputs[0] is not None and id(node.inputs[0]) in index_values)
