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
