"""How ``make test`` spreads the suite over its workers (tests/conftest.py): a module never splits,
and the modules that share an expensive session fixture share a worker, so it runs once."""
from __future__ import annotations

import re
from pathlib import Path

from tests import conftest
from tests.helpers import REPO

EXPENSIVE_SESSION_FIXTURES = ("demo_flow", "pretrained_digits")   # a minute or more each


def test_modules_sharing_an_expensive_session_fixture_share_a_worker():
    here = Path(__file__).name
    for fixture in EXPENSIVE_SESSION_FIXTURES:
        users = {p.name for p in (REPO / "tests").glob("test_*.py")
                 if p.name != here and re.search(rf"\b{fixture}\b", p.read_text())}
        assert len(users) >= 2, (fixture, users)          # else there is nothing to share
        groups = {conftest.SHARED_WORKER.get(m) for m in users}
        assert len(groups) == 1 and None not in groups, f"{fixture}: {users} -> {groups}"


def test_each_module_and_each_group_is_one_scope():
    split = conftest.scope_of
    assert split("tests/test_sync_hosts.py::test_a[x-y::z]") == split("tests/test_sync_hosts.py::test_b") \
        == "tests/test_sync_hosts.py"
    assert split("tests/test_sync_tfs.py::test_a") != split("tests/test_sync_hosts.py::test_a")
    assert split("tests/test_demo.py::test_a") == split("tests/test_ui_browser.py::test_b") == "demo-flow"
    assert split("tests/test_sync_deploy.py::t") == split("tests/test_mlproject_quality.py::t") == "pretrained"
