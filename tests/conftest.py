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


# ``make test`` runs the suite on two workers (pytest-xdist). A test module stays on one worker, so
# a module-scoped fixture (a whole flow run once for its module) runs once, and the module's tests run
# in their order. Session fixtures run once per worker that needs them; the few that cost a minute or
# more serve more than one module, and those modules share a worker.
SHARED_WORKER = {
    "test_demo.py": "demo-flow", "test_ui_browser.py": "demo-flow",            # demo_flow
    "test_mlproject_quality.py": "pretrained", "test_registry_gate_e2e.py": "pretrained",
    "test_sync_deploy.py": "pretrained",                                       # pretrained_digits
}


def pytest_configure(config):
    """Each xdist worker chooses service ports from its own slice (``MLOPS_TEST_PORT_SLICE``, read
    by ``mlops.ports.free_ports`` here and in every command a test starts): two workers
    never choose the same port in the seconds before a service binds it."""
    import os

    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(worker[2:]) < int(count):
        os.environ["MLOPS_TEST_PORT_SLICE"] = f"{worker[2:]}/{count}"
    # One cache folder for the session (the controller makes it, its xdist workers and every command
    # a test starts inherit it): the empty MLflow database new state folders copy is made once, not
    # in the user's ~/.cache.
    if not os.environ.get("MLOPS_CACHE_DIR"):
        import tempfile

        config._mlops_cache_dir = tempfile.mkdtemp(prefix="mlops-test-cache-")
        os.environ["MLOPS_CACHE_DIR"] = config._mlops_cache_dir


def pytest_unconfigure(config):
    import shutil

    made = getattr(config, "_mlops_cache_dir", None)
    if made:
        shutil.rmtree(made, ignore_errors=True)


def scope_of(nodeid: str) -> str:
    """The unit xdist hands to one worker: the test's module, or its ``SHARED_WORKER`` group."""
    module = nodeid.split("::", 1)[0]
    return SHARED_WORKER.get(module.rsplit("/", 1)[-1], module)


def pytest_xdist_make_scheduler(config, log):
    """xdist's scope scheduling with ``scope_of`` as the scope. (xdist's own ``--dist loadgroup``
    renames node ids, which pytest 9 no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return ModuleScheduling(config, log)
