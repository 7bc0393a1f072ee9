"""Loading a SavedModel step by step as TensorFlow's C++ loader (loader.cc ``LoadSavedModel``,
which TF Serving's SavedModel loader calls) does it: the SavedModel file found, read and parsed,
the debug info checked, the graph's tensors validated, the variables restored, the init op run;
and TF Serving's resource estimate of a version folder (util.cc ``GetModelDiskSize``). Each step
keeps the C++ statuses and words where the Python loader's differ, since TF Serving shows them in
the version's status; ``Servable.load`` runs the steps in loader.cc's order.
"""
from __future__ import annotations

import errno
import logging
import os
import stat

import numpy as np

from serving_host.status import ServingError, from_exception

PB, PBTXT = "saved_model.pb", "saved_model.pbtxt"

# tsl/platform/errors.cc ErrnoToCode, for what listing and sizing a folder can meet (else UNKNOWN)
_ERRNO_CODES = {errno.ENOENT: "NOT_FOUND", errno.ENODEV: "NOT_FOUND", errno.ENXIO: "NOT_FOUND",
                errno.ENOTDIR: "FAILED_PRECONDITION", errno.EISDIR: "FAILED_PRECONDITION",
                errno.EBADF: "FAILED_PRECONDITION", errno.EBUSY: "FAILED_PRECONDITION",
                errno.EACCES: "PERMISSION_DENIED", errno.EPERM: "PERMISSION_DENIED",
                errno.EROFS: "PERMISSION_DENIED", errno.EINVAL: "INVALID_ARGUMENT",
                errno.ENAMETOOLONG: "INVALID_ARGUMENT", errno.EMFILE: "RESOURCE_EXHAUSTED",
                errno.ENFILE: "RESOURCE_EXHAUSTED", errno.ENOMEM: "RESOURCE_EXHAUSTED",
                errno.EOVERFLOW: "OUT_OF_RANGE", errno.EAGAIN: "UNAVAILABLE", errno.EINTR: "UNAVAILABLE",
                errno.ESTALE: "ABORTED"}


def _io_error(path: str, exc: OSError) -> ServingError:
    """``errors::IOError(context, errno)``: ``<path>; <strerror>`` with the errno's code."""
    return ServingError(_ERRNO_CODES.get(exc.errno, "UNKNOWN"), f"{path}; {os.strerror(exc.errno or 0)}")


def model_disk_size(path: str) -> int:
    """``GetModelDiskSize`` (servables/tensorflow/util.cc), the SavedModel loader's resource
    estimate: ``FileExists`` (``<path> not found``), then breadth first every folder listed and
    every other child sized, links followed; the first child (in listing order) that cannot be
    listed or sized fails it with the file system's status. TF Serving runs it before each load
    (basic_manager.cc ReserveResources) and again after it (SimpleLoader's post-load estimate)."""
    if not os.access(path, os.F_OK):
        raise ServingError("NOT_FOUND", f"{path} not found")
    total, folders = 0, [path]
    while folders:
        folder = folders.pop(0)
        try:
            names = os.listdir(folder)
        except OSError as exc:
            raise _io_error(folder, exc) from None
        for name in names:
            child = os.path.join(folder, name)
            try:
                st = os.stat(child)
            except OSError as exc:
                raise _io_error(child, exc) from None
            if stat.S_ISDIR(st.st_mode):
                folders.append(child)
            else:
                total += st.st_size
    return total


def check_saved_model_file(path: str) -> None:
    """A version folder without the SavedModel file fails with the C++ loader's message (TF
    Serving's ``ReadSavedModel``), which the status and a reload pass on to the person on call."""
    import tensorflow as tf

    if not any(tf.io.gfile.exists(os.path.join(path, name)) for name in (PB, PBTXT)):
        raise ServingError("NOT_FOUND", f"Could not find SavedModel .pb or .pbtxt at supplied export directory "
                                        f"path: {path}. Check that the directory exists and that you have the "
                                        f"right permissions for accessing it.")


def read_saved_model(path: str):
    """TensorFlow's ``ReadSavedModel`` step: the SavedModel file read and parsed (the Python
    loader's ``SavedModelLoader``, which reads it as ``tf.compat.v1.saved_model.loader.load``
    does). A file that does not parse is DATA_LOSS with ``ReadBinaryProto``'s words for the .pb
    (read if it exists) or ``ReadTextProto``'s for the .pbtxt, told by the error's type (the
    protobuf error the loader raises from, or the .pbtxt's UTF-8 decoding), not its text."""
    from google.protobuf import message, text_format
    from tensorflow.python.saved_model import loader_impl

    try:
        return loader_impl.SavedModelLoader(path)
    except BaseException as exc:
        if isinstance(exc, UnicodeDecodeError) or isinstance(exc.__cause__, (message.DecodeError,
                                                                             text_format.ParseError)):
            import tensorflow as tf

            if tf.io.gfile.exists(os.path.join(path, PB)):
                raise ServingError("DATA_LOSS", f"Can't parse {os.path.join(path, PB)} as binary proto") from None
            raise ServingError("DATA_LOSS", f"Can't parse {os.path.join(path, PBTXT)} as text proto") from None
        raise from_exception(exc) from None


VARIABLES_INDEX = os.path.join("variables", "variables.index")
DEBUG_INFO = os.path.join("debug", "saved_model_debug_info.pb")


def _run_once(session, feeds: dict[str, str | bytes], target: str) -> None:
    """TensorFlow's ``RunOnce``: one run of ``target`` through a session callable made for it and
    released after, the string ``feeds`` fed. Its error is the op's status as the executor returns
    it (the kernel's message and ``[[{{node …}}]]``), which TF Serving puts in the version's
    status; the Python ``Session.run`` rewrites that text (``Graph execution error: … Detected at
    node …``)."""
    from tensorflow.core.protobuf import config_pb2

    names = list(feeds)
    fn = session._make_callable_from_options(  # noqa: SLF001 (RunOnce's MakeCallable)
        config_pb2.CallableOptions(feed=names, target=[target]))
    try:
        fn(*(np.array(v if isinstance(v := feeds[n], bytes) else v.encode(), dtype=object) for n in names))
    finally:
        del fn      # ReleaseCallable


def run_restore(session, meta, path: str, assets: dict) -> None:
    """TensorFlow's ``RestoreSession`` and ``RunRestore``: no ``saver_def`` in the meta graph,
    nothing restored and nothing logged (the Python loader built a default ``Saver`` and restored
    with it); no ``variables/variables.index``, nothing restored (logged) and the load goes on;
    else the ``saver_def`` restore op runs once, its file name and the asset file paths fed, and
    its error is the load's. Not the Python ``Saver.restore``, which on a NOT_FOUND from that op
    reads the checkpoint again as an object-based one and restores by other names: for a TF2
    export without its data shard that read's UNKNOWN replaced the op's NOT_FOUND."""
    import tensorflow as tf

    if not meta.HasField("saver_def"):
        return
    index = os.path.join(path, VARIABLES_INDEX)
    if not tf.io.gfile.exists(index):
        logging.getLogger("serving_host").info(
            "The specified SavedModel has no variables; no checkpoints were restored. File does not exist: %s",
            index)
        return
    feeds = {meta.saver_def.filename_tensor_name: os.path.join(path, "variables", "variables")}
    feeds.update(assets)
    _run_once(session, feeds, meta.saver_def.restore_op_name)


INIT_OP_SIGNATURE_KEY = "__saved_model_init_op"


def run_init_op(session, meta, path: str, assets: dict) -> None:
    """TensorFlow's ``GetInitOp`` and ``RunInitOp`` (after the restore): the op named by the
    ``__saved_model_init_op`` signature's output of that name, else by the ``saved_model_main_op``
    collection, else by ``legacy_init_op``, run once with the asset file paths fed. A collection
    that does not name exactly one op is FAILED_PRECONDITION ``Expected exactly one main op in :
    <dir>``, a signature without that output ``Could not find output __saved_model_init_op`` (the
    Python loader's ``run_init_ops`` raised a RuntimeError, UNKNOWN, or its own NOT_FOUND)."""
    name = ""
    if INIT_OP_SIGNATURE_KEY in meta.signature_def:
        outputs = meta.signature_def[INIT_OP_SIGNATURE_KEY].outputs
        if INIT_OP_SIGNATURE_KEY not in outputs:
            raise ServingError("FAILED_PRECONDITION", f"Could not find output {INIT_OP_SIGNATURE_KEY}")
        name = outputs[INIT_OP_SIGNATURE_KEY].name
    else:
        key = "saved_model_main_op" if "saved_model_main_op" in meta.collection_def else "legacy_init_op"
        if key in meta.collection_def:
            ops = meta.collection_def[key].node_list.value
            if len(ops) != 1:
                raise ServingError("FAILED_PRECONDITION", f"Expected exactly one main op in : {path}")
            name = ops[0]
    if name:
        _run_once(session, assets, name)


def read_debug_info(path: str) -> None:
    """``ReadSavedModelDebugInfoIfPresent`` (TensorFlow's ``LoadSavedModel`` runs it after the
    meta graph is found): ``debug/saved_model_debug_info.pb``, if it exists, must parse as a
    ``GraphDebugInfo`` (``ReadBinaryProto``: DATA_LOSS ``Can't parse <path> as binary proto``).
    The Python loader never reads it."""
    import tensorflow as tf
    from google.protobuf import message
    from tensorflow.core.framework import graph_debug_info_pb2

    file = os.path.join(path, DEBUG_INFO)
    if not tf.io.gfile.exists(file):
        return
    try:
        with tf.io.gfile.GFile(file, "rb") as f:
            data = f.read()
    except BaseException as exc:
        raise from_exception(exc) from None
    try:
        graph_debug_info_pb2.GraphDebugInfo().ParseFromString(data)
    except message.DecodeError:
        raise ServingError("DATA_LOSS", f"Can't parse {file} as binary proto") from None


def _num_elements(shape) -> int:
    """``PartialTensorShape::num_elements`` of a ``TensorShapeProto``: -1 if unknown."""
    if shape.unknown_rank or any(d.size < 0 for d in shape.dim):
        return -1
    n = 1
    for d in shape.dim:
        n *= d.size
    return n


def _validate_node(node) -> None:
    """``ValidateNode``: a tensor ``value`` must have a known shape, a ``Const`` must have a ``value``."""
    if "value" in node.attr:
        value = node.attr["value"]
        if value.HasField("tensor"):
            n = _num_elements(value.tensor.tensor_shape)
            if n < 0:
                raise ServingError("FAILED_PRECONDITION", f'Saved model contains node "{node.name}" (op '
                                                          f'"{node.op}") which initializes from a tensor '
                                                          f'with {n} elements')
    elif node.op == "Const":
        raise ServingError("FAILED_PRECONDITION", f'Saved model contains node "{node.name}" which is a '
                                                  f'constant tensor but no value has been provided')


def validate_saved_tensors(graph_def) -> None:
    """TensorFlow's ``ValidateSavedTensors`` (loader.cc, before ``session->Create``): every node of
    the graph, then of each function of its library, with a tensor ``value`` must have a known
    shape, and a ``Const`` must have a ``value``; a function must not call itself (checked after
    its own nodes, ``ValidateFunctionNotRecursive``); else FAILED_PRECONDITION with its words. (The
    Python loader's graph import refused a Const without value as INVALID_ARGUMENT ``NodeDef
    missing attr …``, and loaded a self-recursive function no signature calls.)"""
    for node in graph_def.node:
        _validate_node(node)
    for function in graph_def.library.function:
        name = function.signature.name
        for node in function.node_def:
            _validate_node(node)
        if any(node.op == name for node in function.node_def):
            raise ServingError("FAILED_PRECONDITION", f"Function {name} is self recursive and TensorFlow does "
                                                      f"not support this scenario.")
