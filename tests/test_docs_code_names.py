"""What the docs say the code is made of exists: every module file (`serving_sync/fleet_plan.py`,
`http_server.py`) and every `module.name` they point a reader to (`bake.judge`,
`metrics_windows.window_outside`, `stop.at_safe_points`).

Modules get split and names move (the thirteenth stop split six large modules); a doc that still
sends the next engineer to `bake.window_outside` after it moved is the first wrong turn they take.
Pure text and AST checks: nothing is imported, no service is started.
"""
from __future__ import annotations

import ast
import functools
import re

from tests.helpers import REPO

DOCS = ("README.md", "docs/production.md", "docs/architecture.md", "serving_host/README.md")
PACKAGES = ("mlops", "mlops_common", "registry", "serving_sync", "serving_host", "mlproject", "benchmarks", "tests")
# `name.ext` is a file of another kind (a hosts file, a ledger, TF Serving's C++), not `module.name`
FILE_ENDINGS = {"yml", "yaml", "json", "toml", "config", "db", "cc", "h", "proto", "service", "keras", "pb",
                "txt", "md", "sh", "cfg", "log", "npz", "csv", "html", "xml", "tar", "gz",
                "com", "org", "io", "net", "dev"}      # and web addresses (`circleci.com`)
# a name shared with one of our modules but meaning something else
NOT_OURS = {"model.export"}     # Keras's Model.export, not mlproject.model


@functools.cache
def _modules() -> dict[str, list]:
    found: dict[str, list] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if ".venv" not in path.parts:
                found.setdefault(path.stem, []).append(path)
    return found


@functools.cache
def _names(path) -> dict[str, frozenset | None]:
    """Top-level names of a module; for a class, the names it defines (methods, fields)."""
    names: dict[str, frozenset | None] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = None
        elif isinstance(node, ast.ClassDef):
            members = set()
            for m in node.body:
                if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    members.add(m.name)
                elif isinstance(m, ast.AnnAssign) and isinstance(m.target, ast.Name):
                    members.add(m.target.id)
                elif isinstance(m, ast.Assign):
                    members.update(t.id for t in m.targets if isinstance(t, ast.Name))
            names[node.name] = frozenset(members)
        elif isinstance(node, ast.Assign):
            names.update((t.id, None) for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = None
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(((a.asname or a.name).split(".")[0], None) for a in node.names)
    return names


def _exists(ref: str) -> bool:
    """``ref`` (from ``references``) names a module file, or a name in one of our modules."""
    modules = _modules()
    if ref.endswith(".py"):
        if "/" in ref:
            return (REPO / ref).exists() or any(str(p).endswith("/" + ref) for ps in modules.values() for p in ps)
        return ref[:-3] in modules
    parts = ref.split(".")
    if parts[0] in PACKAGES:                    # serving_sync.transports.ssh.X: walk the packages
        folder, i = REPO / parts[0], 1
        while i < len(parts) and (folder / parts[i]).is_dir():
            folder, i = folder / parts[i], i + 1
        if i == len(parts):
            return True                         # a package
        if (folder / f"{parts[i]}.py").exists():
            candidates, rest = [folder / f"{parts[i]}.py"], parts[i + 1:]
        elif (folder / "__init__.py").exists():         # a name the package itself defines
            candidates, rest = [folder / "__init__.py"], parts[i:]
        else:
            return False
    else:
        candidates, rest = modules.get(parts[0], []), parts[1:]
    for path in candidates:
        names = _names(path)
        if not rest or (rest[0] in names and (len(rest) == 1 or names[rest[0]] is None
                                              or rest[1] in names[rest[0]])):
            return True
    return False


def references(text: str) -> list[str]:
    """The module files and `module.name`s that the code spans of ``text`` name: a dotted name
    that starts with one of our packages and goes on with one of its modules, or starts with
    one of our modules' names."""
    refs = []
    for span in re.findall(r"`([^`\n]+)`", text):
        if "[]" in span:                        # a JSON path (`stores[].retention.in_use`)
            continue
        for ref in re.findall(r"[A-Za-z_][\w/]*\.py\b|[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+", span):
            parts = ref.split(".")
            if ref.endswith(".py"):
                refs.append(ref)
            elif parts[-1] in FILE_ENDINGS or ref in NOT_OURS or "/" in ref:
                continue
            elif parts[0] in PACKAGES:
                folder = REPO / parts[0]
                if (folder / parts[1]).is_dir() or (folder / f"{parts[1]}.py").exists():
                    refs.append(ref)            # not an MLflow tag such as `mlops.kind`
            elif parts[0] in _modules():
                refs.append(ref)
    return refs


def test_the_scanner_finds_a_moved_module_and_a_moved_name():
    text = ("`serving_sync/fleet.py`, `bake.judge`, `serving_sync.cancel.check`, `stop.at_safe_points`, "
            "`hosts.toml`, `stores[].retention.in_use`, `serving_sync/no_such_module.py`, "
            "`bake.window_outside`, `registry.rest`, `mlops.kind`, `circleci.com`, `mlops.commands.output.emit`, "
            "`serving_sync.transports.ssh.SshTransport.upload_tree_hashing`, `ssh.SshTransport.no_such_method`, "
            "`serving_sync.rest`")
    refs = references(text)
    assert not {"hosts.toml", "circleci.com", "mlops.kind"} & set(refs) and not any("in_use" in r for r in refs)
    missing = [r for r in refs if not _exists(r)]
    assert missing == ["serving_sync/no_such_module.py", "bake.window_outside", "ssh.SshTransport.no_such_method"], \
        missing


def test_every_module_and_name_the_docs_point_to_exists():
    missing = [f"{doc}: `{ref}`" for doc in DOCS for ref in references((REPO / doc).read_text()) if not _exists(ref)]
    assert not missing, "the docs name code that is not there (moved or renamed?): " + "; ".join(missing)


def _code_block_references(text: str) -> list[str]:
    """``references`` of the docs' ```python blocks (the API listings of docs/architecture.md), which
    are not code spans, plus ``module.name`` for every name a ``from module import a, b`` line names."""
    refs = []
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        for line in block.splitlines():
            m = re.match(r"\s*from ([\w.]+) import ([\w ,]+?)\s*(?:#|$)", line)
            if m:
                names = [n.split(" as ")[0].strip() for n in m.group(2).split(",")]
                refs += [f"{m.group(1)}.{n}" for n in names]
                listed = re.match(r"[a-z_]\w*(?: / [a-z_]\w*)+", line.partition("#")[2].strip())
                if listed and len(names) == 1:      # `import mod  # a / b / c`: the module's names
                    refs += [f"{m.group(1)}.{names[0]}.{n}" for n in listed.group(0).split(" / ")]
            refs += references("`" + line.replace("`", " ") + "`")
    return refs


def test_every_module_and_name_the_api_listings_point_to_exists():
    """The API listings are code blocks, which the scanner above did not read: one still sent the
    reader to ``bake``'s ``parse`` / ``window`` / ``scrape`` (`from serving_sync import bake  # parse /
    window / quantile / judge`) after they moved to ``metrics_windows`` and ``metrics_scrape``."""
    text = ("```python\nfrom serving_sync import bake, no_such  # bake.parse; metrics_windows.parse\n"
            "from serving_sync import bake  # window / judge (pure)\n```\n")
    assert [r for r in _code_block_references(text) if not _exists(r)] == [
        "serving_sync.no_such", "bake.parse", "serving_sync.bake.window"]
    assert _exists("serving_sync.transports.open_transport")        # a package's own name (__init__.py)
    refs = [(doc, ref) for doc in DOCS for ref in _code_block_references((REPO / doc).read_text())]
    assert len(refs) > 100, len(refs)
    missing = [f"{doc}: {ref}" for doc, ref in refs if not _exists(ref)]
    assert not missing, "the API listings name code that is not there (moved or renamed?): " + "; ".join(missing)
