"""Is a new serving signature compatible with production's, so that clients do not break?

Works on the normalized form of ``golden/signature.json`` (docs/architecture.md)::

    {"serving_default": {"method_name": "...",
                         "inputs":  {"<name>": {"dtype": "DT_FLOAT", "shape": [-1, 8, 8, 1]}},
                         "outputs": {"<name>": {"dtype": "DT_FLOAT", "shape": [-1, 10]}}}}

Compatible means: every signature production has still exists with the same method; the same
input names with the same dtypes and compatible shapes (same rank, each dimension equal or -1
on either side); the same output names. Pure functions on plain dicts.
"""
from __future__ import annotations


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


def shapes_compatible(new: list[int] | None, old: list[int] | None) -> bool:
    """Same rank and each dimension equal, with -1 (any size) matching anything.

    A missing shape (unknown rank) is compatible with anything.
    """
    if new is None or old is None:
        return True
    return len(new) == len(old) and all(a == b or a == -1 or b == -1 for a, b in zip(new, old))


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
        o_in, n_in = o["inputs"], n["inputs"]
        for t in sorted(set(o_in) - set(n_in)):
            out.append(f"'{name}' input '{t}' was removed")
        for t in sorted(set(n_in) - set(o_in)):
            out.append(f"'{name}' has a new input '{t}' that current clients do not send")
        for t in sorted(set(o_in) & set(n_in)):
            if o_in[t]["dtype"] != n_in[t]["dtype"]:
                out.append(f"'{name}' input '{t}' dtype changed from {o_in[t]['dtype']} "
                           f"to {n_in[t]['dtype']}")
            if not shapes_compatible(n_in[t].get("shape"), o_in[t].get("shape")):
                out.append(f"'{name}' input '{t}' shape {n_in[t].get('shape')} is not compatible "
                           f"with {o_in[t].get('shape')}")
        o_out, n_out = set(o["outputs"]), set(n["outputs"])
        for t in sorted(o_out - n_out):
            out.append(f"'{name}' output '{t}' was removed")
        for t in sorted(n_out - o_out):
            out.append(f"'{name}' has a new output name '{t}'")
    return out
