"""Shared store (issue 12 item 8): a deploy uploads a version ONCE to S3 and every ssh host pulls it
with presigned URLs, hashed on the host against the manifest, renamed into place; a host that
cannot reach the store fails in prepare and every host stays as it was. Item 9: the note for
``s3://`` hosts. Real sshd, real SeaweedFS, real MLflow and local TF-Serving-compatible servers;
2 hosts, every wait bounded.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from mlops_common.errors import ConfigError, DeployFailed
from registry import promotion
from serving_sync import store
from serving_sync.hosts import Host, _Where, parse_hosts_toml, parse_target
from tests.lab.deploy_env import deploy_opts

HOSTS = """
store = "s3://models-bucket/fleet"
{extra}
[[hosts]]
name = "web-1"
target = "ssh://deploy@10.0.0.1:22/var/models"
rest_url = "http://10.0.0.1:8501"

[[hosts]]
name = "local"
target = "file:///srv/models"
rest_url = "http://127.0.0.1:8501"
"""


def test_store_is_a_top_level_key_that_applies_to_ssh_hosts():
    ssh, local = parse_hosts_toml(HOSTS.format(extra='store_endpoint = "http://10.0.0.5:8333"'), "h.toml")
    assert ssh.store is not None and ssh.store.url == "s3://models-bucket/fleet"
    assert ssh.store.endpoint == "http://10.0.0.5:8333"
    assert local.store is None                        # file hosts get the bytes directly


@pytest.mark.parametrize("text, needle", [
    ('store = "ssh://x/y"\n[[hosts]]\nname="a"\ntarget="file:///a"\nrest_url="http://h:1"\n', "field 'store'"),
    ('store = "s3://A_B/p"\n[[hosts]]\nname="a"\ntarget="file:///a"\nrest_url="http://h:1"\n', "field 'store'"),
    ('store_endpoint = "http://h:1"\n[[hosts]]\nname="a"\ntarget="file:///a"\nrest_url="http://h:1"\n',
     "without 'store'"),
    (('store = "s3://b-1/p"\nstore_endpoint = "ftp://h"\n[[hosts]]\nname="a"\ntarget="file:///a"\n'
      'rest_url="http://h:1"\n'), "field 'store_endpoint'"),
])
def test_a_bad_store_is_one_line_naming_the_key(text, needle):
    with pytest.raises(ConfigError) as e:
        parse_hosts_toml(text, "h.toml")
    assert needle in e.value.message and "\n" not in e.value.message


def test_s3_host_note_says_stock_images_cannot_read_s3():
    s3 = Host("s", parse_target("s3://b-1/p", _Where("x")), "http://h:1")
    note = store.s3_host_note(s3)
    assert "tensorflow/serving#1963" in note and "store =" in note and "\n" not in note
    assert store.s3_host_note(Host("f", parse_target("file:///a", _Where("x")), "http://h:1")) is None


def test_presigned_urls_go_on_stdin_and_are_redacted():
    from serving_sync.manifest import FileEntry, Manifest
    from serving_sync.transports.ssh_scripts import fetch_script

    m = Manifest((FileEntry("saved_model.pb", 3, "a" * 64), FileEntry("variables/v.data", 2, "b" * 64)),
                 ("variables",))
    pull = store.Pull("s3://b/p", m, {"saved_model.pb": "http://s/x?X-Amz-Signature=1",
                                      "variables/v.data": "http://s/y?X-Amz-Signature=2"})
    assert pull.script_input() == (b"d\tvariables\nf\tsaved_model.pb\thttp://s/x?X-Amz-Signature=1\t3\n"
                                   b"f\tvariables/v.data\thttp://s/y?X-Amz-Signature=2\t2\n")
    assert "Signature" not in repr(pull)
    nonce = "0123456789abcdef" * 2
    script = fetch_script("/b/m", "/b/m/.incoming-1", 10, nonce=nonce)
    assert "://" not in script and "Signature" not in script     # no URL in the script (argv of the shell)
    # the line after which the URLs are sent: printed by the script, never whole in its text
    # (a forced command that prints the command it was asked to run cannot print it)
    from serving_sync.transports.ssh_scripts import go_line

    assert go_line(nonce).decode() not in script and nonce not in script
    with pytest.raises(ValueError):
        fetch_script("/b/m", "/b/m/.incoming-1", 10, nonce="")
    assert store.hide_presigned_urls("curl: (7) http://s/x?X-Amz-Signature=1 failed") == \
        "curl: (7) <presigned URL> failed"


def _with_store(env, bucket: str, prefix: str, endpoint: str | None = None) -> None:
    env.write_hosts_file()
    head = f'store = "s3://{bucket}/{prefix}"\n' + (f'store_endpoint = "{endpoint}"\n' if endpoint else "")
    env.hosts_file.write_text(head + env.hosts_file.read_text())


def _tree_size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_two_ssh_hosts_pull_one_upload_from_the_store(deploy_env, sshd_factory, s3_env, cut_proxy,
                                                       tmp_path, caplog):
    env = deploy_env
    hosts = env.add_hosts(2, "ssh")
    # Count the bytes this machine sends over SSH, independently of our code: a pass-through proxy.
    sshd = env._sshd()
    proxy = cut_proxy(sshd.port, None)
    key_type, key_b64 = sshd.host_key_pub.split()[:2]
    known = tmp_path / "known_hosts_proxy"
    known.write_text(f"[127.0.0.1]:{proxy.port} {key_type} {key_b64}\n")
    for h in hosts:
        h.entry.update(target=f"ssh://{sshd.user}@127.0.0.1:{proxy.port}{h.base}", known_hosts=str(known))
    bucket = s3_env.make_bucket("shared-store")
    _with_store(env, bucket, env.model)
    v1 = env.register("big")                     # ~3 MB
    env.promote(v1)
    size = _tree_size(env.bundles.path("big") / "tfserving")
    with caplog.at_level(logging.DEBUG):
        r = env.deploy(opts=deploy_opts(canary=0))
    assert r.status == "deployed", r.message
    for h in hosts:
        env.serves(h, v1)
    ssh_bytes = sum(proxy.sent)
    # One copy to S3; over SSH only scripts, URL lists, config and lock writes.
    assert [s["bytes_transferred"] for s in r.stores] == [size]
    assert ssh_bytes < size / 4, (ssh_bytes, size)
    pubs = [o.publish for o in r.hosts]
    assert [p["status"] for p in pubs] == ["pulled", "pulled"]
    assert all(p["store"] == f"s3://{bucket}/{env.model}" for p in pubs)
    objs = s3_env.client().list_objects_v2(Bucket=bucket, Prefix=f"{env.model}/{env.model}/{v1}/")
    assert sum(o["Size"] for o in objs.get("Contents", [])) == size
    # No presigned URL in our logs (botocore's own DEBUG lines are not ours, and off by default).
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("mlops") or r.levelno >= logging.INFO)
    assert "shared store" in ours and "X-Amz-Signature" not in ours and "Signature=" not in ours
    for h in hosts:
        assert not [p for p in (h.base / env.model).iterdir() if p.name.startswith(".incoming-")]
    # The same deploy without the store: every host gets its own copy over SSH.
    env.write_hosts_file()
    v2 = env.register("big")
    env.promote(v2)
    before = sum(proxy.sent)
    r2 = env.deploy(opts=deploy_opts(canary=0))
    assert r2.status == "deployed" and r2.stores == [], r2.message
    assert [o.publish["status"] for o in r2.hosts] == ["uploaded", "uploaded"]
    assert sum(proxy.sent) - before > 2 * size


def test_a_host_that_cannot_reach_the_store_fails_in_prepare_and_nothing_changes(
        deploy_env, sshd_factory, s3_env):
    env = deploy_env
    hosts = env.add_hosts(2, "ssh")
    v1 = env.register("a")
    env.promote(v1)
    assert env.deploy(opts=deploy_opts(canary=0)).status == "deployed"
    bucket = s3_env.make_bucket("shared-store")
    _with_store(env, bucket, env.model, endpoint="http://127.0.0.1:9")   # the hosts' way to S3 is closed
    v2 = env.register("b")
    env.promote(v2)
    before = [env.config_text(h) for h in hosts]
    with pytest.raises(DeployFailed) as e:
        env.deploy(opts=deploy_opts(canary=0))
    assert "could not download" in e.value.message and "Signature" not in e.value.message
    assert [env.config_text(h) for h in hosts] == before
    for h in hosts:
        env.serves(h, v1)
        names = [p.name for p in (h.base / env.model).iterdir()]
        assert str(v2) not in names and not [n for n in names if n.startswith(".incoming-")]


def test_plan_and_deploy_say_that_s3_hosts_need_a_tf_serving_with_s3(deploy_env, s3_env):
    env = deploy_env
    env.add_host("s3", grpc=False)     # the local server reads a mirror of the bucket (deploy_env)
    v1 = env.register("a")
    env.promote(v1)
    plan = env.cli("sync", "plan")
    assert plan.returncode == 0, plan.stderr
    assert "tensorflow/serving#1963" in plan.stdout and "store =" in plan.stdout
    res = env.cli("sync", "deploy", "--timeout", "60")
    assert res.returncode == 0, res.stderr
    assert sum("tensorflow/serving#1963" in line for line in res.stderr.splitlines()) == 1


# --- the host side of a pull, without MLflow: real sshd, a loopback HTTP server as the store ---------
class _Served:
    """Files of ``root`` over HTTP on 127.0.0.1 (query strings ignored, like a presigned URL's)."""

    def __init__(self, root, *, expired: bool = False, delay: float = 0.0, before=None, redirect: bool = False):
        import functools
        import threading
        import time
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        class Quiet(SimpleHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                time.sleep(delay)       # a slow store: the host's download takes this long
                if before is not None:  # something happens on the host meanwhile
                    before()
                if expired:             # what S3 answers a presigned URL past its expiry
                    self.send_error(403, "Request has expired")
                    return
                if redirect:            # a proxy in front of the store that wants https (or S3's
                    body = b"<html>301 Moved Permanently</html>"   # 301 for another region's endpoint)
                    self.send_response(301)
                    self.send_header("Location", f"https://127.0.0.1:1{self.path}")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                super().do_GET()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def pull(self, manifest):
        port = self.httpd.server_address[1]
        return store.Pull("s3://bucket/p", manifest, {f.path: f"http://127.0.0.1:{port}/{f.path}?X-Amz-Signature=s3cr3t"
                                                      for f in manifest.files})

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def test_a_pulled_version_is_verified_and_a_tampered_store_object_is_refused(sshd, tmp_path):
    import shutil

    from serving_sync import manifest as mf
    from serving_sync.errors import VerifyFailed
    from serving_sync.publish import incoming_dirs, publish
    from tests.test_sync_ssh import connect
    from tests.test_sync_support import make_model_tree

    model = make_model_tree(tmp_path / "model")
    m = mf.build(model)
    served = _Served(model)
    base = tmp_path / "host"
    base.mkdir()
    t = connect(sshd, base)
    try:
        r = publish(t, "digits", 1, model, m, pull=served.pull(m))
        assert r.status == "pulled" and r.store == "s3://bucket/p"
        assert 0 < r.bytes_transferred < m.total_size / 10          # the URL list, not the model
        assert t.verify("digits/1", m) == []
        assert (base / "digits/1/assets/empty-dir").is_dir()
        # an object changed in the store after the upload (same size): refused, nothing numeric
        tampered = tmp_path / "tampered"
        shutil.copytree(model, tampered)
        p = tampered / "variables" / "variables.index"
        p.write_bytes(bytes(b ^ 1 for b in p.read_bytes()))
        served.close()
        served = _Served(tampered)
        with pytest.raises(VerifyFailed) as e:
            publish(t, "digits", 2, model, m, pull=served.pull(m))
        assert "sha256 mismatch for variables/variables.index" in e.value.message
        assert "Signature" not in e.value.message
        assert not (base / "digits/2").exists() and incoming_dirs(t, "digits") == []
    finally:
        t.close()
        served.close()


def test_a_store_that_answers_with_a_redirect_is_named_not_taken_for_a_damaged_download(sshd, tmp_path):
    """Found by review (2026-12-06, tenth stop): a ``store_endpoint`` the store answers with a
    redirect (an http:// address behind a proxy that wants https://; S3's 301 for an endpoint of
    another region) made curl (``--fail`` fails on 4xx/5xx only) save the redirect's page as every
    file of the version: the deploy then said "sha256 mismatch ... rerun the deploy", which
    fails the same way every time."""
    from serving_sync.errors import VerifyFailed
    from tests.test_sync_ssh import one_line
    from tests.test_sync_support import make_model_tree

    model = make_model_tree(tmp_path / "model")
    error = _refused_pull(sshd, tmp_path, model, lambda: _Served(model, redirect=True))
    assert not isinstance(error, VerifyFailed), error.message
    msg = one_line(error)
    assert "redirect" in msg and "store_endpoint" in msg and "nothing was published" in msg, msg
    assert "rerun the deploy" not in msg and "s3cr3t" not in msg and "Signature" not in msg, msg


def _refused_pull(sshd, tmp_path, model, make_served):
    """Publish ``model`` as digits v1 to a fresh folder on the SSH server ``sshd`` through the pull of the store
    ``make_served()`` fakes; the error it must raise, once nothing is left of it on the host."""
    from mlops_common.errors import UserError
    from serving_sync import manifest as mf
    from serving_sync.publish import incoming_dirs, publish
    from tests.test_sync_ssh import connect

    m = mf.build(model)
    served = make_served()
    base = tmp_path / "host"
    base.mkdir()
    t = connect(sshd, base)
    try:
        with pytest.raises(UserError) as e:
            publish(t, "digits", 1, model, m, pull=served.pull(m))
        assert not (base / "digits/1").exists() and incoming_dirs(t, "digits") == []
        return e.value
    finally:
        t.close()
        served.close()


_FETCH_TOOLS = ["sh", "mkdir", "dirname", "df", "awk", "find", "sha256sum", "wc", "rm", "sleep"]


def _run_fetch_script(tmp_path, path):
    """The pull script run with only ``path`` on PATH, fetching a two-asset model from a fake store
    into ``host/digits/.incoming-1``: (the process, its parsed output, the model's manifest, that folder)."""
    import subprocess

    from serving_sync import manifest as mf
    from serving_sync.transports.ssh_scripts import fetch_script, parse_output
    from tests.test_sync_support import make_model_tree

    model = make_model_tree(tmp_path / "model", n_assets=2)
    m = mf.build(model)
    served = _Served(model)
    try:
        dest = tmp_path / "host" / "digits" / ".incoming-1"
        script = fetch_script(str(dest.parent), str(dest), 10_000, nonce="0" * 32)
        proc = subprocess.run([str(path / "sh"), "-c", script], input=served.pull(m).script_input(),
                              capture_output=True, timeout=60, env={"PATH": str(path)})
    finally:
        served.close()
    return proc, parse_output(proc.stdout), m, dest


def _bin(tmp_path, tools):
    import shutil

    d = tmp_path / "bin"
    d.mkdir()
    for tool in tools:
        if (path := shutil.which(tool)) is not None:
            (d / tool).symlink_to(path)
    return d


@pytest.mark.parametrize("fetcher", ["wget", None])
def test_the_fetch_script_uses_wget_without_curl_and_says_when_it_has_neither(fetcher, tmp_path):
    import shutil

    from serving_sync import manifest as mf

    if fetcher and shutil.which(fetcher) is None:
        pytest.skip(f"SKIPPED LOUDLY: {fetcher} is not installed on this machine (Debian package {fetcher})")
    path = _bin(tmp_path, _FETCH_TOOLS + ([fetcher] if fetcher else []))
    proc, res, m, dest = _run_fetch_script(tmp_path, path)
    if fetcher is None:
        assert "@nofetch" in res.flags and not dest.exists()
        return
    assert proc.returncode == 0, proc.stderr
    assert mf.compare(m, res.listing) == []


def test_a_host_whose_only_wget_is_busyboxs_counts_as_one_without_a_downloader(tmp_path):
    """Found by review (2026-12-06, fifteenth stop): on a host whose only downloader is BusyBox's
    wget (Alpine without curl) the pull script ran ``wget --tries=3 ... -i -``, options BusyBox's
    wget does not have (nor any way to read a URL from stdin): every download failed with its usage
    text, "could not download ... check that the host reaches the store", and the deploy failed in
    prepare. Now such a wget counts as none (``@nofetch``): the host is sent the version over SSH."""
    import shutil

    if shutil.which("busybox") is None:
        pytest.skip("SKIPPED LOUDLY: busybox is not installed on this machine (Debian package busybox; "
                    "scripts/system-deps.sh installs it)")
    path = _bin(tmp_path, _FETCH_TOOLS + ["grep"])
    (path / "wget").symlink_to(shutil.which("busybox"))          # BusyBox runs as the applet it is named
    proc, res, _, dest = _run_fetch_script(tmp_path, path)
    assert "@nofetch" in res.flags and "@fetchfailed" not in res.flags, (proc.stdout, proc.stderr)
    assert proc.returncode == 0 and not dest.exists(), proc.stderr


@pytest.mark.parametrize("raw, ok", [(None, 900.0), ("60", 60.0), ("0", None), ("abc", None), ("700000", None)])
def test_presigned_url_expiry_setting(raw, ok, monkeypatch):
    if raw is None:
        monkeypatch.delenv("MLOPS_STORE_URL_EXPIRY", raising=False)
    else:
        monkeypatch.setenv("MLOPS_STORE_URL_EXPIRY", raw)
    if ok is not None:
        assert store.expiry() == ok
    else:
        with pytest.raises(ConfigError) as e:
            store.expiry()
        assert "MLOPS_STORE_URL_EXPIRY" in e.value.message


def _manifest(total: int):
    from serving_sync.manifest import FileEntry, Manifest

    return Manifest((FileEntry("saved_model.pb", 1000, "0" * 64),
                     FileEntry("variables/variables.data-00000-of-00001", total - 1000, "1" * 64)),
                    ("variables",))


@pytest.mark.parametrize("endpoint", [None, "http://10.0.0.5:8333"])
def test_presigned_urls_are_sigv4_and_last_as_long_as_a_slow_download(s3_env, endpoint):
    """boto3's default presigns SigV2 (AWSAccessKeyId=, Signature=), which AWS refuses for buckets
    made since 2020; and a fixed 15 minutes ran out before the last file of a big version."""
    (ssh, _) = parse_hosts_toml(HOSTS.format(extra=f'store_endpoint = "{endpoint}"' if endpoint else ""), "h.toml")
    m = _manifest(50_000_000)
    lifetime = store.url_lifetime(900.0, m.total_size)
    assert lifetime == 950.0 and store.url_lifetime(900.0, 10**13) == store.MAX_EXPIRY
    pull = store.presign(ssh.store, "digits", 3, m, lifetime)
    for url in pull.urls.values():
        assert "X-Amz-Signature=" in url and "X-Amz-Expires=950" in url, url
        assert "AWSAccessKeyId=" not in url
        assert url.startswith(endpoint or s3_env.env()["AWS_ENDPOINT_URL"].rstrip("/")), url


@pytest.mark.parametrize("fetcher", ["curl", "wget"])
@pytest.mark.parametrize("store,says", [
    ("expired", ("403", "MLOPS_STORE_URL_EXPIRY")),
    # a 404 (the version removed meanwhile, e.g. by another fleet's retention) said "check that the
    # host reaches the store (store_endpoint)", which sent people to the wrong place
    ("empty", ("not in the store (404)", "rerun the deploy")),
])
def test_a_pull_the_store_refuses_says_why_and_publishes_nothing(sshd, tmp_path, store, says, fetcher,
                                                                 monkeypatch):
    """Found by review (2026-12-06, tenth stop): on a host with wget and no curl the script ran
    ``wget -q``, which prints nothing, so an expired URL (403) or a version another fleet's
    retention removed (404) was "(no error output); check that the host reaches the store
    (store_endpoint in the hosts file)"."""
    from serving_sync.transports import ssh_scripts
    from tests.test_sync_support import make_model_tree

    if fetcher == "wget":     # the host script picks curl first: hide it from the script
        monkeypatch.setattr(ssh_scripts, "fetch_script", lambda *a, _f=ssh_scripts.fetch_script, **k: _f(
            *a, **k).replace("command -v curl >/dev/null 2>&1", "false", 1))
    monkeypatch.setattr("serving_sync.transports.ssh_upload.fetch_script", ssh_scripts.fetch_script)
    model = make_model_tree(tmp_path / "model")
    (tmp_path / "empty-store").mkdir()
    msg = _refused_pull(sshd, tmp_path, model, lambda: _Served(model, expired=True) if store == "expired"
                        else _Served(tmp_path / "empty-store")).message
    assert all(s in msg for s in says) and "nothing was published" in msg, msg
    assert "Signature" not in msg and "s3cr3t" not in msg
    assert "store_endpoint" not in msg and "no error output" not in msg, msg


def test_a_refused_pull_of_a_version_with_a_long_url_list_says_why_not_a_lost_connection(sshd, tmp_path):
    """Found by review (2026-12-06, seventeenth stop): the URL list goes on the script's stdin, which
    the host reads one line per file as it downloads; a list longer than the SSH channel and the pipe
    hold (between 12 and 27 MB with this OpenSSH 9.2: some 10,000 files or more with SigV4 URLs that
    carry a session token) was still being sent when the store
    refused the first file and the script ended, and the send's error ("the host closed the upload
    channel") became "lost the SSH connection ...; check the network", hiding the store's 403."""
    from dataclasses import replace

    from tests.test_sync_support import make_model_tree

    class Long(_Served):     # long URLs: 3,000 files, some 27 MB
        def pull(self, manifest):
            p = super().pull(manifest)
            return replace(p, urls={k: u + "&X-Amz-Security-Token=" + "t" * 9000 for k, u in p.urls.items()})

    model = make_model_tree(tmp_path / "model", n_assets=3000, asset_bytes=1)
    msg = _refused_pull(sshd, tmp_path, model, lambda: Long(model, expired=True)).message
    assert "403" in msg and "nothing was published" in msg, msg
    assert "lost the SSH connection" not in msg and "ttttt" not in msg and "s3cr3t" not in msg, msg


def test_a_url_refused_after_temporary_credentials_ran_out_says_so(sshd, tmp_path):
    """Found by review (2026-12-06, fifteenth stop): URLs signed with temporary credentials (an
    assumed role, CI's OIDC token: ``AWS_SESSION_TOKEN``, ``X-Amz-Security-Token`` in each URL) stop
    working when those credentials expire, whatever their ``X-Amz-Expires``: a host reached late in a
    long deploy got 403 and was told to check the clocks and ``MLOPS_STORE_URL_EXPIRY``, which were
    not the cause. Now the 403 names the temporary credentials."""
    from dataclasses import replace

    from tests.test_sync_support import make_model_tree

    class Temporary(_Served):
        def pull(self, manifest):
            p = super().pull(manifest)
            return replace(p, urls={k: u + "&X-Amz-Security-Token=t0k3n" for k, u in p.urls.items()})

    model = make_model_tree(tmp_path / "model")
    msg = _refused_pull(sshd, tmp_path, model, lambda: Temporary(model, expired=True)).message
    assert "403" in msg and "temporary" in msg and "AWS_SESSION_TOKEN" in msg, msg
    assert "t0k3n" not in msg and "s3cr3t" not in msg and "Signature" not in msg, msg


def test_a_pull_a_proxy_in_the_hosts_environment_refused_names_the_proxy(sshd_factory, tmp_path):
    """Found by review (2026-12-06, fifteenth stop): curl and wget on the host go through the proxy
    its environment names (``http_proxy`` set for apt in /etc/environment, ``SetEnv`` in sshd_config),
    which may not reach the store or may refuse it (squid's "Access Denied" is a 403): the deploy
    then said to check the clocks and MLOPS_STORE_URL_EXPIRY, or that the host reaches the store,
    which it does. Now the message says the host's environment names a proxy (never its value)."""
    from tests.test_sync_support import make_model_tree

    model = make_model_tree(tmp_path / "model")
    proxy = _Served(tmp_path, expired=True)          # answers every request 403, as squid denies one
    try:
        host = sshd_factory(extra_config=(f"SetEnv http_proxy=http://proxyuser:pr0xypw@127.0.0.1:"
                                          f"{proxy.httpd.server_address[1]}",))
        msg = _refused_pull(host, tmp_path, model, lambda: _Served(model)).message
    finally:
        proxy.close()
    assert "proxy" in msg and "http_proxy" in msg and "no_proxy" in msg, msg
    assert "pr0xypw" not in msg and "s3cr3t" not in msg, msg


def test_the_store_keeps_what_the_hosts_keep(deploy_env, sshd_factory, s3_env):
    """Every version deployed through the store stayed in the bucket for good."""
    env = deploy_env
    host = env.add_host("ssh")
    bucket = s3_env.make_bucket("retained-store")
    _with_store(env, bucket, env.model)

    def stored() -> set[int]:
        objs = s3_env.client().list_objects_v2(Bucket=bucket, Prefix=f"{env.model}/{env.model}/")
        return {int(o["Key"].split("/")[2]) for o in objs.get("Contents", []) if o["Key"].split("/")[2].isdigit()}

    released = []
    for kind in ("a", "b", "c"):
        v = env.register(kind)
        env.promote(v)
        r = env.deploy(opts=deploy_opts(canary=0, keep=1))
        assert r.status == "deployed", r.message
        released.append(v)
    v1, v2, v3 = released
    env.serves(host, v3)
    assert stored() == {v2, v3}                     # v3 serves; v2 is where a rollback goes
    assert r.stores[0]["retention"]["remove_versions"] == [v1]
    # the move this test is not about: in this process, as `mlops registry rollback` makes it
    promotion.rollback(env.model, reason="v3 misbehaves", actor="oncall")
    assert env.production() == v2
    plan = env.cli("sync", "plan")               # it said "pulls v2 from the shared store" for a switch
    assert plan.returncode == 0 and "shared store" not in plan.stdout, plan.stdout
    # a switch: nothing uploaded, nothing removed
    assert env.deploy(opts=deploy_opts(canary=0, keep=1)).status == "deployed"
    env.serves(host, v2)
    assert stored() == {v2, v3}
    v4 = env.register("a")
    env.promote(v4)
    plan = env.cli("sync", "plan")
    assert f"pulls v{v4} from the shared store s3://{bucket}/" in plan.stdout, plan.stdout


def _two_fleets(env, s3_env, bucket_name: str):
    """Two SSH hosts, a production and a staging one, the store's bucket (a new one named
    ``bucket_name``), and ``fleet(host)``: write the hosts file of a fleet of that host alone,
    sharing that store."""
    prod_host, staging_host = env.add_host("ssh"), env.add_host("ssh")
    bucket = s3_env.make_bucket(bucket_name)

    def fleet(host) -> None:
        env.write_hosts_file([host])
        head = f'store = "s3://{bucket}/{env.model}"\n'
        env.hosts_file.write_text(head + env.hosts_file.read_text())

    return prod_host, staging_host, bucket, fleet


def test_another_fleets_version_deploy_keeps_production_in_a_shared_store(deploy_env, sshd_factory, s3_env):
    """A staging fleet sharing the store deployed `--version N --keep 1`: its clean-up removed
    the production version the production fleet had just uploaded (and was pulling: 404s)."""
    env = deploy_env
    prod_host, staging_host, bucket, fleet = _two_fleets(env, s3_env, "shared-store")

    def stored() -> set[int]:
        objs = s3_env.client().list_objects_v2(Bucket=bucket, Prefix=f"{env.model}/{env.model}/")
        return {int(o["Key"].split("/")[2]) for o in objs.get("Contents", []) if o["Key"].split("/")[2].isdigit()}

    fleet(prod_host)
    env.release("a", opts=deploy_opts(canary=0, keep=1))
    v2 = env.register("b")
    env.promote(v2)
    assert env.deploy(opts=deploy_opts(canary=0, keep=1)).status == "deployed"
    env.serves(prod_host, v2)
    v3 = env.register("c")
    fleet(staging_host)
    r = env.deploy(version=v3, opts=deploy_opts(canary=0, keep=1))
    assert r.status == "deployed", r.message
    env.serves(staging_host, v3)
    assert v2 in stored() and v2 not in r.stores[0]["retention"]["remove_versions"], (stored(), r.stores)


def test_an_interrupt_ends_a_long_pull_at_once(sshd, tmp_path):
    """SIGTERM (a cancelled CI job) waited for the whole download before the deploy could put the
    hosts back; CircleCI's SIGKILL then left the lock and the upload behind."""
    import threading
    import time

    from serving_sync import cancel
    from serving_sync import manifest as mf
    from serving_sync.publish import publish
    from tests.test_sync_ssh import connect
    from tests.test_sync_support import make_model_tree

    model = make_model_tree(tmp_path / "model")
    m = mf.build(model)
    served = _Served(model, expired=True, delay=8.0)
    base = tmp_path / "host"
    base.mkdir()
    t = connect(sshd, base)
    timer = threading.Timer(1.0, cancel.request, args=("SIGTERM",))

    def downloaders() -> list[str]:      # the host's curl / wget writing under base (same machine here)
        found = []
        for proc in Path("/proc").iterdir():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and Path(argv[0].decode(errors="replace")).name in ("curl", "wget") \
                    and any(str(base).encode() in a for a in argv):
                found.append(proc.name)
        return found

    try:
        timer.start()
        started = time.monotonic()
        with pytest.raises(cancel.DeployInterrupted):
            publish(t, "digits", 1, model, m, pull=served.pull(m))
        assert time.monotonic() - started < 5.0       # not the 8 s the download takes (1.65 s at load 9)
        assert not (base / "digits/1").exists()
        # the host's downloader stops too (it ran on into a deleted directory until the store answered)
        deadline = time.monotonic() + 4.0
        while downloaders() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert downloaders() == [], "the host's download kept running after the deploy gave up"
    finally:
        timer.cancel()
        cancel.reset()
        t.close()
        served.close()


@pytest.mark.parametrize("fetcher", ["curl", "wget"])
def test_a_disk_filling_up_during_a_pull_says_the_disk_is_full(sshd, tmpfs, tmp_path, fetcher, monkeypatch):
    """Found by review (2026-12-05, third stop): another process filled the host's disk while it
    downloaded from the shared store; curl's "(23) Failure writing output to destination" (wget:
    exit 3, nothing said) was reported as a download failure with the hint "check that the host
    reaches the store (store_endpoint in the hosts file)", not as a full disk (the streamed
    upload's DiskFull)."""
    from serving_sync import manifest as mf
    from serving_sync.errors import DiskFull
    from serving_sync.publish import incoming_dirs, publish
    from serving_sync.transports import ssh_scripts
    from tests.test_sync_ssh import connect, one_line
    from tests.test_sync_support import make_model_tree

    if fetcher == "wget":     # the host script picks curl first: hide it from the script
        monkeypatch.setattr(ssh_scripts, "fetch_script", lambda *a, _f=ssh_scripts.fetch_script, **k: _f(
            *a, **k).replace("command -v curl >/dev/null 2>&1", "false", 1))
    monkeypatch.setattr("serving_sync.transports.ssh_upload.fetch_script", ssh_scripts.fetch_script)
    mnt = tmpfs("2m")
    model = make_model_tree(tmp_path / "model", variables_bytes=1_200_000)
    m = mf.build(model)
    filler = mnt / "filler"

    def fill_disk() -> None:        # another process eats the space while the host downloads
        if not filler.exists():
            filler.write_bytes(b"\0" * 900_000)

    served = _Served(model, before=fill_disk)
    t = connect(sshd, mnt)
    try:
        with pytest.raises(DiskFull) as e:
            publish(t, "digits", 1, model, m, pull=served.pull(m))
        msg = one_line(e.value)
        assert "no space left" in msg and "nothing was published" in msg, msg
        assert "store_endpoint" not in msg and "s3cr3t" not in msg
        assert incoming_dirs(t, "digits") == [] and not (mnt / "digits/1").exists()
        filler.unlink()
        served.close()
        served = _Served(model)
        assert publish(t, "digits", 1, model, m, pull=served.pull(m)).status == "pulled"
    finally:
        t.close()
        served.close()


def test_an_interrupt_stops_the_upload_to_the_shared_store(s3_env, tmp_path):
    """Found by review (2026-12-05, third stop): the upload to the shared store checked no interrupt
    (``StoreCopies.upload`` gave ``publish`` no progress callback): SIGTERM (a cancelled CI job)
    waited for the whole version to reach the store and be verified, while CircleCI's SIGKILL came
    closer (the lock then stays behind for ``MLOPS_LOCK_TTL``). Now it stops after the PUTs in
    flight and the partial upload is removed."""
    import time

    from serving_sync import cancel
    from serving_sync import manifest as mf
    from serving_sync.hosts import Store
    from serving_sync.transports.s3 import S3Transport
    from tests.test_sync_support import make_model_tree

    model = make_model_tree(tmp_path / "model", n_assets=400, asset_bytes=200)
    m = mf.build(model)
    bucket = s3_env.make_bucket("interrupted-store")
    st = Store(parse_target(f"s3://{bucket}/fleet", _Where("h.toml")))
    started = time.monotonic()
    assert store.StoreCopies("digits", 1).upload(st, model, m)["status"] == "uploaded"
    whole = time.monotonic() - started
    cancel.request("SIGTERM")
    try:
        started = time.monotonic()
        with pytest.raises(cancel.DeployInterrupted):
            store.StoreCopies("digits", 2).upload(st, model, m)
        interrupted = time.monotonic() - started
    finally:
        cancel.reset()
    assert interrupted < whole / 3, (interrupted, whole)
    assert S3Transport(bucket, "fleet").files_under("digits/2") == []       # nothing half-uploaded left


def _stored_versions(s3_env, bucket: str, prefix: str, model: str) -> set[int]:
    """Numeric version folders under ``<prefix>/<model>/`` with any object in them."""
    objs = s3_env.client().list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{model}/")
    return {int(k.split("/")[2]) for o in objs.get("Contents", []) if (k := o["Key"]).split("/")[2].isdigit()}


def test_a_dead_partial_upload_in_the_store_is_removed_and_does_not_count_toward_keep(s3_env, tmp_path):
    """Found by review (2026-12-05, seventh stop): a version folder without its ``saved_model.pb``
    (an upload killed midway, a removal killed after its first request) counted as one of the
    ``--keep`` newest versions: it stayed for good and a complete version was removed in its place.
    Now it is no version: removed under the store's lock (no live upload can be there)."""
    from serving_sync import manifest as mf
    from serving_sync.hosts import Store
    from serving_sync.transports.s3 import S3Transport
    from tests.test_sync_support import make_model_tree

    model = make_model_tree(tmp_path / "model")
    m = mf.build(model)
    bucket = s3_env.make_bucket("partial-store")
    st = Store(parse_target(f"s3://{bucket}/fleet", _Where("h.toml")))
    for v in (1, 2):
        assert store.StoreCopies("digits", v).upload(st, model, m)["status"] == "uploaded"
    t = S3Transport(bucket, "fleet")
    t.upload_tree(model, "digits/3", m.without({m.completion_file}))     # a dead upload of v3
    rp = store.retire(st, "digits", serving=2, previous=None, keep=2, protected=())
    assert _stored_versions(s3_env, bucket, "fleet", "digits") == {1, 2}, rp
    assert rp["remove_versions"] == [] and rp["remove_partials"] == [3], rp


def test_a_failed_upload_never_removes_another_fleets_live_upload_of_the_same_version(s3_env, tmp_path):
    """Found by review (2026-12-05, seventh stop): two fleets' deploys uploading the same version
    to one store at once: the one that failed removed the version's prefix, the other's objects
    with it (its verification then failed, or the store was left without the version). Now an
    upload holds the store's lock: the second waits, then finds the version there."""
    import threading
    import time

    from serving_sync import manifest as mf
    from serving_sync.hosts import Store
    from serving_sync.transports.s3 import S3Transport
    from tests.test_sync_support import make_model_tree

    model = make_model_tree(tmp_path / "model", n_assets=600, asset_bytes=2000)
    m = mf.build(model)
    broken = make_model_tree(tmp_path / "broken", n_assets=600, asset_bytes=2000)
    gone = next(f.path for f in m.files if f.path.startswith("assets/"))
    (broken / gone).unlink()                        # its upload fails on this file
    bucket = s3_env.make_bucket("racing-store")
    st = Store(parse_target(f"s3://{bucket}/fleet", _Where("h.toml")))
    t = S3Transport(bucket, "fleet")
    first: dict = {}

    def upload_a() -> None:
        try:
            first["result"] = store.StoreCopies("digits", 1).upload(st, model, m)
        except Exception as exc:  # noqa: BLE001 - reported below
            first["error"] = exc

    a = threading.Thread(target=upload_a)
    a.start()
    deadline = time.monotonic() + 30
    while not t.files_under("digits/1") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert t.files_under("digits/1"), "the first upload never started"
    try:
        second = store.StoreCopies("digits", 1).upload(st, broken, m)
    except Exception as exc:  # noqa: BLE001 - the old code's failure; what matters is the first upload
        second = {"error": str(exc)}
    a.join(60)
    assert first.get("result", {}).get("status") == "uploaded", (first, second)
    assert second.get("status") == "already_present", second
    assert not t.verify("digits/1", m)              # complete and verified in the store


def test_a_fleets_clean_up_keeps_what_another_fleets_hosts_serve(deploy_env, sshd_factory, s3_env):
    """Found by review (2026-12-05, seventh stop): a deploy's store clean-up kept only the versions
    named by the hosts it changed, so the production fleet's `--keep 1` removed the version a
    staging fleet sharing the store serves (and was pulling, had its deploy been running). Now every
    deploy records in the store what each of its hosts keeps, and a clean-up keeps every record's
    versions."""
    env = deploy_env
    prod_host, staging_host, bucket, fleet = _two_fleets(env, s3_env, "two-fleets-store")

    fleet(prod_host)
    v1 = env.release("a", opts=deploy_opts(canary=0, keep=1))
    v2 = env.register("b")
    fleet(staging_host)
    r = env.deploy(version=v2, opts=deploy_opts(canary=0, keep=1))          # staging tries v2
    assert r.status == "deployed", r.message
    env.serves(staging_host, v2)
    v3 = env.register("c")
    env.promote(v3)
    fleet(prod_host)
    r = env.deploy(opts=deploy_opts(canary=0, keep=1))                       # production moves v1 -> v3
    assert r.status == "deployed", r.message
    env.serves(prod_host, v3)
    assert v2 not in r.stores[0]["retention"]["remove_versions"], r.stores
    assert v2 in _stored_versions(s3_env, bucket, env.model, env.model)
    assert v1 in _stored_versions(s3_env, bucket, env.model, env.model)    # the rollback target



# A forced command (authorized_keys ``command="..."``, sshd's ``ForceCommand``) that runs SFTP but
# not our scripts: the sftp-only wrappers some fleets give their deploy account. It answers any
# other command with a line of its own (here naming the command sshd was asked to run, as a
# logging wrapper does: the script text, nonce included) and keeps whatever arrives on stdin.
_FORCED = """#!/bin/sh
case "$SSH_ORIGINAL_COMMAND" in
  internal-sftp|*sftp-server*) exec /usr/lib/openssh/sftp-server ;;
esac
{says}
cat >> {record}
"""


def _forced_command(tmp_path, says: str) -> tuple[Path, Path]:
    """A ``_FORCED`` program that answers with ``says`` (shell code), and the file its stdin goes to."""
    record = tmp_path / "forced-command-stdin"
    record.write_bytes(b"")
    forced = tmp_path / "forced.sh"
    forced.write_text(_FORCED.format(says=says, record=record))
    forced.chmod(0o755)
    return forced, record


def _model_and_host(tmp_path):
    """A small model tree, its manifest, and an empty base folder for a host on this machine."""
    from serving_sync import manifest as mf
    from tests.test_sync_support import make_model_tree

    model = make_model_tree(tmp_path / "model")
    base = tmp_path / "host"
    base.mkdir()
    return model, mf.build(model), base


@pytest.mark.parametrize("says", ["echo 'This account is for SFTP only.'",
                                  'printf \'refused: %s\\n\' "$SSH_ORIGINAL_COMMAND"'])
def test_a_forced_command_never_receives_the_presigned_urls(deploy_env, sshd_factory, s3_env, tmp_path,
                                                            says, monkeypatch):
    """The pull wrote the URL list to the host command's stdin before knowing what ran there: a
    forced command that is not a shell got the presigned URLs (credentials for their lifetime).
    They now go only after the host printed the marker line with this call's nonce, which only our
    fetch script prints; else nothing is written and the host gets the version over SFTP, as an
    account without a shell does."""
    # The forced command never prints the marker: the deploy waits FIRST_LINE_TIMEOUT (15 s) for it
    # before it goes over SFTP. 2 s, as the tests below: what is asserted does not depend on it.
    monkeypatch.setattr("serving_sync.transports.ssh_upload.FIRST_LINE_TIMEOUT", 2.0)
    env = deploy_env
    forced, record = _forced_command(tmp_path, says)
    env.fleet._sshd_server = sshd_factory(extra_config=(f"ForceCommand {forced}",))
    host = env.add_host("ssh")
    bucket = s3_env.make_bucket("forced-store")
    _with_store(env, bucket, env.model)
    v1 = env.register("a")
    env.promote(v1)
    r = env.deploy(opts=deploy_opts(canary=0))
    stdin = record.read_text(errors="replace")
    assert "X-Amz-" not in stdin and "http" not in stdin, stdin[:300]
    assert r.status == "deployed", r.message
    assert [o.publish["status"] for o in r.hosts] == ["uploaded"]       # over SFTP, not pulled
    env.serves(host, v1)
    assert not [p for p in (host.base / env.model).iterdir() if p.name.startswith(".incoming-")]


@pytest.mark.parametrize("forced", ["internal-sftp", "silent"])
def test_a_pull_to_an_account_that_runs_no_script_sends_it_nothing_and_goes_over_sftp(
        sshd_factory, tmp_path, monkeypatch, forced, caplog):
    """An account whose program prints nothing (``ForceCommand internal-sftp``; a forced command
    that only reads its stdin) got the URL list at once; now silence for ``FIRST_LINE_TIMEOUT``
    is no shell, as for the upload: nothing written, the version goes over SFTP."""
    from serving_sync.publish import incoming_dirs, publish
    from tests.test_sync_ssh import connect

    monkeypatch.setattr("serving_sync.transports.ssh_upload.FIRST_LINE_TIMEOUT", 2.0)
    command, record = _forced_command(tmp_path, ":")
    if forced == "internal-sftp":
        command = "internal-sftp"
    srv = sshd_factory(extra_config=(f"ForceCommand {command}",))
    model, m, base = _model_and_host(tmp_path)
    served = _Served(model)
    t = connect(srv, base)
    try:
        with caplog.at_level(logging.WARNING):
            r = publish(t, "digits", 1, model, m, pull=served.pull(m))
        assert "s3cr3t" not in record.read_text(errors="replace")
        assert r.status == "uploaded" and t._no_shell
        assert t.verify("digits/1", m) == [] and incoming_dirs(t, "digits") == []
        assert "did not run the pull script" in caplog.text and "s3cr3t" not in caplog.text
    finally:
        t.close()
        served.close()


def test_an_upload_to_a_forced_command_that_answers_a_line_goes_over_sftp(sshd_factory, tmp_path, monkeypatch):
    """The streamed upload (no store) took any first line for a shell and then waited for
    ``@ready`` for the whole operation timeout: a forced command that answers with a line and
    reads its stdin stalled the publish until it failed as a stalled connection. It now waits
    for our marker line, as the pull does, and takes anything else for no shell: over SFTP."""
    from serving_sync.publish import incoming_dirs, publish
    from tests.test_sync_ssh import connect

    monkeypatch.setattr("serving_sync.transports.ssh_upload.FIRST_LINE_TIMEOUT", 2.0)
    forced, record = _forced_command(tmp_path, "echo 'This account is for SFTP only.'")
    srv = sshd_factory(extra_config=(f"ForceCommand {forced}",))
    model, m, base = _model_and_host(tmp_path)
    t = connect(srv, base, op_timeout=8.0)
    try:
        t0 = time.monotonic()
        r = publish(t, "digits", 1, model, m)
        took = time.monotonic() - t0
        assert r.status == "uploaded" and t._no_shell
        assert t.verify("digits/1", m) == [] and incoming_dirs(t, "digits") == []
        assert took < 8.0, f"{took:.1f} s: waited for the operation timeout"
        assert record.read_bytes() == b""               # no tar stream went to the forced command
    finally:
        t.close()


def test_a_forced_stop_as_the_store_lock_is_taken_releases_it(tmp_path):
    """The lock was taken before the ``try`` that released it: a forced stop (the second Ctrl-C,
    a KeyboardInterrupt) landing as it was taken left the store locked for the lock's TTL."""
    from types import SimpleNamespace

    from serving_sync.hosts import Target
    from serving_sync.layout import LOCK_PATH
    from serving_sync.store import store_lock
    from serving_sync.transports.local import LocalTransport

    class InterruptedAsItIsTaken(LocalTransport):
        def create_exclusive(self, rel, data):
            ok = super().create_exclusive(rel, data)
            if rel == LOCK_PATH:
                raise KeyboardInterrupt
            return ok

    base = tmp_path / "store"
    base.mkdir()
    shared = SimpleNamespace(target=Target("file", str(base)))
    with pytest.raises(KeyboardInterrupt):
        with store_lock(InterruptedAsItIsTaken(base), shared, "digits"):
            pytest.fail("the block ran")
    assert not (base / LOCK_PATH).exists()


def test_a_forced_stop_as_a_record_writer_starts_writes_nothing_after_record_uses_returned(monkeypatch):
    """Sixteenth stop: ``record_uses`` ran on a ThreadPoolExecutor, whose ``submit`` lists a new
    worker for joining only after its thread started: a forced stop landing in between returned
    at once (the caller released the store's lock) while that worker still wrote its host's
    record, over a later deploy's. Now every write returns before ``record_uses`` does."""
    import threading

    real_start, started, entered, returned = threading.Thread.start, [], threading.Event(), threading.Event()
    writes = []

    def start(self):
        real_start(self)
        started.append(self)
        if len(started) == 1:
            assert entered.wait(5), "the worker never began its write"
            raise KeyboardInterrupt          # the forced stop, while the first worker starts

    class Store:
        def write_file_atomic(self, rel, data):
            entered.set()
            returned.wait(2)                 # in flight when record_uses returned, if it did early
            writes.append((rel, returned.is_set()))

    monkeypatch.setattr(threading.Thread, "start", start)
    with pytest.raises(KeyboardInterrupt):
        store.record_uses(Store(), "m", {"h1": [1], "h2": [2]})
    returned.set()
    monkeypatch.undo()
    for t in started:
        t.join(5)
    assert writes and not any(after for _, after in writes), f"written after record_uses returned: {writes}"


def test_presigning_for_eight_hosts_at_once_makes_one_boto3_client_at_a_time(s3_env, monkeypatch):
    """Found by review (2026-12-06, seventeenth stop): each host's prepare thread made its signing
    client with boto3.client(), all from boto3's one default session, which is not thread-safe
    (now and then KeyError 'credential_provider' / 'endpoint_resolver', boto/boto3#1592)."""
    import threading

    import boto3.session

    real = boto3.session.Session.client
    guard, second_inside = threading.Lock(), threading.Event()
    inside = {"now": 0, "most": 0}

    def client(self, *args, **kwargs):
        with guard:
            inside["now"] += 1
            inside["most"] = max(inside["most"], inside["now"])
            if inside["now"] > 1:
                second_inside.set()
        try:
            second_inside.wait(0.2)      # the old code: another host's thread comes in meanwhile
            return real(self, *args, **kwargs)
        finally:
            with guard:
                inside["now"] -= 1

    monkeypatch.setattr(boto3.session.Session, "client", client)
    (ssh, _) = parse_hosts_toml(HOSTS.format(extra=""), "h.toml")
    m = _manifest(2000)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        pulls = list(pool.map(lambda _: store.presign(ssh.store, "digits", 3, m, 60.0), range(8)))
    assert all(len(p.urls) == 2 for p in pulls)
    assert inside["most"] == 1, inside


def test_a_bad_url_expiry_is_refused_before_the_version_is_downloaded(deploy_env, sshd_factory, s3_env,
                                                                      monkeypatch):
    """Found by review (2026-12-06, seventeenth stop): a bad MLOPS_STORE_URL_EXPIRY was refused only
    at the store upload, after the version had been downloaded from the registry."""
    from serving_sync import fleet_fetch

    env = deploy_env
    env.add_host("ssh")
    bucket = s3_env.make_bucket("expiry-store")
    _with_store(env, bucket, env.model)
    v = env.register("a")
    env.promote(v)
    downloads = []
    real = fleet_fetch.download_bundle
    monkeypatch.setattr(fleet_fetch, "download_bundle", lambda *a, **kw: downloads.append(a) or real(*a, **kw))
    monkeypatch.setenv("MLOPS_STORE_URL_EXPIRY", "15min")
    with pytest.raises(ConfigError) as e:
        env.deploy(opts=deploy_opts(canary=0))
    assert "MLOPS_STORE_URL_EXPIRY" in e.value.message and "\n" not in e.value.message, e.value.message
    assert downloads == []
    assert s3_env.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    r = env.cli("sync", "deploy", extra_env={"MLOPS_STORE_URL_EXPIRY": "0"})
    assert r.returncode == 2 and "MLOPS_STORE_URL_EXPIRY" in r.stderr, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "downloading" not in r.stdout + r.stderr
    assert s3_env.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_an_s3_host_whose_base_is_another_fleets_store_keeps_and_records_what_each_fleet_keeps(
        deploy_env, sshd_factory, s3_env):
    """Found by review (2026-12-06, seventeenth stop): an `s3://` host whose base is the store an
    ssh fleet pulls from (that fleet's hosts file: `store = <the same URL>`) ran its own retention
    without the store's use records, so it removed the version the ssh fleet keeps; and a fleet of
    `s3://` hosts wrote no record, so the ssh fleet's clean-up removed what the s3 host serves."""
    env = deploy_env
    ssh_host, s3_host = env.add_host("ssh"), env.add_host("s3", grpc=False)   # reads a mirror of the bucket
    base = s3_host.entry["target"]
    bucket = base[len("s3://"):].split("/", 1)[0]

    def ssh_fleet() -> None:
        env.write_hosts_file([ssh_host])
        env.hosts_file.write_text(f'store = "{base}"\n' + env.hosts_file.read_text())

    v1, v2, v3 = env.register("a"), env.register("b"), env.register("c")
    ssh_fleet()
    r = env.deploy(version=v1, opts=deploy_opts(canary=0, keep=1))
    assert r.status == "deployed" and r.stores, r.message
    env.serves(ssh_host, v1)
    env.write_hosts_file([s3_host])                          # the s3 fleet: that base, no store key
    r = env.deploy(version=v2, opts=deploy_opts(canary=0, keep=1))
    assert r.status == "deployed", r.message
    env.serves(s3_host, v2)
    assert v1 not in r.hosts[0].retention["remove_versions"], r.hosts[0].retention
    assert v1 in _stored_versions(s3_env, bucket, s3_host.s3_prefix, env.model)   # the ssh fleet's
    ssh_fleet()
    r = env.deploy(version=v3, opts=deploy_opts(canary=0, keep=1))           # the ssh fleet moves on and cleans up
    assert r.status == "deployed", r.message
    env.serves(ssh_host, v3)
    assert v2 in r.stores[0]["retention"]["in_use"], r.stores
    assert v2 in _stored_versions(s3_env, bucket, s3_host.s3_prefix, env.model)   # the s3 host serves it
    env.serves(s3_host, v2)


def _s3_host_record(s3_host, model: str) -> str:
    """The key of the `s3://` host's use record in its base (``store.host_uses``' name for it)."""
    target = parse_target(s3_host.entry["target"], _Where("x"))
    (name,) = store.host_uses([(Host("s", target, "http://h:1"), [])])
    return f"{s3_host.s3_prefix}/{store.USES_DIR}/{model}/{name}.json"


def _two_fleets_on_one_store(env, s3_env):
    """An ssh fleet (``store = <base>``) serving v1, then an `s3://` fleet on that base serving v2."""
    ssh_host, s3_host = env.add_host("ssh"), env.add_host("s3", grpc=False)
    base = s3_host.entry["target"]
    bucket = base[len("s3://"):].split("/", 1)[0]

    def ssh_fleet() -> None:
        env.write_hosts_file([ssh_host])
        env.hosts_file.write_text(f'store = "{base}"\n' + env.hosts_file.read_text())

    v1, v2 = env.register("a"), env.register("b")
    ssh_fleet()
    r = env.deploy(version=v1, opts=deploy_opts(canary=0, keep=1))
    assert r.status == "deployed" and r.stores, r.message
    env.write_hosts_file([s3_host])
    r = env.deploy(version=v2, opts=deploy_opts(canary=0, keep=1))
    assert r.status == "deployed", r.message
    env.serves(s3_host, v2)
    return ssh_host, s3_host, bucket, ssh_fleet, v2


def test_another_fleets_store_clean_up_keeps_what_an_s3_host_serves_when_its_record_is_old(
        deploy_env, sshd_factory, s3_env):
    """Found by review (2026-12-06, seventeenth stop): an `s3://` host's use record is written only
    when a deploy changes it, and a record older than `store.USE_RECORD_DAYS` is dropped: the ssh
    fleet's store clean-up then removed the version the `s3://` host serves straight from the
    bucket. The store's `models.config` (what that host's TF Serving reads) now counts whatever
    the records' age."""
    env = deploy_env
    ssh_host, s3_host, bucket, ssh_fleet, v2 = _two_fleets_on_one_store(env, s3_env)
    key = _s3_host_record(s3_host, env.model)
    c = s3_env.client()
    record = json.loads(c.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert v2 in record["versions"], record
    record["written"] -= (store.USE_RECORD_DAYS + 1) * 86400          # no deploy reached it for a month
    c.put_object(Bucket=bucket, Key=key, Body=json.dumps(record).encode())
    v3 = env.register("c")
    ssh_fleet()
    r = env.deploy(version=v3, opts=deploy_opts(canary=0, keep=1))   # the ssh fleet moves on and cleans up
    assert r.status == "deployed", r.message
    env.serves(ssh_host, v3)
    assert v2 not in r.stores[0]["retention"]["in_use"], r.stores    # the old record went
    assert v2 in r.stores[0]["retention"].get("served", ()), r.stores     # models.config names it
    assert v2 not in r.stores[0]["retention"]["remove_versions"], r.stores
    assert v2 in _stored_versions(s3_env, bucket, s3_host.s3_prefix, env.model)
    env.serves(s3_host, v2)


def test_an_s3_hosts_failed_first_deploy_leaves_no_window_for_another_fleets_clean_up(
        deploy_env, sshd_factory, s3_env):
    """Found by review (2026-12-06, seventeenth stop): an `s3://` host last deployed by the code
    before it recorded its uses has no record in its base; its first deploy since then failing
    (retention, which writes the record, runs only after a success) left it without one, and the
    ssh fleet's store clean-up removed the version it still serves."""
    env = deploy_env
    ssh_host, s3_host, bucket, ssh_fleet, v2 = _two_fleets_on_one_store(env, s3_env)
    key = _s3_host_record(s3_host, env.model)
    c = s3_env.client()
    c.delete_object(Bucket=bucket, Key=key)                 # deployed by the code before: no record
    bad = env.register("altered")
    with pytest.raises(DeployFailed):
        env.deploy(version=bad, opts=deploy_opts(canary=0, keep=1))
    env.serves(s3_host, v2)
    assert c.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) == 0    # still no record
    v3 = env.register("c")
    ssh_fleet()
    r = env.deploy(version=v3, opts=deploy_opts(canary=0, keep=1))
    assert r.status == "deployed", r.message
    env.serves(ssh_host, v3)
    assert v2 not in r.stores[0]["retention"]["remove_versions"], r.stores
    assert v2 in _stored_versions(s3_env, bucket, s3_host.s3_prefix, env.model)
    env.serves(s3_host, v2)


def test_a_store_clean_up_keeps_what_any_entry_of_the_stores_models_config_loads(s3_env, tmp_path):
    """The store's `models.config` (an `s3://` host's TF Serving reads it) is read by the clean-up
    whatever its entries' base paths (a mirror: `/mirror/digits`) and policies (`latest` 2: the two
    newest); one it cannot read is one line and nothing is removed."""
    from serving_sync import manifest as mf
    from serving_sync.hosts import Store
    from serving_sync.transports.s3 import S3Transport
    from tests.test_sync_support import make_model_tree

    model = make_model_tree(tmp_path / "model")
    m = mf.build(model)
    bucket = s3_env.make_bucket("config-store")
    st = Store(parse_target(f"s3://{bucket}/fleet", _Where("h.toml")))
    for v in (1, 2, 3, 4, 5):
        assert store.StoreCopies("digits", v).upload(st, model, m)["status"] == "uploaded"
    t = S3Transport(bucket, "fleet")
    t.write_file_atomic("models.config", (
        'model_config_list { config { name: "digits" base_path: "s3://elsewhere/fleet/digits/" '
        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } '
        'config { name: "team-b" base_path: "/mirror/digits" model_platform: "tensorflow" '
        'model_version_policy { latest { num_versions: 2 } } } }').encode())
    rp = store.retire(st, "digits", serving=4, previous=None, keep=1, protected=())
    assert _stored_versions(s3_env, bucket, "fleet", "digits") == {1, 4, 5}, rp
    assert rp["served"] == [1, 4, 5] and rp["remove_versions"] == [2, 3], rp
    t.write_file_atomic("models.config", b"model_config_list { config { name: ")
    with pytest.raises(ConfigError) as e:
        store.retire(st, "digits", serving=5, previous=None, keep=1, protected=())
    assert "models.config is malformed" in e.value.message and "\n" not in e.value.message
    assert _stored_versions(s3_env, bucket, "fleet", "digits") == {1, 4, 5}


def _take_over_store_lock(t):
    """Another fleet's deploy takes the store's lock over (``--break-lock``-style, by its token);
    the caller releases the returned lock."""
    from serving_sync.layout import LOCK_PATH
    from serving_sync.lock import HostLock, LockInfo

    held = LockInfo.from_json(t.read_file(LOCK_PATH))
    other = HostLock(t, break_lock=held.token, heartbeat_every=0)
    other.acquire()
    return other


def test_a_store_clean_up_whose_lock_was_taken_over_meanwhile_deletes_nothing(s3_env, tmp_path, monkeypatch):
    """Found by review (2026-12-07, eighteenth stop): nothing checked the store's lock while it was
    held: a clean-up whose lock another fleet's deploy took over (heartbeats failing for the TTL,
    clocks apart) still deleted, maybe the other's upload in progress. Now it beats once before
    deleting, as a host's retention does, and stops with ``LockHeld``."""
    from serving_sync import manifest as mf
    from serving_sync.errors import LockHeld
    from serving_sync.hosts import Store
    from serving_sync.transports.s3 import S3Transport
    from tests.test_sync_support import make_model_tree

    model = make_model_tree(tmp_path / "model")
    m = mf.build(model)
    bucket = s3_env.make_bucket("taken-store")
    st = Store(parse_target(f"s3://{bucket}/fleet", _Where("h.toml")))
    for v in (1, 2, 3):
        assert store.StoreCopies("digits", v).upload(st, model, m)["status"] == "uploaded"
    t = S3Transport(bucket, "fleet")
    others: list = []
    real = store.read_uses

    def taken_over_meanwhile(tt, name, **kw):
        others.append(_take_over_store_lock(t))
        return real(tt, name, **kw)

    monkeypatch.setattr(store, "read_uses", taken_over_meanwhile)
    try:
        with pytest.raises(LockHeld, match="lost its lock"):
            store.retire(st, "digits", serving=3, previous=None, keep=1, protected=())
        assert _stored_versions(s3_env, bucket, "fleet", "digits") == {1, 2, 3}
        assert others and others[0].info is not None      # the other deploy's lock was left alone
        assert t.read_file("digits/1/saved_model.pb")
    finally:
        for o in others:
            o.release()


def test_an_upload_to_the_store_stops_when_its_lock_was_taken_over(s3_env, tmp_path, monkeypatch):
    """Found by review (2026-12-07, eighteenth stop): the store lock's heartbeat thread found it
    taken over, and nobody looked: the upload went on while another fleet held the store (whose
    clean-up removes an upload without ``saved_model.pb``). Now the upload checks the thread's
    finding between objects, as a host's steps do, and stops with ``LockHeld``."""
    import time

    from serving_sync import connections
    from serving_sync import manifest as mf
    from serving_sync import publish as publish_mod
    from serving_sync.errors import LockHeld
    from serving_sync.hosts import Store
    from serving_sync.transports.s3 import S3Transport
    from tests.test_sync_support import make_model_tree

    monkeypatch.setenv("MLOPS_LOCK_TTL", "1")          # the holder's thread beats every 0.25 s
    model = make_model_tree(tmp_path / "model", n_assets=50, asset_bytes=200)
    m = mf.build(model)
    bucket = s3_env.make_bucket("taken-upload")
    st = Store(parse_target(f"s3://{bucket}/fleet", _Where("h.toml")))
    t = S3Transport(bucket, "fleet")
    locks: list = []
    others: list = []
    real_acquire, real_publish = connections.acquire, publish_mod.publish

    def recorded(*a, **kw):
        locks.append(real_acquire(*a, **kw))
        return locks[-1]

    def taken_over_first(*a, **kw):
        others.append(_take_over_store_lock(t))
        deadline = time.monotonic() + 10          # the holder's thread sees it at its next beat
        while not locks[0].lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert locks[0].lost, "the store lock's heartbeat thread never saw the takeover"
        return real_publish(*a, **kw)

    monkeypatch.setattr(connections, "acquire", recorded)
    monkeypatch.setattr(publish_mod, "publish", taken_over_first)
    try:
        with pytest.raises(LockHeld, match="lost its lock"):
            store.StoreCopies("digits", 1).upload(st, model, m)
        assert not t.exists("digits/1/saved_model.pb")
    finally:
        for o in others:
            o.release()


def test_break_lock_takes_over_a_dead_deploys_store_lock_named_in_the_refusal(s3_env, tmp_path, monkeypatch):
    """Found by review (2026-12-07, eighteenth stop): the shared store's lock was always taken
    with no ``--break-lock``: a SIGKILLed deploy's store lock, seen from another machine (its pid
    cannot be asked about), held every later deploy for the TTL (up to 10 min), and the refusal's
    advice to rerun with ``--break-lock TOKEN`` did nothing. Now the deploy's token breaks the
    store's lock too when it is that lock, and the refusal names its token and the flag."""
    import os

    from serving_sync import manifest as mf
    from serving_sync.errors import LockHeld
    from serving_sync.hosts import Store
    from serving_sync.layout import LOCK_PATH
    from serving_sync.lock import LockInfo
    from serving_sync.transports.s3 import S3Transport
    from tests.test_sync_support import make_model_tree

    monkeypatch.setenv("MLOPS_LOCK_TTL", "1")          # the wait for the store's lock: 1 s
    model = make_model_tree(tmp_path / "model")
    m = mf.build(model)
    bucket = s3_env.make_bucket("dead-store-lock")
    st = Store(parse_target(f"s3://{bucket}/fleet", _Where("h.toml")))
    t = S3Transport(bucket, "fleet")
    now = time.time()       # killed a moment ago on another machine, its TTL 10 min: not stale
    dead = LockInfo("ci", "other-machine", os.getpid(), "0123456789abcdef", now, now, "deploy", 600.0, "")
    assert t.create_exclusive(LOCK_PATH, dead.to_json())
    with pytest.raises(LockHeld) as refused:
        store.StoreCopies("digits", 1).upload(st, model, m)
    line = refused.value.message
    assert "token 0123456789abcdef" in line and "--break-lock 0123456789abcdef" in line and "\n" not in line
    assert not t.exists("digits/1/saved_model.pb")
    with pytest.raises(LockHeld):                        # another lock's token breaks nothing
        store.StoreCopies("digits", 1, break_lock="fedcba9876543210").upload(st, model, m)
    assert LockInfo.from_json(t.read_file(LOCK_PATH)).token == dead.token
    r = store.StoreCopies("digits", 1, break_lock=dead.token).upload(st, model, m)
    assert r["status"] == "uploaded" and not t.verify("digits/1", m)
    assert not t.exists(LOCK_PATH)                       # taken over, then released
    assert t.create_exclusive(LOCK_PATH, dead.to_json())     # the clean-up takes the token too
    store.retire(st, "digits", serving=1, previous=None, keep=1, protected=(), break_lock=dead.token)
    assert not t.exists(LOCK_PATH)


def _store_taken_over_once_verified(s3_env, tmp_path, monkeypatch, bucket_name: str, then=None):
    """A store at ``s3://<bucket>/fleet`` whose lock another deploy takes over as soon as this
    upload's objects are verified (``then()`` runs right after): (store, transport, model folder,
    manifest, the other deploy's locks to release)."""
    from serving_sync import manifest as mf
    from serving_sync.hosts import Store
    from serving_sync.transports.s3 import S3Transport
    from tests.test_sync_support import make_model_tree

    model = make_model_tree(tmp_path / "model")
    m = mf.build(model)
    bucket = s3_env.make_bucket(bucket_name)
    st = Store(parse_target(f"s3://{bucket}/fleet", _Where("h.toml")))
    t = S3Transport(bucket, "fleet")
    others: list = []
    real_verify = S3Transport.verify

    def taken_over_once_verified(self, rel, manifest):
        problems = real_verify(self, rel, manifest)
        if not others:
            others.append(_take_over_store_lock(t))
            if then is not None:
                then()
        return problems

    monkeypatch.setattr(S3Transport, "verify", taken_over_once_verified)
    return st, t, model, m, others


def test_a_store_lock_taken_over_after_the_last_object_stops_before_saved_model_pb(s3_env, tmp_path, monkeypatch):
    """Found by review (2026-12-07, eighteenth stop): the upload to the store checked its lock's
    thread between objects, not again before ``saved_model.pb`` made the version complete: a
    takeover while the objects were verified (the thread beats every TTL/4) still completed the
    version in a store another fleet held. Now the lock is read right before it."""
    from serving_sync.errors import LockHeld

    st, t, model, m, others = _store_taken_over_once_verified(s3_env, tmp_path, monkeypatch, "taken-at-the-end")
    try:
        with pytest.raises(LockHeld, match="lost its lock"):
            store.StoreCopies("digits", 1).upload(st, model, m)
        assert others and not t.exists("digits/1/saved_model.pb")
    finally:
        for o in others:
            o.release()


@pytest.mark.parametrize("stop", ["lock", "interrupt"])
def test_an_upload_whose_store_lock_was_taken_over_leaves_the_new_owners_objects(s3_env, tmp_path, monkeypatch,
                                                                                 stop):
    """Found by review (2026-12-07, eighteenth stop): an upload to the store stopped because its
    lock was taken over (``LockHeld``), or by an interrupt after the takeover, and its clean-up
    still removed the version's objects (and aborted its multipart uploads): the new owner may be
    uploading the same version to the same keys, and its live upload was deleted. Now a publish
    whose lock is not ours any more deletes nothing (the new owner's upload overwrites the objects,
    or its clean-up removes them)."""
    from serving_sync import cancel
    from serving_sync.errors import LockHeld

    def then():                                         # the new owner uploads v1 to the same keys now
        if stop == "interrupt":                        # a SIGTERM lands before the lock's check
            raise cancel.DeployInterrupted("SIGTERM (test)")

    st, t, model, m, others = _store_taken_over_once_verified(s3_env, tmp_path, monkeypatch,
                                                              f"taken-keep-{stop}", then)
    body = sorted(f.path for f in m.files if f.path != m.completion_file)
    try:
        with pytest.raises(LockHeld if stop == "lock" else cancel.DeployInterrupted):
            store.StoreCopies("digits", 1).upload(st, model, m)
        assert others and not t.exists("digits/1/saved_model.pb")
        assert sorted(t.files_under("digits/1")) == body       # the new owner's upload left alone
    finally:
        for o in others:
            o.release()


def test_an_s3_hosts_retention_removes_no_partial_folder_once_its_lock_was_taken_over(s3_env, tmp_path):
    """Retention beat the lock once more before deleting old versions, uploads, config temps or
    heartbeat files, but not before removing an ``s3://`` host's numeric folder without its
    ``saved_model.pb``: after another deploy took the lock over (``--break-lock``), its live upload
    of v7 (saved_model.pb comes last) was deleted under it, and its saved_model.pb then completed a
    version missing files (found by review, 2026-12-07, nineteenth stop)."""

    from serving_sync import deploy_retention
    from serving_sync import manifest as mf
    from serving_sync.lock import HostLock
    from serving_sync.options import DeployOptions
    from serving_sync.transports.s3 import S3Transport
    from tests.test_sync_support import make_model_tree

    model = make_model_tree(tmp_path / "model")
    m = mf.build(model)
    bucket = s3_env.make_bucket("taken-over-host")
    t = S3Transport(bucket, "serving")
    for v in (5, 6):
        t.upload_tree(model, f"digits/{v}", m)
    ours = HostLock(t, heartbeat_every=0)
    ours.acquire()
    run = _s3_retention_run(t, bucket, ours)
    thief = HostLock(t, break_lock=ours.info.token, heartbeat_every=0)
    thief.acquire()                      # ours.lost is not set: only a forced heartbeat can tell
    t.upload_tree(model, "digits/7", m.without({m.completion_file}))     # the new owner's upload, under way
    try:
        info = deploy_retention.host_retention(run, DeployOptions(keep=3))
        assert "lost its lock" in (info.get("error") or ""), info
        assert _stored_versions(s3_env, bucket, "serving", "digits") == {5, 6, 7}
        assert t.files_under("digits/7"), "the new owner's upload was removed"
    finally:
        thief.release()
        ours.release()


def _s3_retention_run(t, bucket: str, lock):
    """What ``deploy_retention.host_retention`` reads of one ``s3://`` host's run (v5 -> v6 of
    ``digits``, v5 kept), its connection holding ``lock``."""
    from types import SimpleNamespace

    from serving_sync.connections import Heartbeat, HostConn

    host = SimpleNamespace(name="h1", target=parse_target(f"s3://{bucket}/serving", _Where("h.toml")))
    conn = HostConn(host, t, None)
    conn.lock = lock
    plan = SimpleNamespace(model="digits", desired=6, previous_kept=5, current=5,
                           final=SimpleNamespace(versions=(5, 6)), held_by_others=())
    return SimpleNamespace(plan=plan, transport=t, host=host, heartbeat=Heartbeat([conn]), conn=conn)


def test_an_s3_hosts_retention_drops_a_dead_folder_from_the_verified_record(s3_env, tmp_path):
    """Retention removed an ``s3://`` host's numeric folder without ``saved_model.pb`` (an upload
    or a removal that did not finish) but dropped only the old versions it removed from
    ``verified/<model>.json``: the record kept naming a version the host no longer had as smoke-
    tested there (`sync status` listed it, and a copy uploaded again under that number started out
    "verified") (found by review, 2026-12-07, twentieth stop)."""

    from serving_sync import deploy_retention, verified
    from serving_sync import manifest as mf
    from serving_sync.lock import HostLock
    from serving_sync.options import DeployOptions
    from serving_sync.transports.s3 import S3Transport
    from tests.test_sync_support import make_model_tree

    model = make_model_tree(tmp_path / "model")
    m = mf.build(model)
    bucket = s3_env.make_bucket("dead-verified")
    t = S3Transport(bucket, "serving")
    for v in (4, 5, 6):
        t.upload_tree(model, f"digits/{v}", m)
        verified.add(t, "digits", v, route=f"digits__validate/versions/{v}")
    t.remove_file(f"digits/4/{m.completion_file}")       # a removal of v4 killed after its first request
    ours = HostLock(t, heartbeat_every=0)
    ours.acquire()
    run = _s3_retention_run(t, bucket, ours)
    try:
        info = deploy_retention.host_retention(run, DeployOptions(keep=3))
        assert info["remove_partials"] == [4] and info["remove_versions"] == [], info
        assert _stored_versions(s3_env, bucket, "serving", "digits") == {5, 6}
        assert sorted(verified.read(t, "digits")) == [5, 6]
    finally:
        ours.release()


def test_a_store_clean_up_under_a_hosts_lock_deletes_nothing_once_that_lock_was_taken_over(s3_env, tmp_path):
    """A store that is also an ``s3://`` host's base of the deploy is cleaned up under that host's
    lock (``held``, not taken again), and then nothing beat it before deleting: after another deploy
    took it over (``--break-lock``), the clean-up deleted that deploy's upload under way (no
    ``saved_model.pb`` yet: a dead upload to it) (found by review, 2026-12-07, nineteenth stop)."""
    from serving_sync import manifest as mf
    from serving_sync.errors import LockHeld
    from serving_sync.hosts import Store, base_key
    from serving_sync.lock import HostLock
    from serving_sync.transports.s3 import S3Transport
    from tests.test_sync_support import make_model_tree

    model = make_model_tree(tmp_path / "model")
    m = mf.build(model)
    bucket = s3_env.make_bucket("held-store")
    st = Store(parse_target(f"s3://{bucket}/fleet", _Where("h.toml")))
    t = S3Transport(bucket, "fleet")
    for v in (5, 6):
        t.upload_tree(model, f"digits/{v}", m)
    ours = HostLock(t, heartbeat_every=0)           # the s3:// host's lock, taken by the deploy
    ours.acquire()
    thief = HostLock(t, break_lock=ours.info.token, heartbeat_every=0)
    thief.acquire()                                  # ours.lost is not set: only a beat can tell
    t.upload_tree(model, "digits/7", m.without({m.completion_file}))     # the new owner's upload, under way
    try:
        with pytest.raises(LockHeld):
            store.retire(st, "digits", serving=6, previous=5, keep=3, protected=(),
                         held={base_key(st.target): ours})
        assert _stored_versions(s3_env, bucket, "fleet", "digits") == {5, 6, 7}
        assert t.files_under("digits/7"), "the new owner's upload was removed"
    finally:
        thief.release()
        ours.release()


def test_an_s3_folder_without_saved_model_pb_is_no_published_version(deploy_env, s3_env):
    """Found by review (2026-12-07, twenty-first stop): on an `s3://` host every numeric folder
    counted as published, with or without its `saved_model.pb` (uploaded last; a removal deletes it
    first). TF Serving lists such a folder but cannot load it. A host serving v1 whose
    `saved_model.pb` was deleted read as up to date (a TF Serving restart would serve nothing), and
    a dead upload of the version to deploy was planned as "already present: verify its files only".
    Now such a folder is no published version: the plan publishes it (the rest of its objects,
    `saved_model.pb` last) and the deploy puts it back."""
    env = deploy_env
    s3_host = env.add_host("s3", grpc=False)    # the local server reads a mirror of the bucket
    bucket = s3_host.entry["target"][len("s3://"):].split("/", 1)[0]
    c = s3_env.client()
    v1, v2 = env.register("a"), env.register("b")
    env.promote(v1)
    r = env.deploy(opts=deploy_opts(canary=0))
    assert r.status == "deployed", r.message
    env.serves(s3_host, v1)
    marker = f"{s3_host.s3_prefix}/{env.model}/{v1}/saved_model.pb"
    c.delete_object(Bucket=bucket, Key=marker)          # a removal killed after its first request
    plan = env.cli("sync", "plan", "--json")
    assert plan.returncode == 0, plan.stderr
    (host,) = json.loads(plan.stdout)["hosts"]
    assert not host["up_to_date"], host
    (publish,) = [s for s in host["steps"] if s["kind"] == "publish"]
    assert "already present" not in publish["text"] and "saved_model.pb last" in publish["text"], publish
    r = env.deploy(opts=deploy_opts(canary=0))
    assert r.status == "deployed", r.message
    assert c.head_object(Bucket=bucket, Key=marker)["ContentLength"] > 0      # published again
    env.serves(s3_host, v1)
    # a dead upload of the next version: every object but saved_model.pb
    for o in c.list_objects_v2(Bucket=bucket, Prefix=f"{s3_host.s3_prefix}/{env.model}/{v1}/")["Contents"]:
        if not o["Key"].endswith("/saved_model.pb"):
            c.copy_object(Bucket=bucket, CopySource={"Bucket": bucket, "Key": o["Key"]},
                          Key=o["Key"].replace(f"/{env.model}/{v1}/", f"/{env.model}/{v2}/"))
    env.promote(v2)
    plan = env.cli("sync", "plan", "--json")
    assert plan.returncode == 0, plan.stderr
    (host,) = json.loads(plan.stdout)["hosts"]
    (publish,) = [s for s in host["steps"] if s["kind"] == "publish"]
    assert "already present" not in publish["text"], publish


def test_the_plan_says_a_pulling_host_downloads_the_version_from_the_store(deploy_env, sshd_factory, s3_env):
    """Found by review (2026-12-07, twenty-first stop): an ssh host pulling from the hosts file's
    `store` had `publish v1 as m/1 (upload, verify, rename)` as its publish step, in `sync plan`
    and in the deploy's progress lines and `--json`: the deploy sends it no bytes of the version,
    the host downloads them from the store. The step now says so."""
    env = deploy_env
    env.add_host("ssh")
    bucket = s3_env.make_bucket("plan-pull")
    _with_store(env, bucket, env.model)
    v1 = env.register("a")
    env.promote(v1)
    plan = env.cli("sync", "plan", "--json")
    assert plan.returncode == 0, plan.stderr
    (host,) = json.loads(plan.stdout)["hosts"]
    (publish,) = [s for s in host["steps"] if s["kind"] == "publish"]
    assert "upload" not in publish["text"], publish
    assert f"download from the shared store s3://{bucket}/{env.model} on the host" in publish["text"], publish
    text = env.cli("sync", "plan")
    assert text.returncode == 0, text.stderr
    assert f"download from the shared store s3://{bucket}/{env.model} on the host, verify, rename" in text.stdout


def test_plan_and_deploy_refuse_a_store_without_credentials_before_the_download(deploy_env, sshd_factory, s3_env,
                                                                                tmp_path):
    """Found by review (2026-12-07, twenty-first stop): with `store = "s3://..."` and no S3
    credentials on the deploying machine, `sync plan` showed every step (exit 0) and `sync deploy`
    downloaded the whole SavedModel from MLflow, then refused at the upload ("no S3 credentials").
    Both refuse in one line now, before the registry's artifacts are read or a host touched."""
    env = deploy_env
    host = env.add_host("ssh")
    bucket = s3_env.make_bucket("no-credentials")
    _with_store(env, bucket, env.model)
    v1 = env.register("a")
    env.promote(v1)
    none = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "",
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_EC2_METADATA_DISABLED": "true"}
    for args in (("sync", "plan"), ("sync", "deploy")):
        r = env.cli(*args, extra_env=none)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "downloading" not in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1] == (
            f"error: s3://{bucket}/{env.model}: no S3 credentials to upload the version to the shared store; "
            f"set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile); nothing was changed"), r.stderr
    assert env.label(host) is None
    r = env.cli("sync", "deploy")
    assert r.returncode == 0, r.stderr
    env.serves(host, v1)


def test_a_rollback_that_only_switches_needs_no_store_credentials_one_that_uploads_is_refused_first(
        deploy_env, sshd_factory, s3_env, tmp_path):
    """Found by review (2026-12-07, twenty-second stop): since the twenty-first stop a fleet pulling
    from a store refused `sync rollback` (and `sync deploy`, `sync plan`) on a machine without S3
    credentials, though the rollback target is kept warm on every host: its deploy is a switch
    and uploads nothing. Someone on call with SSH access and no AWS credentials could not roll
    back. The credentials are required only when a host would pull the version: a rollback to one
    no host has is still refused in one line before production moves, as it is when the store
    refuses us (twenty-fourth stop)."""
    from tests.fixtures.faults import final_error_line

    env = deploy_env
    host = env.add_host("ssh")
    bucket = s3_env.make_bucket("rollback-no-credentials")
    _with_store(env, bucket, env.model)
    v1, v2 = env.release("a"), env.release("b")        # v1 kept warm on the host: the rollback target
    v3 = env.register("c")                              # never on the host
    none = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "",
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_EC2_METADATA_DISABLED": "true"}
    refused = (f"error: s3://{bucket}/{env.model}: no S3 credentials to upload the version to the shared store; "
               f"set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile); nothing was changed")
    r = env.cli("sync", "rollback", "--to", str(v3), "--reason", "v2 is slow", extra_env=none)
    assert r.returncode == 2 and final_error_line(r.stderr) == refused, r.stderr[-3000:]
    assert env.production() == v2 and not env.ledger(("rollback",))
    assert {e.details.get("move") for e in env.ledger(("intent",))} == {"promote"}      # no rollback began
    env.serves(host, v2)
    # with credentials, a store that refuses us (its bucket gone): refused before production moves
    # too (twenty-fourth stop: it moved production to v3, then its deploy refused before the download)
    _with_store(env, "rollback-store-gone", env.model)
    r = env.cli("sync", "rollback", "--to", str(v3), "--reason", "v2 is slow")
    line = final_error_line(r.stderr)
    assert r.returncode == 2 and line.startswith(f"error: s3://rollback-store-gone/{env.model}: bucket "
                                                 f"'rollback-store-gone' does not exist"), r.stderr[-3000:]
    assert line.endswith("(the shared store the hosts pull the version from; nothing was changed)"), line
    assert env.production() == v2 and not env.ledger(("rollback",))
    # the switch-only rollback below needs neither credentials nor the store
    r = env.cli("sync", "plan", "--version", str(v1), extra_env=none)      # the switch the rollback makes
    assert r.returncode == 0, r.stderr[-3000:]
    r = env.cli("sync", "rollback", "--reason", "v2 is slow", extra_env=none)
    assert r.returncode == 0, r.stderr[-3000:]
    assert env.production() == v1
    env.serves(host, v1)
    assert "uploading" not in r.stderr


def test_the_store_keeps_the_rollback_target_read_before_the_switch_as_the_hosts_do(
        deploy_env, sshd_factory, s3_env, monkeypatch):
    """Found by review (2026-12-07, twenty-first stop): a deploy's host retention keeps where
    production would roll back to as read before any host changed (what its plans' preview kept)
    beside the one read after the switch (twentieth stop); the store's clean-up kept only the
    second, so when the two differ (a move in the registry during the deploy) the store removed a
    version every host kept as a rollback target, and a rollback to it had to download and upload
    it again. The store keeps both now, as the hosts."""
    from registry import deploys

    env = deploy_env
    host = env.add_host("ssh")
    bucket = s3_env.make_bucket("planned-target")
    _with_store(env, bucket, env.model)
    v1, v2, v3 = (env.release(kind, opts=deploy_opts(canary=0, keep=3)) for kind in ("a", "b", "c"))
    assert _stored_versions(s3_env, bucket, env.model, env.model) == {v1, v2, v3}
    v4 = env.register("a")
    env.promote(v4)
    real, reads = deploys.DeployLedger.rollback_target, []

    def rollback_target(self):           # v1 as the deploy plans; what the ledger says after
        reads.append(None)
        return v1 if len(reads) == 1 else real(self)

    monkeypatch.setattr(deploys.DeployLedger, "rollback_target", rollback_target)
    r = env.deploy(opts=deploy_opts(canary=0, keep=1))
    assert r.status == "deployed", r.message
    assert len(reads) == 2, reads
    env.serves(host, v4)
    on_host = {int(p.name) for p in (host.base / env.model).iterdir() if p.name.isdigit()}
    assert v1 in on_host and v2 not in on_host, on_host
    assert v1 not in r.stores[0]["retention"]["remove_versions"], r.stores
    assert _stored_versions(s3_env, bucket, env.model, env.model) == {v1, v3, v4}


def test_a_pulling_host_rolled_back_to_a_version_on_its_disk_uses_that_copy(deploy_env, sshd_factory, s3_env,
                                                                           monkeypatch):
    """Found by review (2026-12-07, twenty-second stop): a host pulling from the hosts file's
    `store` never used its own copy of a version kept on disk (a rollback past the warm version),
    where a host without a store has it verified against the registration: the deploy downloaded
    the SavedModel from MLflow and uploaded it to the store again, and `sync plan` said the host
    pulls it from the store. The host's copy is verified in place now; nothing is downloaded or
    uploaded, and the plan says so."""
    from serving_sync import fleet_fetch

    env = deploy_env
    host = env.add_host("ssh")
    bucket = s3_env.make_bucket("own-copy")
    _with_store(env, bucket, env.model)
    v1, v2, v3 = (env.release(kind, opts=deploy_opts(canary=0, keep=3)) for kind in ("a", "b", "c"))
    assert (host.base / env.model / str(v1)).is_dir()          # on disk, not loaded (v2 is kept warm)
    client = s3_env.client()                                   # the store's clean-up removed it, say
    objs = client.list_objects_v2(Bucket=bucket, Prefix=f"{env.model}/{env.model}/{v1}/").get("Contents", [])
    assert objs
    client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": o["Key"]} for o in objs]})
    # the move this test is not about: in this process, as `mlops registry rollback --to` makes it
    promotion.rollback(env.model, to=v1, reason="v3 and v2 misbehave", actor="oncall")
    assert env.production() == v1
    plan = env.cli("sync", "plan")
    assert plan.returncode == 0, plan.stderr
    assert f"pulls v{v1}" not in plan.stdout, plan.stdout
    assert f"keeps its own copy of v{v1}: verified on the host, nothing pulled from the shared store" in plan.stdout
    downloads = []
    real = fleet_fetch.download_bundle
    monkeypatch.setattr(fleet_fetch, "download_bundle", lambda *a, **kw: downloads.append(a) or real(*a, **kw))
    r = env.deploy(opts=deploy_opts(canary=0, keep=3))
    assert r.status == "deployed", r.message
    env.serves(host, v1)
    assert downloads == [] and r.stores == [], (downloads, r.stores)
    assert [o.publish["status"] for o in r.hosts] == ["already_present"], [o.publish for o in r.hosts]
    assert v1 not in _stored_versions(s3_env, bucket, env.model, env.model)


def test_a_store_clean_up_keeps_what_a_latest_entry_loads_once_a_dead_folder_is_gone(s3_env, tmp_path):
    """Found by review (2026-12-07, twenty-second stop): a `latest 2` entry of the store's
    `models.config` over v1..v5 and a dead upload of v6 (no saved_model.pb) counted v6 and v5 as
    what it loads, as TF Serving lists them; TF Serving fails to load v6 and keeps v4 loaded, and
    the clean-up removes v6 (a dead folder), after which TF Serving loads v5 and v4. The clean-up
    kept v6 (never loadable, kept for good) and removed v4, which the entry then could not load.
    It now counts the newest complete folders: v5 and v4 stay, v6 goes."""
    from serving_sync import manifest as mf
    from serving_sync.hosts import Store
    from serving_sync.transports.s3 import S3Transport
    from tests.test_sync_support import make_model_tree

    model = make_model_tree(tmp_path / "model")
    m = mf.build(model)
    bucket = s3_env.make_bucket("latest-store")
    st = Store(parse_target(f"s3://{bucket}/fleet", _Where("h.toml")))
    for v in (1, 2, 3, 4, 5):
        assert store.StoreCopies("digits", v).upload(st, model, m)["status"] == "uploaded"
    t = S3Transport(bucket, "fleet")
    t.upload_tree(model, "digits/6", m.without({m.completion_file}))     # a dead upload of v6
    t.write_file_atomic("models.config", (
        'model_config_list { config { name: "team-b" base_path: "s3://' + bucket + '/fleet/digits" '
        'model_platform: "tensorflow" model_version_policy { latest { num_versions: 2 } } } }').encode())
    rp = store.retire(st, "digits", serving=2, previous=None, keep=1, protected=())
    assert rp["served"] == [4, 5] and rp["remove_partials"] == [6], rp
    assert _stored_versions(s3_env, bucket, "fleet", "digits") == {2, 4, 5}, rp


def test_an_s3_hosts_latest_entry_holds_the_newest_complete_folders_not_a_dead_one(s3_env, tmp_path):
    """Found by review (2026-12-07, twenty-second stop), the host side of the test above: on an
    `s3://` host, another team's `latest 2` entry over our folder with v1..v3 and a dead upload of
    v4 counted v4 and v3 as what it holds. TF Serving fails to load v4 and keeps v2 loaded, and the
    deploy's retention removes v4 (a dead folder) only when nothing holds it: it kept v4 for good
    (the entry failing on it at each poll) and could remove v2. The entry holds v3 and v2 now,
    and the plan's retention removes the dead v4."""
    from serving_sync import manifest as mf
    from serving_sync import models_config as mc
    from serving_sync.observe import observe_host
    from serving_sync.plan import plan_host, retention_preview
    from serving_sync.tfs_client import VersionStatus
    from serving_sync.transports.s3 import S3Transport
    from tests.test_sync_status_observed import Served
    from tests.test_sync_support import make_model_tree

    model = make_model_tree(tmp_path / "model")
    m = mf.build(model)
    bucket = s3_env.make_bucket("latest-host")
    host = Host("s3h", parse_target(f"s3://{bucket}/serving", _Where("h.toml")), "http://127.0.0.1:1")
    t = S3Transport(bucket, "serving")
    for v in (1, 2, 3):
        t.upload_tree(model, f"digits/{v}", m)
    t.upload_tree(model, "digits/4", m.without({m.completion_file}))     # a dead upload of v4
    base = mc.model_base_path(host.serving_base_path(), "digits")
    t.write_file_atomic("models.config", (
        f'model_config_list {{ config {{ name: "digits" base_path: "{base}" model_platform: "tensorflow" '
        'model_version_policy { specific { versions: 1 } } version_labels { key: "stable" value: 1 } } '
        f'config {{ name: "team-b" base_path: "{base}" model_platform: "tensorflow" '
        'model_version_policy { latest { num_versions: 2 } } } }').encode())
    obs = observe_host(host, t, Served({"digits": [VersionStatus(1, "AVAILABLE")]}, 1), "digits").obs
    assert obs.incomplete == (4,) and obs.published == (1, 2, 3), obs
    assert obs.held_by_others == (2, 3), obs.held_by_others
    p = plan_host(obs, 3, keep=1)
    assert retention_preview(obs, 3, p.final, p.previous_kept, keep=1, partial=obs.incomplete) == (4,)


def test_plan_and_deploy_say_a_store_that_refuses_us_before_the_download(deploy_env, sshd_factory, s3_env):
    """Found by review (2026-12-07, twenty-second stop): with `store = "s3://..."` naming a bucket
    that does not exist (or one S3 refuses these credentials), `sync plan` said the host `pulls v1
    from the shared store` and exited 0, and `sync deploy` downloaded the whole SavedModel from
    MLflow before its upload was refused. Both say it first now, in one line, nothing changed."""
    from tests.fixtures.faults import final_error_line

    env = deploy_env
    host = env.add_host("ssh")
    s3_env.make_bucket("some-store")             # the endpoint answers; the bucket named is not there
    _with_store(env, "no-such-store", env.model)
    v1 = env.register("a")
    env.promote(v1)
    plan = env.cli("sync", "plan", "--json")
    assert plan.returncode == 2, plan.stderr        # the deploy would refuse: so does the plan's exit
    refused = json.loads(plan.stdout)["deploy_refused"]
    assert refused and refused.startswith(f"s3://no-such-store/{env.model}: bucket 'no-such-store' does not exist"), \
        refused
    assert refused.endswith("(the shared store the hosts pull the version from; nothing was changed)"), refused
    text = env.cli("sync", "plan").stdout.splitlines()
    assert text[1] == f"note: `mlops sync deploy` refuses this before any host changes: {refused}", text
    r = env.cli("sync", "deploy")
    assert r.returncode != 0
    assert final_error_line(r.stderr) == f"error: {refused}", r.stderr
    assert "downloading" not in r.stderr, r.stderr
    assert env.label(host) is None
