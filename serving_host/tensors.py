"""numpy arrays as TensorFlow's tensors, for the session's feeds and fetches and the texts error
messages quote: a string vector and a fetched scalar string keep every byte (numpy's own ``S``
type would drop trailing NULs), an array's ``DataType``, and TensorFlow's ``DebugString`` of a
shape and of a message. TensorFlow and protobuf are imported when a function needs them, so the
JSON rules can use the shape text without them.
"""
from __future__ import annotations

import numpy as np


def string_vector(items: list[bytes]) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


class OpaqueTensor(np.ndarray):
    """A request's resource or variant tensor (DT_RESOURCE, DT_VARIANT): TensorFlow makes it (its
    handles or variants decoded) and the session run then checks it as any feed; numpy holds no
    such value, so this is its shape (no memory) and ``tf_dtype``, for that check's text."""

    tf_dtype: int


def opaque_tensor(dims: list[int], dtype: int) -> OpaqueTensor:
    arr = np.broadcast_to(np.empty((), dtype=object), dims).view(OpaqueTensor)
    arr.tf_dtype = dtype
    return arr


def as_array(value) -> np.ndarray:
    """A fetched value as a tensor: the session hands a scalar string back as a Python ``bytes``
    (other scalars as numpy scalars); it becomes a 0-d string array with every byte kept
    (``np.asarray`` would make it ``S`` and drop trailing NULs)."""
    if isinstance(value, bytes):
        arr = np.empty((), dtype=object)
        arr[()] = value
        return arr
    return np.asarray(value)


def shape_text(shape) -> str:
    """``TensorShape::DebugString`` of a shape's sizes: [2,3]."""
    return "[" + ",".join(str(d) for d in shape) + "]"


def array_dtype(t: np.ndarray) -> int:
    """The ``tensorflow.DataType`` of a numpy array (object/bytes arrays are DT_STRING)."""
    import tensorflow as tf

    if isinstance(t, OpaqueTensor):
        return t.tf_dtype
    if t.dtype == object or t.dtype.kind in ("S", "U"):
        return tf.string.as_datatype_enum
    return tf.dtypes.as_dtype(t.dtype).as_datatype_enum


def array_dtype_name(t: np.ndarray) -> str:
    """``DataType_Name`` of a fetched numpy array (DT_FLOAT, DT_STRING, ...)."""
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(array_dtype(t))


def debug_string(message) -> str:
    """``Message::DebugString`` (protobuf text format)."""
    from google.protobuf import text_format

    return text_format.MessageToString(message)
