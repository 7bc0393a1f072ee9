"""Test configuration. Fixtures live in tests/fixtures/*.py, one module per real service.

Every fixture module in tests/fixtures/ is loaded as a pytest plugin, so a new service's
fixtures need no edit here.
"""
from pathlib import Path

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}"
    for p in (Path(__file__).parent / "fixtures").glob("*.py")
    if not p.name.startswith("_")
)


# ``make test`` runs the suite on two workers (pytest-xdist, ``--dist loadgroup``). A test module
# stays on one worker, so a module-scoped fixture (a whole flow run once for its module) runs once.
# Session fixtures run once per worker that needs them; the few that cost a minute or more are
# needed by more than one module, and those modules share a worker.
SHARED_WORKER = {
    "test_demo.py": "demo-flow", "test_ui_browser.py": "demo-flow",            # demo_flow
    "test_mlproject_quality.py": "pretrained", "test_registry_gate_e2e.py": "pretrained",
    "test_sync_deploy.py": "pretrained",                                       # pretrained_digits
}


def pytest_collection_modifyitems(items):
    import pytest

    for item in items:
        module = item.path.name
        item.add_marker(pytest.mark.xdist_group(SHARED_WORKER.get(module, module)))
