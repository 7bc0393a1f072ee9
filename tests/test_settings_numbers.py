"""Numbers and URLs read from the environment (found in review): a NaN retry count or a negative
timeout for MLflow's HTTP client was a traceback from inside requests; a serving port of 70000
for `mlops demo` an OverflowError; MLflow's backend-store URI with an '@' in its password showed
the password's tail in messages."""
from __future__ import annotations

import pytest

from mlops_common.errors import ConfigError


@pytest.mark.parametrize("name, value", [("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "nan"),
                                         ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "-1"),
                                         ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "inf"),
                                         ("MLFLOW_HTTP_REQUEST_TIMEOUT", "-5"),
                                         ("MLFLOW_HTTP_REQUEST_TIMEOUT", "0"),
                                         ("MLFLOW_HTTP_REQUEST_TIMEOUT", "soon")])
def test_mlflow_http_settings_must_be_usable_numbers(name, value, monkeypatch):
    from registry.rest import MlflowRest

    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as e:
        MlflowRest("http://127.0.0.1:5000")
    assert str(e.value).startswith(f"{name} must be a number") and f"got '{value}'" in str(e.value)
    assert "\n" not in str(e.value)


def test_good_mlflow_http_settings_are_taken(monkeypatch):
    from registry.rest import MlflowRest

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2.5")
    rest = MlflowRest("http://127.0.0.1:5000")
    assert (rest.retries, rest.timeout) == (0, 2.5)


@pytest.mark.parametrize("value", ["70000", "0", "http"])
def test_demo_serving_ports_must_be_port_numbers(value, monkeypatch):
    from mlops import demo

    monkeypatch.setenv("MLOPS_SERVING_GRPC_PORT", value)
    with pytest.raises(ConfigError, match=f"MLOPS_SERVING_GRPC_PORT must be a port number 1-65535, got '{value}'"):
        demo._ports()
