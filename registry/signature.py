"""Is a new serving signature compatible with production's, so that clients do not break?

Works on the normalized form of ``golden/signature.json`` (docs/architecture.md)::

    {"serving_default": {"method_name": "...",
                         "inputs":  {"<name>": {"dtype": "DT_FLOAT", "shape": [-1, 8, 8, 1]}},
                         "outputs": {"<name>": {"dtype": "DT_FLOAT", "shape": [-1, 10]}}}}

Compatible means: every signature production has still exists with the same method; the same
input names, dtypes, and shapes that accept every input production accepted (a dimension that
was -1 stays -1: clients send any batch size); the same output names, dtypes, and shapes that
production's clients already handle (a fixed dimension stays the same: 10 classes becoming 12
changes what an index means to a client). ``--allow-signature-change`` is how a person says a
change is intended. Pure functions on plain dicts.
"""
from __future__ import annotations


def _tensor_spec(info: dict) -> dict:
    shape = info.get("tensor_shape", info.get("tensorShape")) or {}
    if shape.get("unknown_rank", shape.get("unknownRank")):
        dims = None
    else:
        dims = [int(d.get("size", -1)) for d in shape.get("dim", [])]
    return {"dtype": info.get("dtype", "DT_INVALID"), "shape": dims}


def normalize_signature_defs(defs: dict, names: tuple[str, ...] | None = None) -> dict:
    """Signature defs in proto JSON (TF Serving's ``/metadata`` or a SavedModel's, snake_case or
    camelCase) -> the normalized form above. Internal signatures (``__saved_model_init_op``) are
    dropped; ``names`` keeps only those. Unknown rank gives ``"shape": null``; unknown dims -1.

    The one normalizer: mlproject writes ``golden/signature.json`` with it and the sync's smoke
    test reads TF Serving's metadata with it, so the two can be compared for equality.
    """
    out = {}
    for key, sig in sorted((defs or {}).items()):
        if key.startswith("__") or (names is not None and key not in names):
            continue
        out[key] = {"method_name": sig.get("method_name", sig.get("methodName", "")),
                    "inputs": {k: _tensor_spec(v) for k, v in sorted((sig.get("inputs") or {}).items())},
                    "outputs": {k: _tensor_spec(v) for k, v in sorted((sig.get("outputs") or {}).items())}}
    return out


def format_problems(sig) -> list[str]:
    """What is wrong with the *format* of a normalized signature document (empty if fine)."""
    if not isinstance(sig, dict) or not sig:
        return ["the signature document must be a non-empty JSON object of signatures"]
    problems = []
    for name, s in sig.items():
        if not isinstance(s, dict):
            problems.append(f"signature '{name}' must be an object")
            continue
        for part in ("inputs", "outputs"):
            tensors = s.get(part)
            if not isinstance(tensors, dict) or not tensors:
                problems.append(f"signature '{name}' has no {part}")
                continue
            for t, spec in tensors.items():
                if not isinstance(spec, dict) or not isinstance(spec.get("dtype"), str):
                    problems.append(f"{part[:-1]} '{t}' of '{name}' has no dtype")
                shape = spec.get("shape") if isinstance(spec, dict) else None
                if shape is not None and not (isinstance(shape, list)
                                              and all(isinstance(d, int) for d in shape)):
                    problems.append(f"{part[:-1]} '{t}' of '{name}' has a malformed shape {shape!r}")
    return problems


def covers(shape: list[int] | None, other: list[int] | None) -> bool:
    """Can a tensor of ``shape`` be every tensor of ``other``? Same rank, and each dimension of
    ``shape`` is -1 (any size) or equal to ``other``'s. An unknown rank (None) covers anything
    and is covered by nothing but itself."""
    if shape is None:
        return True
    if other is None:
        return False
    return len(shape) == len(other) and all(a == -1 or a == b for a, b in zip(shape, other))


def differences(new: dict, old: dict) -> list[str]:
    """Every way ``new`` would break a client written against ``old`` (empty if compatible)."""
    problems = [f"new signature: {p}" for p in format_problems(new)]
    problems += [f"production signature: {p}" for p in format_problems(old)]
    if problems:
        return problems
    out = []
    for name, o in sorted(old.items()):
        n = new.get(name)
        if n is None:
            out.append(f"signature '{name}' is gone (clients call it)")
            continue
        if o.get("method_name") != n.get("method_name"):
            out.append(f"'{name}' method changed from {o.get('method_name')} to {n.get('method_name')}")
        out += _tensor_differences(name, "inputs", o["inputs"], n["inputs"])
        out += _tensor_differences(name, "outputs", o["outputs"], n["outputs"])
    return out


def _tensor_differences(sig: str, part: str, old: dict, new: dict) -> list[str]:
    """The inputs or outputs of signature ``sig``: names, dtypes, and shapes — an input must accept
    every shape clients send (``covers(new, old)``), an output stay within what clients read
    (``covers(old, new)``)."""
    kind = part[:-1]
    out = [f"'{sig}' {kind} '{t}' was removed" for t in sorted(set(old) - set(new))]
    out += [f"'{sig}' has a new input '{t}' that current clients do not send" if part == "inputs"
            else f"'{sig}' has a new output name '{t}'" for t in sorted(set(new) - set(old))]
    for t in sorted(set(old) & set(new)):
        o, n = old[t], new[t]
        if o["dtype"] != n["dtype"]:
            out.append(f"'{sig}' {kind} '{t}' dtype changed from {o['dtype']} to {n['dtype']}")
        if part == "inputs" and not covers(n.get("shape"), o.get("shape")):
            out.append(f"'{sig}' input '{t}' shape {n.get('shape')} does not accept every input "
                       f"of shape {o.get('shape')} that clients send")
        if part == "outputs" and not covers(o.get("shape"), n.get("shape")):
            out.append(f"'{sig}' output '{t}' shape changed from {o.get('shape')} to "
                       f"{n.get('shape')}, which clients written for the old one may not handle")
    return out
