"""The folders are the architecture: check who imports whom, and that heavy libraries stay off
the paths that do not need them (docs/architecture.md, "Packages and who may import whom")."""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.helpers import REPO

OURS = {"mlops", "mlops_common", "mlproject", "registry", "serving_sync", "serving_host"}
ALLOWED = {
    "mlops_common": {"mlops_common"},
    "registry": {"registry", "mlops_common"},
    "mlproject": {"mlproject", "mlops_common", "registry"},
    "serving_sync": {"serving_sync", "mlops_common", "registry"},
    "serving_host": {"serving_host"},
    "mlops": OURS,
}
HEAVY = {"tensorflow", "keras", "mlflow"}
# Modules that must not import heavy libraries at module level (fast CLI start, fast rollback).
LIGHT_PACKAGES = ("mlops_common", "serving_sync")
LIGHT_FILES = ("mlops/cli.py", "mlops/commands")


def _imports(path):
    """(top-level module, is_module_level) for every import in a file (``path`` or its text)."""
    source = path if isinstance(path, str) else path.read_text()
    return list(_imports_in(ast.parse(source, filename=str(path)), lazy=False))


_DYNAMIC = {"import_module", "__import__"}      # importlib.import_module("x"), __import__("x")


def _imports_in(node, *, lazy: bool):
    """Imports below ``node``; module level unless inside a function or lambda (an import in a
    ``try:``, an ``if`` or a class body runs when the module is imported)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import):
            for alias in child.names:
                yield alias.name.split(".")[0], not lazy
        elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
            yield child.module.split(".")[0], not lazy
        elif isinstance(child, ast.Call) and child.args and isinstance(child.args[0], ast.Constant) \
                and isinstance(child.args[0].value, str) \
                and getattr(child.func, "attr", getattr(child.func, "id", None)) in _DYNAMIC:
            yield child.args[0].value.split(".")[0], not lazy
        yield from _imports_in(child, lazy=lazy or isinstance(
            child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))


# Each must be seen (module name, module level?) or the checks below could pass on a blind guard.
GUARDED_PACKAGE_IMPORTS = (
    ("import serving_sync.fleet", ("serving_sync", True)),
    ("def f():\n    from serving_sync import fleet", ("serving_sync", False)),
    ("import importlib\nimportlib.import_module('serving_sync.fleet')", ("serving_sync", True)),
    ("def f():\n    return __import__('mlproject.train')", ("mlproject", False)),
    ("try:\n    import mlflow\nexcept ImportError:\n    mlflow = None", ("mlflow", True)),
    ("if True:\n    from tensorflow import keras", ("tensorflow", True)),
    ("class C:\n    import keras", ("keras", True)),
    ("f = lambda: importlib.import_module('tensorflow')", ("tensorflow", False)),
)


def test_the_import_scanner_sees_every_form_of_import():
    for source, expected in GUARDED_PACKAGE_IMPORTS:
        assert expected in _imports(source), source


def _py_files(package):
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_design_allows(package):
    files = _py_files(package)
    assert files, f"{package} has no modules"
    bad = [(f.relative_to(REPO), mod) for f in files for mod, _ in _imports(f)
           if mod in OURS and mod not in ALLOWED[package]]
    assert not bad, f"imports against the design: {bad}"


def test_light_modules_do_not_import_heavy_libraries_at_module_level():
    files = [f for p in LIGHT_PACKAGES for f in _py_files(p)]
    for entry in LIGHT_FILES:
        path = REPO / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    bad = [(f.relative_to(REPO), mod) for f in files for mod, top in _imports(f) if top and mod in HEAVY]
    assert not bad, f"heavy imports at module level: {bad}"


def test_serving_sync_never_imports_tensorflow_at_all():
    bad = [(f.relative_to(REPO), mod) for f in _py_files("serving_sync") for mod, _ in _imports(f)
           if mod in ("tensorflow", "keras")]
    assert not bad, bad


def test_cli_help_and_sync_modules_load_without_tensorflow_or_mlflow():
    code = (
        "import sys, importlib, pkgutil, serving_sync, mlops.cli\n"
        "for m in pkgutil.walk_packages(serving_sync.__path__, 'serving_sync.'):\n"
        "    importlib.import_module(m.name)\n"
        "mlops.cli.build_parser()\n"
        "heavy = sorted(k for k in ('tensorflow', 'keras', 'mlflow') if k in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "", f"loaded heavy modules: {p.stdout.strip()}"


def _test_imports_outside_the_lab(source: str, filename: str) -> list[str]:
    """What a benchmark imports from ``tests`` other than public names of public ``tests.lab``
    modules (the fixtures, test modules, private modules or names)."""
    bad = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules, names = [node.module], [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            modules, names = [a.name for a in node.names], []
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] != "tests":
                continue
            if parts[:2] != ["tests", "lab"] or any(p.startswith("_") for p in parts):
                bad.append(f"{filename}: {module}")
            bad += [f"{filename}: {module}.{n}" for n in names if n.startswith("_")]
    return bad


GUARDED_IMPORTS = (
    "from tests.fixtures.deploy_env import DeployEnv",        # a fixture module, not the lab
    "from tests.test_sync_canary import Load",                 # a test module
    "from tests.lab.models import _private",                   # a private name
    "from tests.lab._helpers import thing",                    # a private module
    "import tests.fixtures.sshd",
    "def f():\n    from tests.helpers import run_mlops",      # nested imports count too
)


def test_benchmarks_import_only_public_names_from_the_tests():
    """The test lab (tests/lab/) is shared with the benchmarks through its public names only."""
    for line in GUARDED_IMPORTS:                               # the guard itself can fail
        assert _test_imports_outside_the_lab(line, "bench_x.py") != [], line
    assert _test_imports_outside_the_lab("from tests.lab.models import ModelSpec, build_models\n"
                                         "import tests.lab.traffic\nfrom benchmarks import _setup\n",
                                         "bench_x.py") == []
    bad = [b for path in _py_files("benchmarks") for b in _test_imports_outside_the_lab(path.read_text(), path.name)]
    assert bad == []


def test_no_test_or_benchmark_reads_outside_the_repository():
    """A fresh clone with nothing beside it must pass: no path to ../shared or the repo's parent."""
    offenders = []
    for folder in ("tests", "benchmarks"):
        for path in _py_files(folder):
            text = path.read_text()
            if path.name != "test_architecture.py" and ('"shared"' in text or "REPO.parent" in text):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def _function_code(path, name):
    """The AST of function ``name`` in ``path`` without its docstring, as a comparable string."""
    tree = ast.parse((REPO / path).read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    body = fn.body[1:] if isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant) else fn.body
    return ast.dump(ast.Module(body=body, type_ignores=[]))


def test_the_two_copies_of_the_text_format_escape_check_are_the_same_code():
    """serving_host may import nothing of ours and serving_sync may not import serving_host, so the
    check of TF Serving's string escapes (``cpp_string_escapes``) is written in both: what the local
    server refuses and what a deploy refuses must stay the same."""
    from serving_host import config as host_config
    from serving_sync import models_config

    assert (_function_code("serving_host/config.py", "cpp_string_escapes")
            == _function_code("serving_sync/models_config.py", "cpp_string_escapes"))
    assert host_config._SIMPLE_ESCAPES == models_config._SIMPLE_ESCAPES
    assert host_config._HEX == models_config._HEX
