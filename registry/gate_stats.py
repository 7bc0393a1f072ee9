"""The gate's statistics on per-example results: pure functions on plain evaluation dicts.

An evaluation (``mlproject.evaluate.Evaluation.to_dict()``) carries ``correct_bits``, whether
each held-out example was answered right (``encode_correct`` / ``decode_correct``), and
``heldout_labels``, each example's true class (``encode_labels``). Two evaluations on the same
held-out set are paired on them (McNemar's discordant pairs): ``paired_counts`` counts the
examples that flipped each way (``Paired``: ``b`` production right and the candidate wrong, ``c``
the reverse), ``class_paired_counts`` the same per class, each with why not when the documents
cannot be paired. The tolerances the gate's rules allow (``gate_rules``) come from them:
``paired_standard_error`` / ``paired_tolerance`` (the difference of two correlated proportions),
``class_z`` (the accuracy rule's tail shared among the classes, Bonferroni) and, without
per-example results, ``accuracy_tolerance`` (production's standard error alone).
"""
from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from statistics import NormalDist


def class_key(k: str):
    """Sort key of a class name: digits in numeric order, then the other names as text."""
    return (0, int(k)) if str(k).isdigit() else (1, str(k))


def accuracy_tolerance(p: float, n: int, *, floor: float = 0.01, z: float = 2.0) -> float:
    """Allowed accuracy drop without per-example results (the fallback): ``z`` standard errors of
    an accuracy ``p`` measured on ``n`` examples."""
    if n <= 0:
        return floor
    p = min(max(p, 0.0), 1.0)
    return max(floor, z * math.sqrt(p * (1 - p) / n))


def encode_correct(correct) -> str:
    """Per-example correctness (an iterable of bools in held-out order) as an evaluation's
    ``correct_bits``: base64 of the bits packed eight to a byte, the first example in the highest
    bit of the first byte, unused bits 0 (``numpy.packbits``'s order). 57 bytes (76 base64 characters) for
    digits' 450 examples, 1,250 (1,668) for fashion_mnist's 10,000."""
    flags = [bool(x) for x in correct]
    packed = bytearray((len(flags) + 7) // 8)
    for i, right in enumerate(flags):
        if right:
            packed[i >> 3] |= 0x80 >> (i & 7)
    return base64.b64encode(bytes(packed)).decode("ascii")


def decode_correct(text: str, n: int) -> int:
    """``correct_bits`` as an integer of ``n`` bits (example 0 the highest), or ``ValueError``
    saying why it is not ``n`` examples' bits."""
    if not isinstance(text, str):
        raise ValueError("not a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:          # binascii.Error
        raise ValueError("not base64") from None
    if len(raw) != (n + 7) // 8:
        raise ValueError(f"{len(raw) * 8} bits for {n} examples")
    pad = len(raw) * 8 - n
    value = int.from_bytes(raw, "big")
    if value & ((1 << pad) - 1):
        raise ValueError("bits set past the last example")
    return value >> pad


def encode_labels(labels) -> str:
    """The held-out examples' true classes (an iterable of ints 0-9 in held-out order) as an
    evaluation's ``heldout_labels``: one decimal digit per example (450 characters for digits,
    10,000 for fashion_mnist)."""
    out = []
    for x in labels:
        k = int(x)
        if not 0 <= k <= 9:
            raise ValueError(f"class {k} is not one decimal digit")
        out.append(str(k))
    return "".join(out)


@dataclass(frozen=True)
class Paired:
    """The examples that flipped between production and the candidate on one held-out set."""
    b: int      # production right, candidate wrong
    c: int      # candidate right, production wrong
    n: int

    def to_dict(self) -> dict:
        return {"production_right_candidate_wrong": self.b, "candidate_right_production_wrong": self.c,
                "n": self.n}


def _lacking(docs, key: str, what: str) -> str | None:
    """Why the evaluations ``docs`` (``(who, document)`` pairs) cannot be paired when one or both
    lack ``key`` (``what`` it holds, for the reader); None when both carry it."""
    missing = [who for who, doc in docs if not doc.get(key)]
    if not missing:
        return None
    whose = "neither evaluation carries" if len(missing) == 2 else f"{missing[0]}'s evaluation carries no"
    return f"{whose} {what} ({key}; an evaluation from an older version)"


def _paired_bits(candidate: dict, production: dict) -> tuple[tuple[int, int, int] | None, str | None]:
    """``((n, candidate bits, production bits), None)`` when both evaluations carry
    ``correct_bits`` for the same held-out set (same fingerprint, same ``n``) and each document's
    bits agree with its own ``n`` and accuracy; else ``(None, why not)``."""
    docs = (("the candidate", candidate), ("production", production))
    lacking = _lacking(docs, "correct_bits", "per-example results")
    if lacking:
        return None, lacking
    fps = [doc.get("heldout_fingerprint") for _, doc in docs]
    if not fps[0] or fps[0] != fps[1]:
        return None, "the two evaluations are not of one recorded held-out set (heldout_fingerprint)"
    try:
        sizes = [int(doc.get("n")) for _, doc in docs]
    except (TypeError, ValueError):
        return None, "an evaluation's n is not a number"
    if sizes[0] != sizes[1] or sizes[0] <= 0:
        return None, f"the evaluations' held-out sizes differ or are empty (n = {sizes[0]} and {sizes[1]})"
    n, bits = sizes[0], []
    for who, doc in docs:
        try:
            value = decode_correct(doc["correct_bits"], n)
        except ValueError as exc:
            return None, f"{who}'s per-example results are not {n} examples' bits ({exc})"
        if value.bit_count() != round(float(doc["accuracy"]) * n):
            return None, (f"{who}'s per-example results count {value.bit_count()} right of {n}, its accuracy "
                          f"{float(doc['accuracy']):.4f} says {round(float(doc['accuracy']) * n)}")
        bits.append(value)
    return (n, bits[0], bits[1]), None


def paired_counts(candidate: dict, production: dict) -> tuple[Paired | None, str | None]:
    """``(Paired, None)`` when both evaluations carry ``correct_bits`` for the same held-out set
    (same fingerprint, same ``n``) and each document's bits agree with its own ``n`` and
    accuracy; else ``(None, why not)`` (the gate then falls back to the unpaired tolerance)."""
    got, why = _paired_bits(candidate, production)
    if got is None:
        return None, why
    n, cand, prod = got
    return Paired(b=(prod & ~cand).bit_count(), c=(cand & ~prod).bit_count(), n=n), None


def class_paired_counts(candidate: dict, production: dict) -> tuple[dict[str, Paired] | None, str | None]:
    """Per class, the examples of that class that flipped each way: ``({class: Paired}, None)``
    (classes with at least one held-out example) when ``paired_counts`` can pair the two documents
    and both carry the same ``heldout_labels`` (one digit per example) that agree with each
    document's ``per_class_count`` and ``per_class_accuracy``; else ``(None, why not)`` (the gate
    then falls back to the fixed per-class drop)."""
    got, why = _paired_bits(candidate, production)
    if got is None:
        return None, why
    n, cand, prod = got
    docs = (("the candidate", candidate), ("production", production))
    lacking = _lacking(docs, "heldout_labels", "per-example classes")
    if lacking:
        return None, lacking
    labels = candidate["heldout_labels"]
    if labels != production["heldout_labels"]:
        return None, "the two evaluations' per-example classes (heldout_labels) differ"
    if not isinstance(labels, str) or len(labels) != n or not all("0" <= ch <= "9" for ch in labels):
        return None, f"heldout_labels is not one decimal digit for each of the {n} examples"
    out: dict[str, Paired] = {}
    for k in sorted(set(labels), key=class_key):
        mask = int("".join("1" if ch == k else "0" for ch in labels), 2)
        size = mask.bit_count()
        for who, doc, bits in (("the candidate", candidate, cand), ("production", production, prod)):
            count = (doc.get("per_class_count") or {}).get(k)
            acc = (doc.get("per_class_accuracy") or {}).get(k)
            if count is not None and int(count) != size:
                return None, f"{who}'s per_class_count says {count} examples of class {k}, heldout_labels {size}"
            right = (bits & mask).bit_count()
            if acc is None or round(float(acc) * size) != right:
                return None, (f"{who}'s per-example results count {right} right of {size} in class {k}, its "
                              f"per-class accuracy {acc} says {None if acc is None else round(float(acc) * size)}")
        out[k] = Paired(b=(prod & ~cand & mask).bit_count(), c=(cand & ~prod & mask).bit_count(), n=size)
    for who, doc in docs:
        extra = [k for k, count in (doc.get("per_class_count") or {}).items() if k not in out and int(count or 0)]
        if extra:
            return None, f"{who}'s per_class_count counts examples of class {extra[0]}, heldout_labels none"
    return out, None


def class_z(z: float, classes: int) -> float:
    """The per-class multiple of the standard error: the one-sided tail ``z`` standard errors
    leave (0.0228 for 2) shared among ``classes`` comparisons (Bonferroni), so that a retrain no
    better or worse than production fails some class by chance about as often as the accuracy
    rule fails it (2.84 for 2 and 10 classes)."""
    if classes <= 1:
        return z
    normal = NormalDist()
    return normal.inv_cdf(1 - (1 - normal.cdf(z)) / classes)


def paired_standard_error(b: int, c: int, n: int) -> float:
    """Standard error of the difference of two correlated proportions measured on the same ``n``
    examples, ``b`` and ``c`` the discordant counts: ``sqrt(((b + c)/n - d*d)/n)``, ``d = (c - b)/n``."""
    if n <= 0:
        return float("nan")
    d = (c - b) / n
    return math.sqrt(max((b + c) / n - d * d, 0.0) / n)


def paired_tolerance(b: int, c: int, n: int, *, floor: float = 0.01, z: float = 2.0) -> float:
    """Allowed accuracy drop from the paired difference: ``max(floor, z * paired_standard_error)``."""
    if n <= 0:
        return floor
    return max(floor, z * paired_standard_error(b, c, n))
