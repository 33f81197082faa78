"""What TensorRT 10.0's ONNX parser accepts: ops, the dtypes of their data tensors.

Derived by hand from onnx-tensorrt's ``docs/operators.md`` for TensorRT 10.0
(Apache-2.0; the conservative floor: later 10.x releases accept more). Only
ops marked supported are listed, grouped by their supported types.
Restrictions that a static check can see are encoded in ``lint_trt.py``.
"""

from __future__ import annotations

TRT_VERSION = "10.0"
OPSET_RANGE = (9, 20)  # default-domain opsets the parser reads

# Short dtype names, as ``lint_trt`` names tensor element types.
_TYPE_GROUPS = {
    "f32 f16 bf16": """
        Acos Acosh Asin Asinh Atan Atanh AveragePool BatchNormalization Ceil Celu Clip Conv
        ConvTranspose Cos Cosh CumSum Dropout Einsum Elu Erf Exp Floor Gemm
        GlobalAveragePool GlobalLpPool GlobalMaxPool GroupNormalization GRU HardSigmoid
        HardSwish Hardmax ImageScaler InstanceNormalization IsInf LayerNormalization
        LeakyRelu Log LogSoftmax LRN LSTM LpNormalization LpPool MatMul MaxPool
        MeanVarianceNormalization ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
        RandomNormalLike RandomUniform RandomUniformLike Reciprocal Resize RNN Round
        ScaledTanh Scan Selu Sigmoid Sin Sinh Softmax Softplus Softsign Sqrt Tan Tanh
        ThresholdedRelu Upsample
    """,
    "f32 f16 bf16 i32 i64": """
        Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual IsNaN Less
        LessOrEqual Max Min Mod Mul Neg Pad Range ReduceL1 ReduceL2 ReduceLogSum
        ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare
        Relu Scatter ScatterElements ScatterND Shrink Sign SpaceToDepth Sub Sum TopK
    """,
    "f32 f16 bf16 i32 i64 bool": """
        Concat Constant ConstantOfShape Expand EyeLike Flatten Gather GatherElements
        GatherND Identity If Loop OneHot Reshape ReverseSequence Shape Size Slice Split
        Squeeze Tile Transpose Trilu Unsqueeze Where
    """,
    "f32 f16": """
        DeformConv GridSample Mish NonMaxSuppression NonZero RoiAlign
    """,
    "bool": """
        And Not Or Xor
    """,
    "f32 f16 bf16 i32 i64 u8 bool": """
        Cast CastLike
    """,
    "i8 f8 i4": """
        DequantizeLinear
    """,
    "f32 f16 bf16 i8 i32 i64": """
        Gelu
    """,
    "f32 f16 bf16 f8 i32 i64": """
        Mean
    """,
}


def supported_ops() -> dict[str, frozenset[str]]:
    """Op type -> the dtypes TensorRT accepts for its data tensors."""
    table: dict[str, frozenset[str]] = {}
    for types, ops in _TYPE_GROUPS.items():
        for op in ops.split():
            table[op] = frozenset(types.split())
    return table
