"""The local server's Prometheus page, line for line as TF Serving's exporter writes it.

Unit part: the cases of ``tensorflow_serving/util/prometheus_exporter_test.cc`` on our exporter,
and TF Serving's bucket limits (``util.cc``: scale 10 µs, power 1.8, 33 buckets). Server part:
a real ``python -m serving_host.local_server --monitoring_config_file=...`` after real REST
traffic, read with ``prometheus_client.parser`` and compared line by line.
"""
from __future__ import annotations

import pytest

from serving_host import metrics as m


def _registry_with(name, kind, labels, buckets=()):
    r = m.Registry()
    r.define(name, kind, labels, buckets)
    return r


# --- prometheus_exporter_test.cc ------------------------------------------------------------

def test_exporter_counter():
    r = _registry_with("/test/path/total", m.COUNTER, ("name",))
    r.counter("/test/path/total", ("abc",), 2)
    assert r.page() == '# TYPE :test:path:total counter\n:test:path:total{name="abc"} 2\n'


def test_exporter_gauge():
    r = _registry_with("/test/path/gague", m.GAUGE, ("x", "y"))
    r.gauge("/test/path/gague", ("abc", "def"), 5)
    assert r.page() == '# TYPE :test:path:gague gauge\n:test:path:gague{x="abc",y="def"} 5\n'


def test_exporter_histogram():
    r = _registry_with("/test/path/histogram", m.HISTOGRAM, ("status",),
                       m.exponential_buckets(1, 2, 10))
    for v in (2, 20, 200):
        r.sample("/test/path/histogram", ("good",), v)
    lines = [
        "# TYPE :test:path:histogram histogram",
        ':test:path:histogram_bucket{status="good",le="1"} 0',
        ':test:path:histogram_bucket{status="good",le="2"} 0',
        ':test:path:histogram_bucket{status="good",le="4"} 1',
        ':test:path:histogram_bucket{status="good",le="8"} 1',
        ':test:path:histogram_bucket{status="good",le="16"} 1',
        ':test:path:histogram_bucket{status="good",le="32"} 2',
        ':test:path:histogram_bucket{status="good",le="64"} 2',
        ':test:path:histogram_bucket{status="good",le="128"} 2',
        ':test:path:histogram_bucket{status="good",le="256"} 3',
        ':test:path:histogram_bucket{status="good",le="512"} 3',
        ':test:path:histogram_bucket{status="good",le="+Inf"} 3',
        ':test:path:histogram_sum{status="good"} 222',
        ':test:path:histogram_count{status="good"} 3']
    assert r.page() == "\n".join(lines) + "\n"


def test_exporter_sanitize_label_value():
    r = _registry_with("/test/path/total", m.COUNTER, ("name",))
    r.counter("/test/path/total", ('"abc\\"',), 2)
    assert r.page() == '# TYPE :test:path:total counter\n:test:path:total{name="\\"abc\\\\\\""} 2\n'


def test_exporter_sanitize_label_name():
    r = _registry_with("/test/path/total", m.COUNTER, ("my-name+1",))
    r.counter("/test/path/total", ("abc",), 2)
    assert r.page() == '# TYPE :test:path:total counter\n:test:path:total{my_name_1="abc"} 2\n'


def test_exporter_sanitize_metric_name():
    r = _registry_with("0/path-total_count", m.COUNTER, ("name",))
    r.counter("0/path-total_count", ("abc",), 2)
    assert r.page() == "# TYPE _0:path:total_count counter\n_0:path:total_count{name=\"abc\"} 2\n"


def test_exporter_unlabelled_and_empty_metrics():
    """No labels: ``NAME{} x`` and ``_bucket{le=..}``; a metric without cells keeps its TYPE line."""
    r = m.Registry()
    r.define("/a/scalar", m.COUNTER, ())
    r.define("/b/hist", m.HISTOGRAM, (), (1.0,))
    r.define("/c/empty", m.COUNTER, ("x",))
    r.counter("/a/scalar", (), 7)
    r.sample("/b/hist", (), 0.5)
    assert r.page() == ("# TYPE :a:scalar counter\n:a:scalar{} 7\n# TYPE :b:hist histogram\n"
                        ':b:hist_bucket{le="1"} 1\n:b:hist_bucket{le="+Inf"} 1\n:b:hist_sum{} 0.5\n'
                        ":b:hist_count{} 1\n# TYPE :c:empty counter\n")


def test_latency_buckets_are_tf_servings():
    assert len(m.LATENCY_BUCKETS) == 33
    assert [m.format_double(b) for b in m.LATENCY_BUCKETS[:8]] == [
        "10", "18", "32.4", "58.32", "104.976", "188.957", "340.122", "612.22"]
    assert m.LATENCY_BUCKETS[-1] == pytest.approx(10 * 1.8 ** 32)
    assert m.format_double(m.LATENCY_BUCKETS[-1]).endswith("e+09")


def test_value_on_a_limit_goes_to_the_next_bucket():
    """TensorFlow's Histogram uses upper_bound: a sample equal to a limit is not 'le' it."""
    r = _registry_with("/h", m.HISTOGRAM, (), (10.0, 18.0))
    r.sample("/h", (), 10)
    assert ':h_bucket{le="10"} 0' in r.page() and ':h_bucket{le="18"} 1' in r.page()


def test_label_value_count_is_checked():
    r = _registry_with("/x", m.COUNTER, ("a", "b"))
    with pytest.raises(ValueError):
        r.counter("/x", ("only-one",))
