"""JUnit XML for CircleCI's ``store_test_results``: one test case per check a command made."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from mlops_common.errors import ConfigError
from mlops_common.log import redact
from mlops_common.paths import check_writable_dir

# Characters XML 1.0 does not allow (ElementTree writes them as they are, and the file does not
# parse: CircleCI's Tests tab showed nothing for a message carrying TF Serving's error text).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    """``text`` with every character XML 1.0 refuses shown as ``?``."""
    return _NOT_XML.sub("?", text)


@dataclass
class Case:
    name: str
    passed: bool
    message: str = ""
    seconds: float = 0.0


def check_path(path: str | Path | None, flag: str = "--junit") -> None:
    """Refuse, before a command records anything, a path the report could not be written to."""
    if path is None:
        return
    out = Path(path)
    if out.is_dir():
        raise ConfigError(f"{flag} {out} is a directory; name a file, e.g. {out / 'results.xml'}")
    check_writable_dir(out.parent, f"{flag} {out}")


def write(path: str | Path, suite: str, cases: list[Case]) -> Path:
    """Write ``cases`` as one JUnit test suite to ``path`` (parent folders created)."""
    path = Path(path)
    check_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--junit {path}: cannot create {path.parent} ({exc.strerror})") from None
    failures = sum(not c.passed for c in cases)
    suite = xml_text(suite)
    root = ET.Element("testsuite", name=suite, tests=str(len(cases)), failures=str(failures),
                      errors="0", time=f"{sum(c.seconds for c in cases):.3f}")
    for c in cases:
        message = xml_text(redact(c.message))       # a CI artifact: no form of a secret
        el = ET.SubElement(root, "testcase", classname=suite, name=xml_text(c.name), time=f"{c.seconds:.3f}")
        if not c.passed:
            ET.SubElement(el, "failure", message=message[:500]).text = message
        elif message:
            ET.SubElement(el, "system-out").text = message
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"--junit {path}: cannot write it ({exc.strerror})") from None
    return path
