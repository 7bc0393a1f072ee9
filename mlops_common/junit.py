"""JUnit XML for CircleCI's ``store_test_results``: one test case per check a command made."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Case:
    name: str
    passed: bool
    message: str = ""
    seconds: float = 0.0


def write(path: str | Path, suite: str, cases: list[Case]) -> Path:
    """Write ``cases`` as one JUnit test suite to ``path`` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    failures = sum(not c.passed for c in cases)
    root = ET.Element("testsuite", name=suite, tests=str(len(cases)), failures=str(failures),
                      errors="0", time=f"{sum(c.seconds for c in cases):.3f}")
    for c in cases:
        el = ET.SubElement(root, "testcase", classname=suite, name=c.name, time=f"{c.seconds:.3f}")
        if not c.passed:
            ET.SubElement(el, "failure", message=c.message[:500]).text = c.message
        elif c.message:
            ET.SubElement(el, "system-out").text = c.message
    tmp = path.with_suffix(path.suffix + ".tmp")
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    tmp.replace(path)
    return path
