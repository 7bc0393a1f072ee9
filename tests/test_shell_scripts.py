"""Every shell script of the project passes shellcheck (installed by `make system-deps`)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers import REPO

SCRIPTS = sorted([*REPO.glob("scripts/*.sh"), *REPO.glob("serving_host/*.sh"), REPO / ".ci" / "run"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shellcheck_passes(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("SKIPPED LOUDLY: shellcheck is not installed; run `make system-deps` "
                    "(apt-get install shellcheck)")
    r = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout


def test_there_are_scripts_to_check():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("installed,expect_install", [("3.10.4\n3.11.2\n3.11.10\n", None),
                                                      ("3.10.4\n", "3.11.12")])
def test_ensure_python311_uses_an_installed_311_before_building_one(tmp_path, installed, expect_install):
    """It always took the newest 3.11 of `pyenv install --list`: on a machine image carrying
    3.11.x already, every new cache key built Python from source (minutes)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "pyenv.log"
    bin_dir.mkdir()
    (bin_dir / "python3.11").write_text("#!/bin/sh\nexit 1\n")        # none on PATH
    (bin_dir / "pyenv").write_text(f"""#!/bin/sh
echo "$@" >> {log}
case "$1" in
  versions) printf '{installed}' ;;
  install) if [ "$2" = --list ]; then printf '  3.11.11\\n  3.11.12\\n  3.12.1\\n'; fi ;;
  root) echo /fake/pyenv ;;
esac
""")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    bash_env = tmp_path / "bash_env"
    r = subprocess.run(["bash", str(REPO / "scripts" / "ensure-python311.sh")], capture_output=True, text=True,
                       timeout=60, env={"PATH": f"{bin_dir}:/usr/bin:/bin", "BASH_ENV": str(bash_env)})
    assert r.returncode == 0, r.stderr
    chosen = expect_install or "3.11.10"
    assert bash_env.read_text() == f"export MLOPS_PYTHON=/fake/pyenv/versions/{chosen}/bin/python3.11\n"
    installs = [line for line in log.read_text().splitlines() if line.startswith("install -s")]
    assert installs == ([f"install -s {expect_install}"] if expect_install else [])


def _host_key(tmp_path, name):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
    return (tmp_path / f"{name}.pub").read_text().split()[:2]


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="SKIPPED LOUDLY: ssh-keygen is not installed")
def test_pin_host_keys_replaces_a_hosts_earlier_pin_instead_of_adding_to_it(tmp_path):
    """It appended: on a runner whose home outlives a job (a self-hosted runner, docs/production.md),
    a host re-keyed after its old key leaked kept the old key pinned beside the new one, and the
    sync accepted a server offering either."""
    from serving_sync.transports import known_hosts as kh

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    old, new, other, gone = (_host_key(tmp_path, n) for n in ("old", "new", "other", "gone"))
    known = home / ".ssh" / "known_hosts"
    known.write_text(f"github.com {other[0]} {other[1]}\n@revoked * {gone[0]} {gone[1]}\n")

    def pin(lines):
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "MLOPS_KNOWN_HOSTS": lines}
        r = subprocess.run(["bash", str(REPO / "scripts" / "pin-host-keys.sh")], capture_output=True,
                           text=True, timeout=60, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    pin(f"serving-1,10.0.0.1 {old[0]} {old[1]}\n[serving-2]:2222 {other[0]} {other[1]}")
    out = pin(f"serving-1,10.0.0.1 {new[0]} {new[1]}\n[serving-2]:2222 {other[0]} {other[1]}")   # re-keyed
    assert "pinned 2 host key(s)" in out
    keys = kh.parse(known.read_text())
    assert kh.check(keys, "serving-1", 22, *new).status == "ok"
    assert kh.check(keys, "serving-1", 22, *old).status == "changed"
    assert kh.check(keys, "10.0.0.1", 22, *old).status == "changed"
    assert kh.check(keys, "serving-2", 2222, *other).status == "ok"
    assert kh.check(keys, "github.com", 22, *other).status == "ok"         # other hosts' lines kept
    assert kh.check(keys, "serving-1", 22, *gone).status == "revoked"      # and revocations
    assert len([k for k in keys if k.patterns == "[serving-2]:2222"]) == 1  # no pile-up run after run
    assert sorted(p.name for p in (home / ".ssh").iterdir()) == ["known_hosts"]
    assert oct(known.stat().st_mode & 0o777) == "0o600"


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="SKIPPED LOUDLY: ssh-keygen is not installed")
def test_pin_host_keys_starts_a_new_line_after_a_file_without_a_final_newline(tmp_path):
    """A known_hosts whose last line had no newline (written by printf, some editors) took the first
    pin into that line: the host was not pinned (the sync refused it as unknown) and the other
    host's line was broken, while the script said "pinned 1 host key(s)"."""
    from serving_sync.transports import known_hosts as kh

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    other, pinned = (_host_key(tmp_path, n) for n in ("other", "pinned"))
    known = home / ".ssh" / "known_hosts"
    known.write_text(f"github.com {other[0]} {other[1]}")          # no final newline
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "MLOPS_KNOWN_HOSTS": f"serving-1 {pinned[0]} {pinned[1]}"}
    r = subprocess.run(["bash", str(REPO / "scripts" / "pin-host-keys.sh")], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0 and "pinned 1 host key(s)" in r.stdout, r.stdout + r.stderr
    keys = kh.parse(known.read_text())
    assert kh.check(keys, "serving-1", 22, *pinned).status == "ok", known.read_text()
    assert kh.check(keys, "github.com", 22, *other).status == "ok", known.read_text()


def _run_pin(home, **env_vars):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), **env_vars}
    return subprocess.run(["bash", str(REPO / "scripts" / "pin-host-keys.sh")], capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="SKIPPED LOUDLY: ssh-keygen is not installed")
def test_pin_host_keys_refuses_a_garbled_pin_before_touching_known_hosts(tmp_path):
    """A pin mangled on its way into the context (a key cut short, a line joined to the next) was
    appended as it was and the step said "pinned": the deploy failed later on "host key not
    trusted". Each line is now checked first, the bad one is named by number, nothing is written."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    good = _host_key(tmp_path, "good")
    known = home / ".ssh" / "known_hosts"
    known.write_text(f"github.com {good[0]} {good[1]}\n")
    before = known.read_text()
    for garbled in (f"serving-1 {good[0]} {good[1][:30]}",            # the key cut short
                    f"serving-1 {good[0]}{good[1]}",                    # the space lost
                    "serving-1"):                                       # the key on the next line
        r = _run_pin(home, MLOPS_KNOWN_HOSTS=f"# pins\nserving-0 {good[0]} {good[1]}\n{garbled}")
        assert r.returncode == 2, r.stdout + r.stderr
        assert "line 3 of MLOPS_KNOWN_HOSTS is not a known_hosts line" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "pinned" not in r.stdout
        assert known.read_text() == before


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="SKIPPED LOUDLY: ssh-keygen is not installed")
def test_pin_host_keys_takes_base64_lines_and_prints_what_it_pinned(tmp_path):
    """CircleCI's docs advise base64 for a multi-line value the settings form mangles; the pins may
    come as MLOPS_KNOWN_HOSTS_BASE64. The step prints each pin's fingerprint (to compare with what
    install_server.sh printed on the host), counts keys, not comment lines, and drops CRs."""
    import base64

    from serving_sync.transports import known_hosts as kh

    home = tmp_path / "home"
    a, b = _host_key(tmp_path, "a"), _host_key(tmp_path, "b")
    lines = f"# serving fleet\r\nserving-1 {a[0]} {a[1]}\r\n@cert-authority *.serving {b[0]} {b[1]}\r\n"
    r = _run_pin(home, MLOPS_KNOWN_HOSTS_BASE64=base64.b64encode(lines.encode()).decode())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pinned 2 host key(s)" in r.stdout
    fp = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "a.pub")], capture_output=True, text=True,
                        check=True).stdout.split()[1]
    assert f"serving-1 {fp} (ED25519)" in r.stdout
    text = (home / ".ssh" / "known_hosts").read_text()
    assert "\r" not in text
    assert kh.check(kh.parse(text), "serving-1", 22, *a).status == "ok"

    bad = _run_pin(home, MLOPS_KNOWN_HOSTS_BASE64="not base64!")
    assert bad.returncode == 2 and "MLOPS_KNOWN_HOSTS_BASE64 is not base64" in bad.stderr
    both = _run_pin(home, MLOPS_KNOWN_HOSTS=f"serving-1 {a[0]} {a[1]}", MLOPS_KNOWN_HOSTS_BASE64="eA==")
    assert both.returncode == 2 and "keep one of them" in both.stderr
