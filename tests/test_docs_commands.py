"""What the user-facing docs name exists: every `mlops` command and flag they show, every flag of
the local server and the install script, every setting of their configuration tables.

The docs are what a new user follows (README.md, docs/production.md, docs/architecture.md,
serving_host/README.md); a flag renamed in the code and not in them would be the first thing
that user hits. Pure text checks against the real parsers: no service is started.
"""
from __future__ import annotations

import argparse
import re

import pytest

from tests.helpers import REPO

DOCS = ("README.md", "docs/production.md", "docs/architecture.md", "serving_host/README.md")
# Flags of other programs the docs show (mlflow server / mlflow run, docker, useradd,
# check-jsonschema): not ours to check.
FOREIGN_FLAGS = {"--workers", "--backend-store-uri", "--artifacts-destination", "--host", "--port",
                 "--allowed-hosts", "--app-name", "--env-manager", "--experiment-name", "--builtin-schema",
                 "--restart", "--create-home",
                 "--flag"}      # serving_host/README.md: "`--flag=value` syntax"
# Where the code reads settings (the docs and the tests do not count).
CODE = ("mlops", "mlops_common", "registry", "serving_sync", "serving_host", "mlproject", "scripts",
        ".circleci", "Makefile", "MLproject")


def _doc(name: str) -> str:
    return (REPO / name).read_text()


def _mlops_parser():
    from mlops.cli import build_parser

    return build_parser()


def _subparser(parser, name):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None


def _all_options(parser) -> set[str]:
    out = set()
    for action in parser._actions:
        out.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out |= _all_options(sub)
    return out


def _logical_lines(text: str):
    """Lines of a doc, with an indented `[--flag ...]` continuation inside a code block joined to
    the command line above it (the "Command names" block of docs/architecture.md)."""
    out: list[str] = []
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced and out and re.match(r"\s+\[--", line):
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return out


def _mlops_invocations():
    """(doc, line, command words, flags) for each `mlops <command> ...` a doc shows; the flags up
    to where the command's text ends (a backtick, a table cell, an alternative `|`, a sentence)."""
    parser = _mlops_parser()
    for doc in DOCS:
        for n, line in enumerate(_logical_lines(_doc(doc)), 1):
            for m in re.finditer(r"\bmlops((?: [a-z][a-z-]*)+)([^`|;)\n]*)", line):
                words, p, path = m.group(1).split(), parser, []
                for w in words:
                    sub = _subparser(p, w)
                    if sub is None:
                        break
                    p, path = sub, path + [w]
                if not path:
                    continue
                rest = " ".join(words[len(path):]) + m.group(2)
                flags = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest)
                yield doc, n, path, p, flags


def test_every_mlops_flag_the_docs_show_belongs_to_its_command():
    seen, wrong = 0, []
    for doc, n, path, p, flags in _mlops_invocations():
        known = _all_options(p)
        seen += len(flags)
        wrong += [f"{doc}:{n}: `mlops {' '.join(path)}` has no option {f}" for f in flags if f not in known]
    assert seen >= 60, f"only {seen} flags found in the docs: is the extraction still working?"
    assert not wrong, "\n".join(wrong)


def _install_script_options() -> set[str]:
    text = (REPO / "serving_host" / "install_server.sh").read_text()
    return set(re.findall(r"^\s*(--[a-z][a-z0-9-]*)\)", text, flags=re.M))


def _benchmark_options() -> set[str]:
    out = set()
    for f in (REPO / "benchmarks").glob("*.py"):
        out |= set(re.findall(r"add_argument\(\s*\"(--[a-z][a-z0-9-]*)\"", f.read_text()))
    return out


def _local_server_options() -> set[str]:
    from serving_host import local_server

    return _all_options(local_server.build_parser())


def test_every_dashed_flag_the_docs_name_exists_somewhere():
    """A `--kebab-case` flag anywhere in the docs is an `mlops` option, an install_server.sh
    option, a benchmark's, or another program's (FOREIGN_FLAGS)."""
    known = _all_options(_mlops_parser()) | _install_script_options() | _benchmark_options() | FOREIGN_FLAGS
    wrong = _flags_not_in(r"(?<![\w-])(--[a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?![\w])", known,
                          "is no option of mlops, install_server.sh or a benchmark")
    assert not wrong, "\n".join(wrong)


def test_every_tf_serving_flag_the_docs_name_is_taken_by_the_local_server():
    """The local server takes TF Serving's flags (serving_host/README.md): every `--snake_case`
    flag the docs name is in its parser (served, or taken and ignored)."""
    wrong = _flags_not_in(r"(?<![\w-])(--[a-z][a-z0-9]*(?:_[a-z0-9]+)+)", _local_server_options(),
                          "is not a flag of python -m serving_host.local_server")
    assert not wrong, "\n".join(wrong)


def _flags_not_in(pattern: str, known: set, says: str) -> list[str]:
    """``doc:line: --flag <says>`` for each flag matching ``pattern`` in the docs and not in ``known``."""
    return [f"{doc}:{n}: {flag} {says}" for doc in DOCS for n, line in enumerate(_doc(doc).splitlines(), 1)
            for flag in re.findall(pattern, line) if flag not in known]


def _table_settings(doc: str, heading: str) -> list[str]:
    text = _doc(doc)
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    rows = [line for line in text[start:end if end > 0 else None].splitlines() if line.startswith("| `")]
    names = []
    for row in rows:
        first_cell = row.split("|")[1]
        names += re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell)
        # `MLFLOW_TRACKING_USERNAME` / `_PASSWORD`: the suffix names a variable of the same stem
        for suffix in re.findall(r"`(_[A-Z0-9_]+)`", first_cell):
            names.append(names[-1].rsplit("_", 1)[0] + suffix)
    return names


@pytest.mark.parametrize("doc, heading", [("README.md", "### Configuration"),
                                          ("docs/architecture.md", "## Settings (environment)")])
def test_every_setting_of_the_configuration_tables_is_read_by_the_code(doc, heading):
    names = _table_settings(doc, heading)
    assert len(names) >= 20, names
    code = ""
    for part in CODE:
        path = REPO / part
        files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()
                                                and f.suffix in (".py", ".sh", ".yml")]
        code += "\n".join(f.read_text() for f in files)
    unread = [name for name in names if not re.search(rf"\b{name}\b", code)]
    assert not unread, f"{doc} ({heading}) names settings no code reads: {unread}"


def _default_cell(doc: str, heading: str, first: str) -> str:
    text = _doc(doc)
    section = text[text.index(heading):]
    for line in section.splitlines():
        if line.startswith(f"| `{first}`"):
            return line.rstrip().rstrip("|").rsplit("|", 1)[1].strip()
    raise AssertionError(f"{doc} ({heading}) has no row for {first}")


@pytest.mark.parametrize("doc, heading", [("README.md", "### Configuration"),
                                          ("docs/architecture.md", "## Settings (environment)")])
def test_the_defaults_of_the_configuration_tables_are_the_codes(doc, heading):
    from mlops_common import settings
    from registry.gate_rules import GateRules
    from serving_sync import store
    from serving_sync.bake import Limits
    from serving_sync.options import DeployOptions

    def numbers(cell):
        return [float(x) for x in re.findall(r"(?<![\w.$])(\d+(?:\.\d+)?)(?![\w.])", cell)]

    assert numbers(_default_cell(doc, heading, "MLOPS_LOCK_TTL")) == [settings.DEFAULT_LOCK_TTL]
    assert numbers(_default_cell(doc, heading, "MLOPS_STORE_URL_EXPIRY")) == [store.DEFAULT_EXPIRY]
    assert numbers(_default_cell(doc, heading, "MLOPS_MLFLOW_PORT")) == [
        settings.DEFAULT_MLFLOW_PORT, settings.DEFAULT_REST_PORT, settings.DEFAULT_GRPC_PORT]
    limits = Limits()
    bake = _default_cell(doc, heading, "MLOPS_BAKE_SECONDS")
    assert numbers(bake) == [DeployOptions().bake, limits.max_error_rate, limits.max_latency_ratio,
                             limits.min_requests, limits.min_traffic_ratio], bake
    assert bake.rstrip("`").endswith(limits.on_low_traffic), bake
    gate, rules = _default_cell(doc, heading, "MLOPS_GATE_MIN_ACCURACY"), GateRules()
    assert rules.max_accuracy_drop is None and "derived" in gate       # from the held-out size
    fractions = [n for n in numbers(gate) if n < 1]     # min accuracy first, max class drop last
    assert (fractions[0], fractions[-1]) == (rules.min_accuracy, rules.class_drop_fallback), gate
    assert rules.max_class_drop is None and "per class" in gate         # paired per class
    assert settings.DEFAULT_MODEL_NAME in _default_cell(doc, heading, "MLOPS_MODEL_NAME")
    assert "./.mlops" in _default_cell(doc, heading, "MLOPS_HOME")


def _section(doc: str, heading: str) -> str:
    """The text of ``doc`` from ``heading`` to the next heading of the same or a higher level."""
    text = _doc(doc)
    start = text.index(heading)
    level = heading.split(" ", 1)[0]
    ends = [m.start() for m in re.finditer(r"^#{1,%d} " % len(level), text[start + len(heading):], flags=re.M)]
    return text[start:start + len(heading) + ends[0]] if ends else text[start:]


def test_the_ledger_contract_names_the_codes_columns_actions_and_outcomes():
    """docs/architecture.md, "The ledger": the columns, actions and outcomes are the ones
    registry/ledger.py writes and accepts (Entry refuses any other action or outcome)."""
    from registry import ledger

    text = _section("docs/architecture.md", "## The ledger")
    columns = text[text.index("`ledger_entries`"):text.index("Actions:")]
    actions = text[text.index("Actions:"):text.index("Outcomes:")]
    outcomes = text[text.index("Outcomes:"):].split(".", 1)[0]

    def names(part):        # the names, not what the parentheses after one say
        return set(re.findall(r"`([a-z_]+)`", re.sub(r"\([^()]*\)", "", part)))

    assert names(columns) - {"ledger_entries"} == set(ledger.entries_table.c.keys()), columns
    assert names(actions) == set(ledger.ACTIONS), actions
    assert names(outcomes) == set(ledger.OUTCOMES), outcomes


def test_the_version_tag_table_is_registry_tags():
    """docs/architecture.md, "Registered model version tags": one row names every tag that
    registry/tags.py defines, and nothing else; the older names it lists are ``tags.LEGACY``'s."""
    from registry import tags

    text = _section("docs/architecture.md", "## Registered model version tags")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    in_table = {name for row in rows for name in re.findall(r"`([a-z_.]+)`", row.split("|")[1])}
    defined = {v for k, v in vars(tags).items() if k.isupper() and isinstance(v, str)}
    assert in_table == defined
    legacy = text[text.index("Versions registered before"):].split(":", 1)[0]
    assert set(re.findall(r"`([a-z_.]+)`", legacy)) == set(tags.LEGACY.values()), legacy


def _toml_blocks(doc: str) -> list[str]:
    return re.findall(r"^```toml\n(.*?)^```", _doc(doc), flags=re.M | re.S)


def test_the_hosts_file_examples_use_the_fields_the_parser_takes():
    """Every key of a hosts-file example in README.md and docs/architecture.md is one that
    ``serving_sync.hosts`` accepts (it refuses any other, naming it); the architecture's example
    shows every host field; the one-host variables are the ones it reads."""
    import tomllib

    from serving_sync import hosts

    top_level = {"store", "store_endpoint"}
    for doc in ("README.md", "docs/architecture.md"):
        blocks = [tomllib.loads(b) for b in _toml_blocks(doc)]
        assert blocks, doc
        for data in blocks:
            assert set(data) - {"hosts"} <= top_level, (doc, data)
            for entry in data.get("hosts", []):
                assert set(entry) <= set(hosts.HOST_FIELDS), (doc, set(entry) - set(hosts.HOST_FIELDS))
    shown = {k for b in _toml_blocks("docs/architecture.md") for e in tomllib.loads(b).get("hosts", []) for k in e}
    assert shown == set(hosts.HOST_FIELDS)
    assert {k for b in _toml_blocks("docs/architecture.md") for k in tomllib.loads(b)} - {"hosts"} == top_level
    settings_row = next(line for line in _doc("docs/architecture.md").splitlines()
                        if line.startswith("| `MLOPS_SYNC_TARGET`"))
    assert set(re.findall(r"`(MLOPS_SYNC_[A-Z_]+)`", settings_row.split("|")[1])) == set(hosts.ENV_FIELDS.values())
    assert "`MLOPS_SYNC_NAME` defaults to `default`" in settings_row
    assert hosts.load_hosts(environ={"MLOPS_SYNC_TARGET": "file:///tmp/x", "MLOPS_SYNC_REST_URL":
                                     "http://127.0.0.1:1"})[0].name == "default"


def test_the_api_defaults_the_architecture_shows_are_the_codes():
    """The ``DeployOptions`` and ``SmokeOptions`` defaults written in docs/architecture.md's API
    block ("Deploy orchestration") are the dataclasses' own, and the HTTP defaults of the MLflow
    clients in its settings table are registry.client's."""
    from registry import client
    from serving_sync.options import DeployOptions
    from serving_sync.smoke import SmokeOptions

    text = _section("docs/architecture.md", "## Deploy orchestration")

    def shown(start: str) -> dict[str, str]:
        comment = []
        for line in text[text.index(start):].splitlines()[0:6]:
            comment.append(line.split("#", 1)[1] if "#" in line else "")
            if not line.rstrip().endswith(",") and len(comment) > 1:
                break
        return dict(re.findall(r"\b([a-z_]+)=([\w.+-]+)(?=[,)\s]|$)", " ".join(comment)))

    opts, smoke = DeployOptions(), SmokeOptions()
    deploy_shown = shown("from serving_sync.options import DeployOptions")
    assert len(deploy_shown) >= 10, deploy_shown
    for name, value in deploy_shown.items():
        if value.endswith("()"):
            continue
        actual = getattr(opts, name)
        assert str(actual) == value or (isinstance(actual, float) and float(value) == actual), (name, value, actual)
    smoke_shown = shown("from serving_sync.smoke import")
    assert {k: float(v) for k, v in smoke_shown.items()} == {
        "atol": smoke.atol, "requests": smoke.requests, "budget_ms": smoke.budget_ms}

    # every MLflow HTTP variable registry.client sets a default for is in the row, with that default
    row = next(line for line in _doc("docs/architecture.md").splitlines()
               if line.startswith("| `MLFLOW_HTTP_REQUEST_TIMEOUT`"))
    names = re.findall(r"`(MLFLOW_HTTP_[A-Z_]+)`", row.split("|")[1])
    assert set(names) == set(client.HTTP_DEFAULTS), names
    defaults = re.findall(r"`([\d.]+)`", _default_cell("docs/architecture.md", "## Settings (environment)",
                                                        "MLFLOW_HTTP_REQUEST_TIMEOUT"))
    assert defaults == [client.HTTP_DEFAULTS[name] for name in names]


def _help_texts():
    """(command words, the parser's whole --help text) for every `mlops` command."""
    def walk(p, path):
        yield path, p.format_help()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, path + [name])
    yield from walk(_mlops_parser(), [])


def test_every_exit_code_a_help_text_promises_is_in_the_architectures_list():
    """An operator scripting `mlops` reads the exit codes in docs/architecture.md ("Errors and
    output"): every code a command's --help promises (`sync status` exits 1 on drift, a failed
    gate 4, ...) is there, and the error classes it names carry the codes it gives them. Found
    missing: `sync status` and `sync plan` exit 1, which only their --help said."""
    from mlops_common import errors
    from serving_sync.cancel import DeployInterrupted

    text = _section("docs/architecture.md", "## Errors and output")
    bullet = text[text.index("User-caused problems"):text.index("- Every command that reports")]
    listed = {int(n) for n in re.findall(r"(?<![\w.])(\d{1,3})(?![\w.])", bullet)}
    promised = {}
    for path, text in _help_texts():
        for m in re.finditer(r"\bexit(?:s| with code| with)? (\d+)\b", " ".join(text.split()), flags=re.I):
            promised.setdefault(int(m.group(1)), " ".join(path))
    assert len(promised) >= 3, promised
    missing = {code: cmd for code, cmd in promised.items() if code not in listed}
    assert not missing, f"exit codes promised by --help and missing from docs/architecture.md: {missing}"
    assert (errors.UserError.exit_code, errors.DeployFailed.exit_code, errors.GateFailed.exit_code,
            DeployInterrupted.exit_code) == (2, 3, 4, 130)
    assert {2, 3, 4, 130, 141} <= listed


def test_the_host_layout_names_the_lock_and_verified_records_the_code_writes():
    """docs/architecture.md, "Serving host layout": the lock file's JSON fields are ``LockInfo``'s
    (what ``HostLock`` writes and reads back), and the verified record's format is ``verified``'s."""
    import dataclasses

    from serving_sync import verified
    from serving_sync.lock import LockInfo

    text = _section("docs/architecture.md", "## Serving host layout and hosts file")
    lock_line = next(line for line in text.splitlines() if line.startswith("<base>/.serving_sync/lock "))
    fields = re.search(r"\(JSON: ([^)]*)\)", lock_line).group(1)
    assert [f.strip() for f in fields.split(",")] == [f.name for f in dataclasses.fields(LockInfo)]
    assert f'"format": "{verified.FORMAT}"' in text


# MLOPS_* names the code reads that are no user's setting: what the code sets for a child of its own,
# what one CI step exports for the next, and the test suite's hooks (docs/reliability.md names those).
NOT_SETTINGS = {"MLOPS_MLFLOW_DB_UPGRADE_URI": "mlops.mlflow_db passes the URI to `mlflow db upgrade` in it",
                "MLOPS_PYTHON": "scripts/ensure-python311.sh exports it for the next CircleCI steps",
                "MLOPS_SERVICE_MARK": "mlops.detached_service sets it in a service it starts, to know its processes",
                "MLOPS_SERVICE_STATE": "mlops.detached_service sets it in a service it starts (its state folder)",
                "MLOPS_SERVICE_NAME": "mlops.detached_service sets it in a service it starts (its name)",
                "MLOPS_TEST_PAUSE_AT": "test hook", "MLOPS_TEST_PAUSE_MARKER": "test hook",
                "MLOPS_TEST_PAUSE_SECONDS": "test hook", "MLOPS_TEST_PORT_SLICE": "test hook"}
SETTINGS_TABLES = (("README.md", "### Configuration"), ("docs/architecture.md", "## Settings (environment)"),
                   ("docs/production.md", "## Which setting points where"))


def _code_settings() -> dict[str, str]:
    """Every ``MLOPS_*`` name in the code (``CODE`` and deploy/), with the first file that names it."""
    found: dict[str, str] = {}
    for part in CODE + ("deploy",):
        path = REPO / part
        files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file() and ".venv" not in
                                                     f.parts and f.suffix in (".py", ".sh", ".yml", ".toml", ""))
        for f in files:
            for name in re.findall(r"\b(MLOPS_[A-Z0-9_]*[A-Z0-9])\b", f.read_text(errors="replace")):
                found.setdefault(name, str(f.relative_to(REPO)))
    return found


def test_every_setting_the_code_reads_is_in_a_settings_table():
    """The reverse of the check above: every ``MLOPS_*`` variable the code, the CircleCI config or the
    compose file reads is in a settings table (README "Configuration", docs/architecture.md
    "Settings", docs/production.md "Which setting points where"); the compose file's own in its
    section of docs/production.md. Found missing: ``MLOPS_INFRA_SERVER`` (the CircleCI project
    variable that switches infra-validate to the local stand-in) and ``MLOPS_SERVING_BASE``."""
    found = _code_settings()
    assert {"MLOPS_HOME", "MLOPS_KNOWN_HOSTS_BASE64", "MLOPS_INFRA_SERVER", "MLOPS_PG_PASSWORD"} <= set(found), found
    tabled = {name for doc, heading in SETTINGS_TABLES for name in _table_settings(doc, heading)}
    compose = _section("docs/production.md", "## Trying it on a workstation")
    missing = [f"{name} ({where})" for name, where in sorted(found.items())
               if name not in tabled and name not in NOT_SETTINGS
               and not (where.startswith("deploy/") and f"`{name}`" in compose)]
    assert not missing, "settings the code reads that no settings table names: " + ", ".join(missing)


def test_the_system_packages_the_readme_lists_are_the_ones_make_test_installs():
    """README's quick start lists the system packages `make test` installs when missing; they are
    the packages `scripts/system-deps.sh` (`make system-deps`) asks for. Found drifted: the script
    added `zsh` (a deploy user's login shell) and `busybox` (its wget) and the list did not."""
    script = (REPO / "scripts/system-deps.sh").read_text()
    installed = set(re.findall(r"need\+=\(([a-z0-9-]+)\)", script))
    assert {"openssh-server", "zsh", "busybox"} <= installed, installed
    m = re.search(r"installs the system packages the tests use when they are missing\s*\(([^)]*)\)",
                  " ".join(_doc("README.md").split()))
    assert m, "README.md no longer lists the system packages `make test` installs"
    listed = set(re.findall(r"`([a-z0-9-]+)`", m.group(1).split(";")[0]))
    assert listed == installed, f"README lists {sorted(listed)}, scripts/system-deps.sh installs {sorted(installed)}"


# Variables the code reads that no user sets for it: what CircleCI and `mlflow run` set for a job or
# a run, and what other tools define (named in the docs where they matter, not in a settings table).
READ_NOT_SETTINGS = {"CIRCLE_PIPELINE_ID": "CircleCI sets it (lineage)", "CIRCLE_SHA1": "CircleCI sets it (lineage)",
                     "CIRCLE_WORKFLOW_ID": "CircleCI sets it (lineage, approvals)",
                     "MLFLOW_RUN_ID": "`mlflow run` sets it for the run it started",
                     "CURL_CA_BUNDLE": "read as requests reads it (architecture.md, tfs_client)",
                     "REQUESTS_CA_BUNDLE": "read as requests reads it (architecture.md, tfs_client)",
                     "NETRC": "requests' own: only named in the refusal of an entry it cannot send",
                     "TF_CPP_MIN_LOG_LEVEL": "TensorFlow's own, defaulted by mlops.cli",
                     "XDG_CACHE_HOME": "the default of MLOPS_CACHE_DIR says it",
                     "JOURNAL_STREAM": "systemd sets it: stderr is the journal (architecture.md, Logging)"}
_READ = re.compile(r"(?:\benv|token_env|environ\.get|getenv|environ\[|environ\.setdefault|port_env)"
                   r"""\(?\s*["']([A-Z][A-Z0-9_]+)["']""")


def test_every_variable_the_code_reads_by_name_is_in_a_settings_table():
    """Beyond ``MLOPS_*``: every variable our packages read by name (``settings.env("X")``,
    ``os.environ.get("X")``, ...) is in a settings table or in ``READ_NOT_SETTINGS``. Found
    missing: ``MLFLOW_EXPERIMENT_NAME`` / ``MLFLOW_EXPERIMENT_ID``, which choose the experiment
    `mlops train` logs its runs in."""
    found: dict[str, str] = {}
    for package in ("mlops", "mlops_common", "registry", "serving_sync", "serving_host", "mlproject"):
        for f in sorted((REPO / package).rglob("*.py")):
            for name in _READ.findall(f.read_text()):
                found.setdefault(name, str(f.relative_to(REPO)))
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "CIRCLE_TOKEN"} <= set(found), found
    tabled = {name for doc, heading in SETTINGS_TABLES for name in _table_settings(doc, heading)}
    missing = [f"{name} ({where})" for name, where in sorted(found.items())
               if name not in tabled and name not in READ_NOT_SETTINGS]
    assert not missing, "variables the code reads that no settings table names: " + ", ".join(missing)


def test_the_architecture_lists_every_error_of_serving_sync():
    """docs/architecture.md lists the errors `serving_sync.errors` defines (what a caller of the
    serving_sync API catches). Found missing: NoProduction, NotTFServing, ProductionNotExpected."""
    import ast

    tree = ast.parse((REPO / "serving_sync/errors.py").read_text())
    defined = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {"HostUnreachable", "ProductionMoved"} <= defined, defined
    m = re.search(r"subclasses from `serving_sync\.errors` \(([^)]*)\)", " ".join(_doc("docs/architecture.md").split()))
    assert m, "docs/architecture.md no longer lists the errors of serving_sync.errors"
    listed = {name.strip() for name in m.group(1).split(",")}
    assert listed == defined, f"listed but not defined: {sorted(listed - defined)}; " \
                              f"defined but not listed: {sorted(defined - listed)}"
