"""TensorFlow's ``DataType`` numbers and ``DataTypeString`` names, and the C integer limits, as
plain constants: the JSON request rules check values against them without importing TensorFlow.
"""
from __future__ import annotations

# tensorflow.DataType enum values used here (tensorflow/core/framework/types.proto).
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING = 1, 2, 3, 4, 5, 6, 7
DT_INT64, DT_BOOL, DT_UINT32, DT_UINT64 = 9, 10, 22, 23

# DataTypeString() (tensorflow/core/framework/types.cc) for every DataType number; a reference
# type (the number + 100) is its type's name + "_ref".
_DTYPE_NAMES = {DT_FLOAT: "float", DT_DOUBLE: "double", DT_INT32: "int32", DT_UINT8: "uint8",
                DT_INT16: "int16", DT_INT8: "int8", DT_STRING: "string", DT_INT64: "int64",
                DT_BOOL: "bool", DT_UINT32: "uint32", DT_UINT64: "uint64",
                8: "complex64", 11: "qint8", 12: "quint8", 13: "qint32", 14: "bfloat16", 15: "qint16",
                16: "quint16", 17: "uint16", 18: "complex128", 19: "half", 20: "resource", 21: "variant",
                24: "float8_e5m2", 25: "float8_e4m3fn", 26: "float8_e4m3fnuz", 27: "float8_e4m3b11fnuz",
                28: "float8_e5m2fnuz", 29: "int4", 30: "uint4", 31: "int2", 32: "uint2", 33: "float4_e2m1fn"}
_REF_OFFSET = 100   # kDataTypeRefOffset

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT32_MAX, UINT64_MAX = 2**32 - 1, 2**64 - 1


def dtype_name(dt: int) -> str:
    """``DataTypeString``: DT_FLOAT -> "float", DT_INT64 -> "int64", DT_FLOAT_REF -> "float_ref"
    (the JSON rules' and the session run's dtype errors quote it)."""
    if dt in _DTYPE_NAMES:
        return _DTYPE_NAMES[dt]
    if dt - _REF_OFFSET in _DTYPE_NAMES:
        return _DTYPE_NAMES[dt - _REF_OFFSET] + "_ref"
    return f"type_{dt}"
