"""TF Serving's request/warmup metrics and the Prometheus page its exporter writes.

Hand-written because the page must read exactly as ``tensorflow_serving/util/prometheus_exporter.cc``
writes it: one ``# TYPE`` line per metric and no ``# HELP``, counters without a ``_total``
suffix, ``NAME{}`` for a scalar without labels, histogram buckets from TensorFlow's sampler
(a value lands in the first bucket whose limit is *greater* than it, last limit ``+Inf``), doubles
printed as ``absl::StrCat`` prints them (``%g``), only ``\\`` and ``"`` escaped in label values.
A generic client library adds ``# HELP`` lines and ``_total``/``_created`` samples.

Metric names, labels and buckets are those of ``servables/tensorflow/util.cc`` and
``saved_model_warmup_util.cc``. Callers record as TF Serving does:

- ``record_request`` after every REST request under ``/v1/`` (``http_server.cc``: api
  ``predict``/``classify``/``regress``, or ``""`` for GET status/metadata, entrypoint ``REST``)
  and after gRPC Predict/Classify/Regress (``prediction_service_impl.cc``: api ``Predict``,
  ``Classify``, ``Regress``, entrypoint ``GRPC``). TF Serving records neither for gRPC
  GetModelMetadata nor MultiInference. The latency is kept only when ``status == "OK"``.
- ``record_runtime`` around the session run of Predict/Classify/Regress (runtime ``TF1``).
- ``record_examples`` for each MultiInference request (``multi_inference.cc``).
- ``record_warmup`` once per warmup run; ``status`` is the status as ``Status::ToString()``
  prints it: ``"OK"`` or ``"INVALID_ARGUMENT: message"``.
"""
from __future__ import annotations

import bisect
import re
import threading

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"


def exponential_buckets(scale: float, growth: float, count: int) -> tuple[float, ...]:
    """``monitoring::Buckets::Exponential``: limits computed by repeated multiplication."""
    limits, bound = [], float(scale)
    for _ in range(count):
        limits.append(bound)
        bound *= growth
    return tuple(limits)


LATENCY_BUCKETS = exponential_buckets(10, 1.8, 33)  # microseconds, ~20 minutes
EXAMPLE_BUCKETS = exponential_buckets(1, 2, 15)


def metric_name(name: str) -> str:
    """``GetPrometheusMetricName``: every char outside [a-zA-Z0-9_] becomes ':'."""
    out = re.sub(r"[^a-zA-Z0-9_]", ":", name)
    return "_" + out if out[:1].isdigit() else out


def label_name(name: str) -> str:
    """``SanatizeLabelName``: every char outside [a-zA-Z0-9] becomes '_'."""
    out = re.sub(r"[^a-zA-Z0-9]", "_", name)
    return "_" + out if out[:1].isdigit() else out


def label_value(value: str) -> str:
    """``SanitizeLabelValue``: escape backslash and double quote (nothing else)."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def format_double(x: float) -> str:
    """``absl::StrCat(double)`` (SixDigits, i.e. ``%g``)."""
    return format(x, "g")


class Metric:
    """One metric: a descriptor and its cells keyed by label values."""

    def __init__(self, name: str, kind: str, labels: tuple[str, ...], buckets=()):
        self.name, self.kind, self.labels = name, kind, tuple(labels)
        self.buckets = tuple(buckets)
        self.cells: dict[tuple[str, ...], object] = {}

    def _key(self, values) -> tuple[str, ...]:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name} takes {len(self.labels)} label values, got {len(values)}")
        return tuple(str(v) for v in values)

    def increment(self, values, by: int = 1) -> None:
        key = self._key(values)
        self.cells[key] = self.cells.get(key, 0) + int(by)

    def add(self, values, value: float) -> None:
        """Histogram sample: bucket = first limit greater than value (``std::upper_bound``)."""
        key = self._key(values)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = [[0] * (len(self.buckets) + 1), 0.0]
        cell[0][bisect.bisect_right(self.buckets, float(value))] += 1
        cell[1] += float(value)

    def lines(self) -> list[str]:
        """The lines ``SerializeMetric`` writes (cells in label-value order, as TF's std::map)."""
        name = metric_name(self.name)
        kind = self.kind if self.kind in (COUNTER, GAUGE, HISTOGRAM) else "untyped"
        out = [f"# TYPE {name} {kind}"]
        for values in sorted(self.cells):
            labels = [f'{label_name(n)}="{label_value(v)}"' for n, v in zip(self.labels, values)]
            joined = ",".join(labels)
            if self.kind != HISTOGRAM:
                out.append(f"{name}{{{joined}}} {int(self.cells[values])}")
                continue
            counts, total = self.cells[values]
            prefix = f"{name}_bucket{{{joined}{',' if labels else ''}"
            cumulative = 0
            for i, count in enumerate(counts):
                cumulative += count
                limit = format_double(self.buckets[i]) if i < len(self.buckets) else "+Inf"
                out.append(f'{prefix}le="{limit}"}} {cumulative}')
            out.append(f"{name}_sum{{{joined}}} {format_double(total)}")
            out.append(f"{name}_count{{{joined}}} {cumulative}")
        return out


class Registry:
    """Metrics by their TensorFlow name; ``page()`` is ``PrometheusExporter::GeneratePage``."""

    def __init__(self):
        self._lock = threading.Lock()
        self._metrics: dict[str, Metric] = {}

    def define(self, name: str, kind: str, labels, buckets=()) -> Metric:
        with self._lock:
            m = self._metrics[name] = Metric(name, kind, tuple(labels), buckets)
            return m

    def counter(self, name: str, values, by: int = 1) -> None:
        with self._lock:
            self._metrics[name].increment(values, by)

    def sample(self, name: str, values, value: float) -> None:
        with self._lock:
            self._metrics[name].add(values, value)

    def first_int(self, name: str) -> int:
        """The int64 value of the metric's first point (cells in label order), 0 when it has none,
        is a histogram or does not exist: what ``ModelServiceImpl::GetMetrics`` reads."""
        with self._lock:
            m = self._metrics.get(name)
            if m is None or not m.cells or m.kind == HISTOGRAM:
                return 0
            return int(m.cells[min(m.cells)])

    def page(self) -> str:
        """All metrics sorted by name (the exporter walks a std::map), joined by newlines + one."""
        with self._lock:
            lines = [line for n in sorted(self._metrics) for line in self._metrics[n].lines()]
        return "\n".join(lines) + "\n"


REQUEST_COUNT = "/tensorflow/serving/request_count"
REQUEST_LATENCY = "/tensorflow/serving/request_latency"
RUNTIME_LATENCY = "/tensorflow/serving/runtime_latency"
EXAMPLE_COUNTS = "/tensorflow/serving/request_example_counts"
EXAMPLE_COUNT_TOTAL = "/tensorflow/serving/request_example_count_total"
WARMUP_LATENCY = "/tensorflow/serving/model_warmup_latency"
WARMUP_RECORDS = "/tensorflow/serving/model_warmup_records_read"


def serving_registry() -> Registry:
    """A registry holding TF Serving's metrics (util.cc, saved_model_warmup_util.cc)."""
    r = Registry()
    r.define(EXAMPLE_COUNTS, HISTOGRAM, ("model",), EXAMPLE_BUCKETS)
    r.define(EXAMPLE_COUNT_TOTAL, COUNTER, ("model",))
    r.define(REQUEST_COUNT, COUNTER, ("model_name", "status"))
    r.define(RUNTIME_LATENCY, HISTOGRAM, ("model_name", "API", "runtime"), LATENCY_BUCKETS)
    r.define(REQUEST_LATENCY, HISTOGRAM, ("model_name", "API", "entrypoint"), LATENCY_BUCKETS)
    r.define(WARMUP_LATENCY, HISTOGRAM, ("model_path", "status"), LATENCY_BUCKETS)
    r.define(WARMUP_RECORDS, COUNTER, ("model_path", "status"))
    return r


REGISTRY = serving_registry()  # process-wide, like TensorFlow's CollectionRegistry::Default()


def _micros(seconds: float) -> int:
    return max(0, int(seconds * 1_000_000))


def record_request(model_name: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
    """``RecordModelRequestCount`` always; ``RecordRequestLatency`` only for an OK request."""
    if status == "OK":
        REGISTRY.sample(REQUEST_LATENCY, (model_name, api, entrypoint), _micros(seconds))
    REGISTRY.counter(REQUEST_COUNT, (model_name, status))


def record_runtime(model_name: str, api: str, seconds: float, runtime: str = "TF1") -> None:
    """``RecordRuntimeLatency``: the session run alone."""
    REGISTRY.sample(RUNTIME_LATENCY, (model_name, api, runtime), _micros(seconds))


def record_examples(model_name: str, n: int) -> None:
    """``RecordRequestExampleCount``: the per-request histogram and the running total."""
    REGISTRY.sample(EXAMPLE_COUNTS, (model_name,), int(n))
    REGISTRY.counter(EXAMPLE_COUNT_TOTAL, (model_name,), int(n))


def record_warmup(model_path: str, status: str, seconds: float, records: int) -> None:
    """One warmup run of a version (``status``: "OK" or ``Status::ToString()`` of the failure)."""
    REGISTRY.sample(WARMUP_LATENCY, (model_path, status), _micros(seconds))
    REGISTRY.counter(WARMUP_RECORDS, (model_path, status), int(records))


def render() -> str:
    """The Prometheus page for this process."""
    return REGISTRY.page()
