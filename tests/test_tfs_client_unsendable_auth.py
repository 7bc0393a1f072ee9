"""Basic auth for TF Serving (from ``~/.netrc``, a proxy URL's ``user:password@`` or the host URL's)
that urllib3 cannot encode as Latin-1, refused with one line naming where it is, never the
password, before any request."""
from __future__ import annotations

import pytest

from mlops_common.errors import ConfigError
from serving_sync.tfs_client import TFServingClient

_LATIN1 = ("holds a character HTTP basic auth cannot send (Latin-1 only: no euro sign, no letters beyond "
           "Western European ones); change the password and rerun; nothing was sent")
_NOT_UTF8 = ("holds bytes that are not UTF-8 text (raw or %-escaped, of another encoding); write it as UTF-8 "
             "and rerun; nothing was sent")


@pytest.fixture
def no_proxy_no_netrc(monkeypatch, tmp_path):
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
                "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))


def _refused(url: str) -> str:
    with pytest.raises(ConfigError) as e:
        TFServingClient(url)
    msg = str(e.value)
    assert "\n" not in msg and e.value.exit_code == 2
    assert "0123456789" not in msg           # the password (each ends so) is never in the line
    return msg


@pytest.mark.parametrize("content, problem", [
    ("machine 127.0.0.1 login bob password pa\u20acs-0123456789\n".encode(), _LATIN1),
    (b"machine 127.0.0.1 login bob password pa\xe9s-0123456789\n",
     "is not UTF-8 text (bytes of another encoding): save it as UTF-8 and rerun; nothing was sent"),
])
def test_a_netrc_password_urllib3_cannot_send_is_one_line_naming_the_file(content, problem, no_proxy_no_netrc,
                                                                         monkeypatch, tmp_path):
    """A euro sign in ~/.netrc's password was a UnicodeEncodeError traceback (urllib3 encodes basic
    auth as Latin-1); a netrc file of Latin-1 bytes a UnicodeDecodeError one."""
    (tmp_path / "netrc").write_bytes(content)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    msg = _refused("http://127.0.0.1:8501")
    assert msg.startswith("the file NETRC names ") and msg.endswith(problem), msg
    monkeypatch.delenv("NETRC")
    (tmp_path / ".netrc").write_bytes(content)
    assert _refused("http://127.0.0.1:8501").startswith("~/.netrc ")


@pytest.mark.parametrize("proxy, problem", [
    ("http://proxy-user:pa\u20acs-0123456789@127.0.0.1:3128", _LATIN1),
    ("http://proxy-user:pa%E2%82%ACs-0123456789@127.0.0.1:3128", _LATIN1),
    ("http://proxy-user:pa%E9s-0123456789@127.0.0.1:3128", _NOT_UTF8),
    ("http://proxy-user:pa\udce9s-0123456789@127.0.0.1:3128", _NOT_UTF8),    # HTTP_PROXY of Latin-1 bytes
])
def test_a_proxy_password_urllib3_cannot_send_is_one_line_naming_the_proxy(proxy, problem, no_proxy_no_netrc,
                                                                          monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", proxy)
    msg = _refused("http://serving.example:8501")
    assert msg == ("the user:password@ part of the proxy URL http://127.0.0.1:3128 (HTTP_PROXY, HTTPS_PROXY or "
                   f"ALL_PROXY) {problem}")


@pytest.mark.parametrize("url, problem", [
    ("http://bob:pa\u20acs-0123456789@127.0.0.1:8501", _LATIN1),
    ("http://b\u20acb-0123456789:x@127.0.0.1:8501", _LATIN1),
    ("http://bob:pa%E9s-0123456789@127.0.0.1:8501", _NOT_UTF8),
])
def test_a_url_password_urllib3_cannot_send_is_one_line_naming_the_url(url, problem, no_proxy_no_netrc):
    assert _refused(url) == f"the user:password@ part of TF Serving's URL http://127.0.0.1:8501 {problem}"


def test_latin1_credentials_are_still_sent(no_proxy_no_netrc, monkeypatch, tmp_path):
    import urllib3

    (tmp_path / "netrc").write_text("machine 127.0.0.1 login bob password pa\u00e9s\n", encoding="utf-8")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("HTTP_PROXY", "http://proxy-user:pr%C3%B6xy@proxy.example:3128")
    client = TFServingClient("http://127.0.0.1:8501")
    assert client._headers == urllib3.make_headers(basic_auth="bob:pa\u00e9s")
    proxied = TFServingClient("http://serving.example:8501")
    assert proxied._http.proxy_headers == urllib3.make_headers(proxy_basic_auth="proxy-user:pr\u00f6xy")


@pytest.mark.parametrize("content, problem", [
    ("machine 127.0.0.1 login bob password pa\u20acs-0123456789\n".encode(),
     "the file NETRC names (its entry for the MLflow server's host) " + _LATIN1),
    (b"machine 127.0.0.1 login bob password pa\xe9s-0123456789\n",
     "the file NETRC names is not UTF-8 text (bytes of another encoding): save it as UTF-8 and rerun; nothing "
     "was sent"),
])
def test_a_netrc_password_for_the_mlflow_server_requests_cannot_send_is_one_line(content, problem, tmp_path):
    """Without MLFLOW_TRACKING_USERNAME / PASSWORD, requests sends the netrc entry for the MLflow
    server's host: a euro sign in it (or a netrc of Latin-1 bytes) was a traceback at the first
    request of ``mlops registry status``."""
    from tests.test_cli_unsendable_credentials import _mlops

    (tmp_path / "netrc").write_bytes(content)
    proc = _mlops(["registry", "status"], {b"NETRC": b"{tmp}/netrc"}, tmp_path)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert err.splitlines() == [f"error: {problem}"]
    assert b"0123456789" not in proc.stderr + proc.stdout


def test_a_proxy_password_for_the_mlflow_server_requests_cannot_send_is_one_line(tmp_path):
    """requests sends HTTP_PROXY's user:password@ as Proxy-Authorization, Latin-1: a euro sign in it
    was a UnicodeEncodeError traceback at the first request to the MLflow server."""
    from tests.test_cli_unsendable_credentials import _mlops

    proc = _mlops(["registry", "status"], {b"HTTP_PROXY": "http://u:pa\u20acs-0123456789@127.0.0.1:9".encode(),
                                           b"NO_PROXY": b"", b"no_proxy": b"",
                                           b"MLFLOW_TRACKING_URI": b"http://mlflow.example:5000"}, tmp_path)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert err.splitlines() == ["error: the user:password@ part of the proxy URL for the MLflow server (HTTP_PROXY, "
                                "HTTPS_PROXY or ALL_PROXY) " + _LATIN1]
    assert b"0123456789" not in proc.stderr + proc.stdout
