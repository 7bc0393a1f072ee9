"""``errors.reworded``: an error saying something else keeps what it is (class, exit code, fields)."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from mlops_common.errors import DamagedModel, UnfitModel, UserError, reworded

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mlops_common", "registry", "mlproject", "mlops", "serving_sync")
# the modules defining UserError subclasses (the last test fails when one is defined elsewhere)
MODULES = ("mlops_common.errors", "serving_sync.errors", "serving_sync.canary", "serving_sync.cancel",
           "serving_sync.transports.ssh_channel", "mlproject.validation")


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _subclasses(sub)
    return found


def _every_subclass() -> list[type]:
    for name in MODULES:
        importlib.import_module(name)
    return sorted(_subclasses(UserError) | {UserError}, key=lambda c: (c.__module__, c.__qualname__))


def _made(cls: type) -> UserError:
    """An instance of ``cls`` whatever its constructor takes, with fields of its own."""
    exc = cls.__new__(cls)
    UserError.__init__(exc, "what went wrong; what to do")
    exc.exit_code = 7                   # an instance's exit code, not the class's
    exc.extra = ["a field"]
    if isinstance(exc, (DamagedModel, UnfitModel)):
        exc.problem = "what went wrong"
    return exc


@pytest.mark.parametrize("cls", _every_subclass(), ids=lambda c: c.__qualname__)
def test_every_user_error_keeps_its_class_exit_code_and_fields_when_reworded(cls):
    """Found by review (sixteenth stop): ``reworded`` called ``type(exc)(message, exit_code=...)``:
    ``ProductionMoved`` and ``CanaryFailed`` (other constructor arguments) became a plain
    ``UserError``, and every field set after construction (``DiskFull.free``, ``.now``,
    ``.in_rollout``, ``.deployed``) was lost."""
    exc = _made(cls)
    again = reworded(exc, f"h1: {exc.message}")
    assert type(again) is cls
    assert again.message == "h1: what went wrong; what to do" and again.args == (again.message,)
    assert again.exit_code == 7
    assert again.extra is exc.extra
    assert exc.message == "what went wrong; what to do"        # the original is unchanged


@pytest.mark.parametrize("cls", [DamagedModel, UnfitModel])
def test_a_reworded_model_problem_keeps_the_problem_without_the_advice(cls):
    """``problem`` is the line without the advice (the gate says production's own); rebuilt from
    the reworded message it was the whole line, advice and all."""
    exc = cls("v2's logged model cannot be loaded (bad zip); register a new version", problem="v2's logged "
              "model cannot be loaded (bad zip)")
    again = reworded(exc, f"{exc.message}. The training run r1 is kept")
    assert type(again) is cls and again.exit_code == exc.exit_code
    assert again.problem == "v2's logged model cannot be loaded (bad zip)"


def test_reworded_keeps_the_fields_of_the_real_constructors():
    from serving_sync.errors import DiskFull, ProductionMoved

    moved = ProductionMoved("m", 2, 3, tail="the hosts stay on v2")
    moved.deployed = object()
    again = reworded(moved, f"{moved.message}; more")
    assert type(again) is ProductionMoved and again.now == 3 and again.deployed is moved.deployed
    full = DiskFull.at("h1", 10_000_000, 5_000_000)
    again = reworded(full, "this machine: full")
    assert type(again) is DiskFull and (again.needed, again.free) == (10_000_000, 5_000_000)
    assert again.message == "this machine: full" and again.exit_code == 2


def test_every_module_defining_a_user_error_is_in_the_list_above():
    """A subclass defined in another module would not be checked: the list must name its module."""
    known = {c.__name__ for c in _every_subclass()}
    missed = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef) and node.name not in known and any(
                        isinstance(b, ast.Name) and b.id in known for b in node.bases):
                    missed.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert missed == []
