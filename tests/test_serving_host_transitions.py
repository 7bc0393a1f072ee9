"""Version transitions, config reloads (file and gRPC) and failures on the real local server.

Every wait is a bounded poll; traffic loops are bounded in count and time and run against
127.0.0.1 only.
"""
from __future__ import annotations

import itertools
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import requests
from google.protobuf import text_format
from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tests.helpers import REPO, TF_SERVING_TESTDATA

HALF_PLUS_TWO_123 = TF_SERVING_TESTDATA / "saved_model_half_plus_two_cpu" / "00000123"


def publish(base: Path, model: str, version: int) -> Path:
    """Copy the test SavedModel as <base>/<model>/<version> (complete before it is visible)."""
    staging = base / model / f".incoming-{version}"
    shutil.copytree(HALF_PLUS_TWO_123, staging)
    final = base / model / str(version)
    staging.rename(final)
    return final


def model_config(base: Path, model: str, *, versions: list[int] | None = None,
                 labels: dict[str, int] | None = None, policy: str | None = None) -> str:
    if versions is not None:
        pol = "model_version_policy { specific { " + " ".join(f"versions: {v}" for v in versions) + " } }"
    else:
        pol = policy or ""
    lab = " ".join(f'version_labels {{ key: "{k}" value: {v} }}' for k, v in (labels or {}).items())
    return (f'model_config_list {{ config {{ name: "{model}" base_path: "{base / model}" '
            f'model_platform: "tensorflow" {pol} {lab} }} }}\n')


def served_version(srv, path: str) -> int | None:
    r = requests.get(f"{srv.rest_url}{path}/metadata", timeout=10)
    return int(r.json()["model_spec"]["version"]) if r.status_code == 200 else None


def wait_until(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout}s")


@pytest.fixture(scope="module")
def no_retry_server(tfserving_session_factory, tmp_path_factory):
    """One server (``--max_num_load_retries=0``: a failed load ends in END at once) for the tests
    of this module that load one broken version each: ``load_on`` serves a test's own model folder
    under a name of its own, so the paths in its errors are the test's own."""
    srv = tfserving_session_factory(tmp_path_factory.mktemp("no-retry"), extra_args=["--max_num_load_retries=0"])
    yield srv
    srv.stop()


_names = itertools.count(1)


def load_on(srv, base: Path, state: str) -> dict:
    """Serve ``<base>/m`` on ``srv`` as the only model of its config, under a name no test used
    before (loaded afresh); version 1's status entry once it reports ``state``, and ``model``:
    the name."""
    name = f"m{next(_names)}"
    srv.write_config(f'model_config_list {{ config {{ name: "{name}" base_path: "{base / "m"}" '
                     f'model_platform: "tensorflow" }} }}\n')
    return {**srv.wait_for_state(name, 1, state), "model": name}


class Traffic:
    """Clients that keep predicting (bounded in count and time) and count failed requests."""

    def __init__(self, url: str, paths: list[str], clients: int = 4, max_requests: int = 20000,
                 max_seconds: float = 120.0):
        self.url, self.paths = url, paths
        self.clients, self.max_requests, self.max_seconds = clients, max_requests, max_seconds
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, i: int) -> None:
        session = requests.Session()
        deadline = time.monotonic() + self.max_seconds
        n = 0
        while not self._stop.is_set() and time.monotonic() < deadline and n < self.max_requests // self.clients:
            path = self.paths[(n + i) % len(self.paths)]
            n += 1
            try:
                r = session.post(self.url + path, json={"instances": [2.0]}, timeout=10)
                good = r.status_code == 200 and r.json() == {"predictions": [3.0]}
                detail = f"{path}: {r.status_code} {r.text[:200]}"
            except requests.RequestException as exc:
                good, detail = False, f"{path}: {exc}"
            with self._lock:
                if good:
                    self.ok += 1
                else:
                    self.failures.append(detail)

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)


# -- reloads under traffic ------------------------------------------------------------------
def _serving_v1_as_stable(tfserving_factory, base: Path):
    """A server with model ``m`` version 1 published, AVAILABLE and labelled ``stable``."""
    publish(base, "m", 1)
    srv = tfserving_factory(base, model_config(base, "m", versions=[1]))
    srv.wait_for_state("m", 1, "AVAILABLE")
    srv.write_config(model_config(base, "m", versions=[1], labels={"stable": 1}))
    wait_until(lambda: served_version(srv, "/v1/models/m/labels/stable") == 1, what="label stable -> 1")
    return srv


def test_add_version_move_label_drop_version_without_one_failed_request(tfserving_factory, tmp_path):
    base = tmp_path / "serving"
    srv = _serving_v1_as_stable(tfserving_factory, base)

    with Traffic(srv.rest_url, ["/v1/models/m:predict", "/v1/models/m/labels/stable:predict"]) as traffic:
        # add version 2 (loaded before anything is unloaded)
        publish(base, "m", 2)
        srv.write_config(model_config(base, "m", versions=[1, 2], labels={"stable": 1}))
        srv.wait_for_state("m", 2, "AVAILABLE")
        assert served_version(srv, "/v1/models/m") == 2            # unversioned -> highest loaded
        assert served_version(srv, "/v1/models/m/labels/stable") == 1
        # move the label
        srv.write_config(model_config(base, "m", versions=[1, 2], labels={"stable": 2, "previous": 1}))
        wait_until(lambda: served_version(srv, "/v1/models/m/labels/stable") == 2, what="label stable -> 2")
        assert served_version(srv, "/v1/models/m/labels/previous") == 1
        # drop version 1
        srv.write_config(model_config(base, "m", versions=[2], labels={"stable": 2}))
        srv.wait_for_state("m", 1, "END")
        time.sleep(1.0)  # keep traffic running across the unload
    assert traffic.failures == []
    assert traffic.ok > 50, "the traffic loop did not run"
    states = srv.version_states("m")
    assert states == {1: "END", 2: "AVAILABLE"}                     # unloaded versions stay listed
    r = requests.post(f"{srv.rest_url}/v1/models/m/versions/1:predict", json={"instances": [1.0]}, timeout=30)
    assert r.status_code == 404


def test_label_on_unloaded_version_is_refused_and_old_labels_keep_working(tfserving_factory, tmp_path):
    base = tmp_path / "serving"
    srv = _serving_v1_as_stable(tfserving_factory, base)
    publish(base, "m", 2)
    with Traffic(srv.rest_url, ["/v1/models/m/labels/stable:predict"], clients=2) as traffic:
        # version 2 is on disk but not loaded (the policy still says specific 1): refused
        srv.write_config(model_config(base, "m", versions=[1, 2], labels={"stable": 2}))
        wait_until(lambda: "Request to assign label to version 2 of model m, which is not currently "
                           "available for inference" in srv.log(), what="refusal logged")
        time.sleep(2.5)  # more than two config polls: the refusal repeats, nothing changes
        assert served_version(srv, "/v1/models/m/labels/stable") == 1
        assert srv.version_states("m") == {1: "AVAILABLE"}          # the new policy was not applied
    assert traffic.failures == [] and traffic.ok > 10


# -- latest policy, broken versions, missing base paths --------------------------------------
def test_latest_policy_replaces_version_and_broken_version_ends_in_end(tfserving_factory, tmp_path):
    base = tmp_path / "serving"
    publish(base, "m", 1)
    srv = tfserving_factory(base, model_config(base, "m"), extra_args=["--max_num_load_retries=0"])
    srv.wait_for_state("m", 1, "AVAILABLE")
    with Traffic(srv.rest_url, ["/v1/models/m:predict"], clients=2) as traffic:
        publish(base, "m", 2)
        srv.wait_for_state("m", 2, "AVAILABLE")
        srv.wait_for_state("m", 1, "END")
        assert served_version(srv, "/v1/models/m") == 2
        # a broken version 3: truncated saved_model.pb
        staging = base / "m" / ".incoming-3"
        shutil.copytree(HALF_PLUS_TWO_123, staging)
        pb = staging / "saved_model.pb"
        pb.write_bytes(pb.read_bytes()[:100])
        staging.rename(base / "m" / "3")
        entry = srv.wait_for_state("m", 3, "END")
        time.sleep(2.5)  # several directory polls: version 3 is not loaded again
    assert traffic.failures == [] and traffic.ok > 10
    # TF Serving's C++ loader's words (ReadBinaryProto), which the deploy passes on; the Python
    # loader's "Cannot parse file b'...': Error parsing message ..." were the local server's own
    assert (entry["status"]["error_code"], entry["status"]["error_message"]) == \
        ("DATA_LOSS", f"Can't parse {base / 'm' / '3' / 'saved_model.pb'} as binary proto")
    assert srv.version_states("m") == {1: "END", 2: "AVAILABLE", 3: "END"}
    assert served_version(srv, "/v1/models/m") == 2
    assert srv.log().count("Loading servable version {name: m version: 3}") == 1


def test_a_graph_that_does_not_build_is_invalid_argument_whatever_its_node_names(no_retry_server, tmp_path):
    """TF Serving's loader hands the graph to ``session->Create``, whose graph constructor refuses
    a node with an unknown input as INVALID_ARGUMENT. The Python loader raises that as a
    ValueError, which the local server mapped by its text: UNKNOWN, or DATA_LOSS when the text held
    "parse" (a node named ``SparseToDense…``, ``ParseExample…``)."""
    from tensorflow.core.protobuf import saved_model_pb2

    base = tmp_path / "serving"
    staging = base / "m" / ".incoming-1"
    shutil.copytree(HALF_PLUS_TWO_123, staging)
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((staging / "saved_model.pb").read_bytes())
    node = proto.meta_graphs[0].graph_def.node.add()
    node.name, node.op = "SparseToDense_1", "Identity"
    node.input.append("no_such_node")
    node.attr["T"].type = 1
    (staging / "saved_model.pb").write_bytes(proto.SerializeToString())
    staging.rename(base / "m" / "1")
    entry = load_on(no_retry_server, base, "END")
    assert (entry["status"]["error_code"], entry["status"]["error_message"]) == \
        ("INVALID_ARGUMENT", "Node 'SparseToDense_1': Unknown input node 'no_such_node'")


def test_a_saved_model_pbtxt_that_is_not_utf8_is_data_loss_as_a_text_proto(no_retry_server, tmp_path):
    """ReadSavedModel reads ``saved_model.pbtxt`` (no .pb) with ReadTextProto: bytes that are not
    text fail the parse, DATA_LOSS ``Can't parse <path> as text proto``. The Python loader decodes
    the file as UTF-8 first; its UnicodeDecodeError came out as UNKNOWN ``UnicodeDecodeError: …``."""
    base = tmp_path / "serving"
    staging = base / "m" / ".incoming-1"
    shutil.copytree(HALF_PLUS_TWO_123, staging)
    (staging / "saved_model.pb").unlink()
    (staging / "saved_model.pbtxt").write_bytes(b"\xff\xfe saved_model_schema_version: 1\n")
    staging.rename(base / "m" / "1")
    entry = load_on(no_retry_server, base, "END")
    assert (entry["status"]["error_code"], entry["status"]["error_message"]) == \
        ("DATA_LOSS", f"Can't parse {base / 'm' / '1' / 'saved_model.pbtxt'} as text proto")


def test_an_empty_saved_model_pb_is_tensorflow_s_no_meta_graph_for_serve(no_retry_server, tmp_path):
    """A saved_model.pb cut to 0 bytes parses as an empty SavedModel; TensorFlow's
    FindMetaGraphDef then says NOT_FOUND ``Could not find meta graph def matching supplied tags:
    { serve }. …``. The local server gave the Python loader's words (``MetaGraphDef associated
    with tags 'serve' could not be found in SavedModel, with available tags '[]'. …``)."""
    base = tmp_path / "serving"
    staging = base / "m" / ".incoming-1"
    shutil.copytree(HALF_PLUS_TWO_123, staging)
    (staging / "saved_model.pb").write_bytes(b"")
    staging.rename(base / "m" / "1")
    entry = load_on(no_retry_server, base, "END")
    assert (entry["status"]["error_code"], entry["status"]["error_message"]) == \
        ("NOT_FOUND", "Could not find meta graph def matching supplied tags: { serve }. To inspect available "
                      "tag-sets in the SavedModel, please use the SavedModel CLI: `saved_model_cli`")


def staged_version(base: Path, version: int, change) -> Path:
    """A copy of the test SavedModel changed by ``change(folder)``, then made visible as
    ``<base>/m/<version>``."""
    staging = base / "m" / f".incoming-{version}"
    shutil.copytree(HALF_PLUS_TWO_123, staging)
    change(staging)
    final = base / "m" / str(version)
    staging.rename(final)
    return final


def change_graph(folder: Path, edit) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((folder / "saved_model.pb").read_bytes())
    edit(proto.meta_graphs[0].graph_def)
    (folder / "saved_model.pb").write_bytes(proto.SerializeToString())


def _available_but_uninitialized(srv, base: Path, edit) -> str:
    """Version 1 of ``<base>/m`` (edited by ``edit``) served on ``srv``: it loads AVAILABLE and OK,
    and a predict fails HTTP 400 ``Attempting to use uninitialized value …`` (nothing was
    restored); the name it is served under."""
    staged_version(base, 1, edit)
    entry = load_on(srv, base, "AVAILABLE")
    assert entry["status"]["error_code"] == "OK"
    r = requests.post(f"{srv.rest_url}/v1/models/{entry['model']}:predict", json={"instances": [1.0]}, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("Attempting to use uninitialized value "), r.text
    return entry["model"]


@pytest.mark.parametrize("removed", ["variables", "variables/variables.index"])
def test_a_version_without_variables_loads_and_its_requests_fail_on_uninitialized_values(
        no_retry_server, tmp_path, removed):
    """TensorFlow's RunRestore restores nothing when ``variables/variables.index`` does not exist
    ("The specified SavedModel has no variables; no checkpoints were restored") and the load
    succeeds: TF Serving makes the version AVAILABLE, and a request that reads a variable fails in
    the session run, FAILED_PRECONDITION (HTTP 400). The local server's Python loader refused the
    load, UNKNOWN ``ValueError: The passed save_path is not a valid checkpoint: …``."""
    base = tmp_path / "serving"

    def remove(folder: Path) -> None:
        target = folder / removed
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    srv = no_retry_server
    name = _available_but_uninitialized(srv, base, remove)
    metadata = requests.get(f"{srv.rest_url}/v1/models/{name}/metadata", timeout=10)
    assert metadata.status_code == 200 and metadata.json()["model_spec"]["version"] == "1"
    assert ("The specified SavedModel has no variables; no checkpoints were restored. File does not exist: "
            f"{base / 'm' / '1' / 'variables' / 'variables.index'}") in srv.log()


@pytest.mark.parametrize("export", ["tf2", "tf1"])
def test_a_version_without_its_variables_data_is_not_found_as_the_restore_op_says(
        no_retry_server, deploy_bundles, tmp_path, export):
    """TensorFlow's RunRestore runs the saver's restore op once; with ``variables.index`` there and
    the data shard gone, RestoreV2 fails NOT_FOUND ``<shard>; No such file or directory`` and TF
    Serving returns that. The local server restored with the Python ``Saver``, which on a
    NOT_FOUND reads the checkpoint again as an object-based one; for a TF2 export (what ``mlops
    train`` writes) that read failed too and its UNKNOWN replaced the restore's NOT_FOUND."""
    base = tmp_path / "serving"
    source = deploy_bundles.path("a") / "tfserving" if export == "tf2" else HALF_PLUS_TWO_123
    staging = base / "m" / ".incoming-1"
    shutil.copytree(source, staging)
    (shard,) = (staging / "variables").glob("variables.data-*")
    shard.unlink()
    staging.rename(base / "m" / "1")
    entry = load_on(no_retry_server, base, "END")
    assert entry["status"]["error_code"] == "NOT_FOUND", entry
    assert f"{base / 'm' / '1' / 'variables' / shard.name}; No such file or directory" in \
        entry["status"]["error_message"], entry


@pytest.mark.parametrize("damage", ["index", "shard"])
def test_a_corrupt_checkpoint_fails_with_the_restore_op_s_own_message(no_retry_server, tmp_path, damage):
    """TensorFlow's RunRestore runs the restore op through ``MakeCallable``/``RunCallable``
    (``RunOnce``), so TF Serving's status carries the op's status as the executor returns it: the
    kernel's message and `` [[{{node save/RestoreV2}}]]``. A garbage ``variables.index`` is
    DATA_LOSS ``not an sstable (bad magic number)``, a cut data shard OUT_OF_RANGE ``Read less
    bytes than requested``. The local server ran it through the Python ``Session.run``, whose text
    starts ``Graph execution error:`` / ``Detected at node 'save/RestoreV2' defined at …``."""
    base = tmp_path / "serving"

    def corrupt(folder: Path) -> None:
        if damage == "index":
            (folder / "variables" / "variables.index").write_bytes(b"garbage" * 10)
        else:
            (shard,) = (folder / "variables").glob("variables.data-*")
            shard.write_bytes(shard.read_bytes()[:3])

    staged_version(base, 1, corrupt)
    entry = load_on(no_retry_server, base, "END")
    code, message = {"index": ("DATA_LOSS", "not an sstable (bad magic number)"),
                     "shard": ("OUT_OF_RANGE", "Read less bytes than requested")}[damage]
    assert (entry["status"]["error_code"], entry["status"]["error_message"]) == (
        code, f"{message}\n\t [[{{{{node save/RestoreV2}}}}]]"), entry


def test_a_version_without_a_saver_def_loads_unrestored_as_tensorflow_s_restore_session(
        no_retry_server, tmp_path):
    """TensorFlow's RestoreSession runs RunRestore only when the meta graph has a ``saver_def``:
    without one (a hand-edited export) nothing is restored, the load succeeds and TF Serving makes
    the version AVAILABLE; a request that reads a variable fails in the session run,
    FAILED_PRECONDITION (HTTP 400) ``Attempting to use uninitialized value …``. The local server's
    Python loader built a default ``Saver`` (new ops in the graph) and restored the variables, so
    the version answered as if it had been restored."""
    base = tmp_path / "serving"

    def drop_saver_def(folder: Path) -> None:
        from tensorflow.core.protobuf import saved_model_pb2

        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((folder / "saved_model.pb").read_bytes())
        proto.meta_graphs[0].ClearField("saver_def")
        (folder / "saved_model.pb").write_bytes(proto.SerializeToString())

    _available_but_uninitialized(no_retry_server, base, drop_saver_def)


@pytest.mark.parametrize("damage", ["two_main_ops", "no_main_op", "init_signature_without_its_output"])
def test_an_init_op_that_cannot_be_named_is_failed_precondition_as_tensorflow_s_get_init_op(
        no_retry_server, tmp_path, damage):
    """TensorFlow's GetInitOp (after the restore): a ``saved_model_main_op`` (or
    ``legacy_init_op``) collection must name exactly one op, FAILED_PRECONDITION ``Expected exactly
    one main op in : <export dir>``; an ``__saved_model_init_op`` signature must have the output of
    that name, FAILED_PRECONDITION ``Could not find output __saved_model_init_op``. The Python
    loader raised a RuntimeError (UNKNOWN ``RuntimeError: Expected exactly one SavedModel init op.
    …``), or NOT_FOUND with its own words."""
    base = tmp_path / "serving"

    def edit_meta(folder: Path) -> None:
        from tensorflow.core.protobuf import saved_model_pb2

        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((folder / "saved_model.pb").read_bytes())
        meta = proto.meta_graphs[0]
        ops = meta.collection_def["saved_model_main_op"].node_list.value
        if damage == "two_main_ops":
            ops.append("group_deps")
        elif damage == "no_main_op":
            del ops[:]
        else:
            meta.signature_def["__saved_model_init_op"].outputs["init"].name = "group_deps"
        (folder / "saved_model.pb").write_bytes(proto.SerializeToString())

    final = staged_version(base, 1, edit_meta)
    entry = load_on(no_retry_server, base, "END")
    expected = ("Could not find output __saved_model_init_op" if damage == "init_signature_without_its_output"
                else f"Expected exactly one main op in : {final}")
    assert (entry["status"]["error_code"], entry["status"]["error_message"]) == ("FAILED_PRECONDITION", expected)


@pytest.mark.parametrize("damage, expected", [
    ("no_value", 'Saved model contains node "b/initial_value" which is a constant tensor but no value '
                 'has been provided'),
    ("unknown_shape", 'Saved model contains node "b/initial_value" (op "Const") which initializes from a '
                      'tensor with -1 elements'),
])
def test_a_const_without_a_usable_value_is_refused_as_tensorflow_validates_saved_tensors(
        no_retry_server, tmp_path, damage, expected):
    """TensorFlow's loader runs ValidateSavedTensors on the graph before ``session->Create``: a
    ``Const`` without a ``value`` attr, or a ``value`` tensor of unknown shape, is
    FAILED_PRECONDITION with its words. The local server's graph import refused the first as
    INVALID_ARGUMENT ``NodeDef missing attr 'value' …``."""
    base = tmp_path / "serving"

    def edit(graph_def) -> None:
        node = next(n for n in graph_def.node if n.name == "b/initial_value")
        if damage == "no_value":
            del node.attr["value"]
        else:
            del node.attr["value"].tensor.tensor_shape.dim[:]
            node.attr["value"].tensor.tensor_shape.unknown_rank = True

    staged_version(base, 1, lambda folder: change_graph(folder, edit))
    entry = load_on(no_retry_server, base, "END")
    assert (entry["status"]["error_code"], entry["status"]["error_message"]) == ("FAILED_PRECONDITION", expected)


@pytest.mark.parametrize("damage, expected", [
    ("recursive", "Function rec is self recursive and TensorFlow does not support this scenario."),
    # the nodes of a function are checked before its recursion, function by function
    ("recursive_after_const", 'Saved model contains node "c" which is a constant tensor but no value has '
                              'been provided'),
    ("const_after_recursive", "Function rec is self recursive and TensorFlow does not support this scenario."),
])
def test_a_self_recursive_function_is_refused_as_tensorflow_validates_saved_tensors(
        no_retry_server, tmp_path, damage, expected):
    """ValidateSavedTensors also refuses a function of the graph's library that calls itself
    (ValidateFunctionNotRecursive: FAILED_PRECONDITION ``Function <name> is self recursive and
    TensorFlow does not support this scenario.``), after that function's nodes were checked and
    before the next function's. The local server checked the nodes only: a version whose library
    holds such a function (that no signature calls) became AVAILABLE."""
    base = tmp_path / "serving"

    def add_function(graph_def, name: str, *, recursive: bool, const_without_value: bool) -> None:
        function = graph_def.library.function.add()
        function.signature.name = name
        if const_without_value:
            node = function.node_def.add()
            node.name, node.op = "c", "Const"
            node.attr["dtype"].type = 1
        if recursive:
            node = function.node_def.add()
            node.name, node.op = "call", name

    def edit(graph_def) -> None:
        if damage == "recursive":
            add_function(graph_def, "rec", recursive=True, const_without_value=False)
        elif damage == "recursive_after_const":
            add_function(graph_def, "bad", recursive=False, const_without_value=True)
            add_function(graph_def, "rec", recursive=True, const_without_value=False)
        else:
            add_function(graph_def, "rec", recursive=True, const_without_value=False)
            add_function(graph_def, "bad", recursive=False, const_without_value=True)

    staged_version(base, 1, lambda folder: change_graph(folder, edit))
    entry = load_on(no_retry_server, base, "END")
    assert (entry["status"]["error_code"], entry["status"]["error_message"]) == ("FAILED_PRECONDITION", expected)


def test_a_debug_info_file_that_does_not_parse_fails_the_load_as_data_loss(no_retry_server, tmp_path):
    """TensorFlow's LoadSavedModel reads ``debug/saved_model_debug_info.pb`` when it exists
    (ReadSavedModelDebugInfoIfPresent, with ReadBinaryProto): one that does not parse fails the
    load, DATA_LOSS ``Can't parse <path> as binary proto``. The Python loader never reads it, so
    the local server served the version."""
    base = tmp_path / "serving"

    def corrupt(folder: Path) -> None:
        (folder / "debug").mkdir()
        (folder / "debug" / "saved_model_debug_info.pb").write_bytes(b"\x0a\xff")

    final = staged_version(base, 1, corrupt)
    entry = load_on(no_retry_server, base, "END")
    assert (entry["status"]["error_code"], entry["status"]["error_message"]) == \
        ("DATA_LOSS", f"Can't parse {final / 'debug' / 'saved_model_debug_info.pb'} as binary proto")


def test_failed_load_is_retried_as_configured_then_ends(tfserving_factory, tmp_path):
    base = tmp_path / "serving"
    (base / "m" / "1").mkdir(parents=True)          # a version directory without a SavedModel
    srv = tfserving_factory(base, model_config(base, "m"),
                            extra_args=["--max_num_load_retries=2", "--load_retry_interval_micros=100000"])
    entry = srv.wait_for_state("m", 1, "END")
    assert (entry["status"]["error_code"], entry["status"]["error_message"]) == \
        ("NOT_FOUND", f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {base / 'm' / '1'}. "
                      f"Check that the directory exists and that you have the right permissions for accessing it.")
    assert srv.log().count("Retrying load of servable version {name: m version: 1}") == 2


def test_missing_base_path_is_an_error_for_that_model_only(tfserving_factory, tmp_path):
    base = tmp_path / "serving"
    publish(base, "good", 1)
    text = (f'model_config_list {{ config {{ name: "good" base_path: "{base / "good"}" model_platform: "tensorflow" }}'
            f' config {{ name: "late" base_path: "{base / "late"}" model_platform: "tensorflow" }} }}\n')
    srv = tfserving_factory(base, text)
    srv.wait_for_state("good", 1, "AVAILABLE")
    assert f"Could not find base path {base / 'late'} for servable late" in srv.log()
    r = requests.get(f"{srv.rest_url}/v1/models/late", timeout=10)
    assert r.status_code == 404
    publish(base, "late", 5)                       # the path appears later: it is picked up
    srv.wait_for_state("late", 5, "AVAILABLE")


# -- gRPC ----------------------------------------------------------------------------------
def _reload(stub, text: str, timeout: float = 120):
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    return stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config),
                                          timeout=timeout)


def test_grpc_reload_and_get_model_status(tfserving_factory, tmp_path):
    base = tmp_path / "serving"
    publish(base, "m", 1)
    publish(base, "m", 2)
    srv = tfserving_factory(base, config_poll_seconds=0)
    with grpc.insecure_channel(srv.grpc_address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        # A new model: ReloadConfig returns once it is loaded.
        resp = _reload(stub, model_config(base, "m", versions=[1]))
        assert resp.status.error_code == 0 and resp.status.error_message == ""
        assert resp.HasField("status")              # ToStatusProto(OK): present, empty (b"\n\x00")
        assert resp.SerializeToString() == b"\n\x00"
        assert srv.version_states("m") == {1: "AVAILABLE"}
        status = stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
            model_spec={"name": "m"}), timeout=10)
        (v,) = status.model_version_status
        assert (v.version, v.state) == (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)

        _reload(stub, model_config(base, "m", versions=[1, 2]))
        srv.wait_for_state("m", 2, "AVAILABLE")
        _reload(stub, model_config(base, "m", versions=[1, 2], labels={"stable": 2}))
        assert served_version(srv, "/v1/models/m/labels/stable") == 2   # effective when the call returns
        # rollback: move the label back, immediately effective
        _reload(stub, model_config(base, "m", versions=[1, 2], labels={"stable": 1}))
        assert served_version(srv, "/v1/models/m/labels/stable") == 1

        # a label on a version that is not loaded: refused, old labels stay
        with pytest.raises(grpc.RpcError) as e:
            _reload(stub, model_config(base, "m", versions=[1, 2], labels={"stable": 7}))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert e.value.details() == ("Request to assign label to version 7 of model m, which is not "
                                     "currently available for inference")
        assert served_version(srv, "/v1/models/m/labels/stable") == 1

        # only model_config_list is accepted
        with pytest.raises(grpc.RpcError) as e:
            stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # GetModelStatus errors
        with pytest.raises(grpc.RpcError) as e:
            stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "nope"}),
                                timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        req = get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "m"})
        req.model_spec.version.value = 9
        with pytest.raises(grpc.RpcError) as e:
            stub.GetModelStatus(req, timeout=10)
        assert e.value.details() == "Could not find version 9 of model m"

        # a new model whose base path is missing: error, but the rest of the config applies
        text = (model_config(base, "m", versions=[1, 2], labels={"stable": 1}).rstrip().rstrip("}")
                + f' config {{ name: "ghost" base_path: "{base / "ghost"}" model_platform: "tensorflow" }} }}\n')
        with pytest.raises(grpc.RpcError) as e:
            _reload(stub, text)
        assert e.value.code() == grpc.StatusCode.UNKNOWN
        assert "1 model(s) did not become available" in e.value.details()
        assert "Could not find base path" in e.value.details()
        assert srv.version_states("m") == {1: "AVAILABLE", 2: "AVAILABLE"}


def test_grpc_reload_and_polled_file_end_in_the_same_state(tfserving_factory, tmp_path):
    base = tmp_path / "serving"
    publish(base, "m", 1)
    publish(base, "m", 2)
    publish(base, "m", 3)
    # Each step is applied only after the previous one took effect on both servers (a label can
    # only be assigned to a loaded version, so writing the label config too early is refused).
    steps = [(model_config(base, "m", versions=[1, 2]),
              lambda s: s.version_states("m") == {1: "AVAILABLE", 2: "AVAILABLE"}),
             (model_config(base, "m", versions=[1, 2], labels={"stable": 1, "canary": 2}),
              lambda s: served_version(s, "/v1/models/m/labels/canary") == 2),
             (model_config(base, "m", versions=[2, 3], labels={"stable": 2}),
              lambda s: s.version_states("m") == {1: "END", 2: "AVAILABLE", 3: "AVAILABLE"})]
    by_file = tfserving_factory(base / "a", model_config(base, "m", versions=[1]))
    by_grpc = tfserving_factory(base / "b", model_config(base, "m", versions=[1]), config_poll_seconds=0)
    by_file.wait_for_state("m", 1, "AVAILABLE")
    by_grpc.wait_for_state("m", 1, "AVAILABLE")
    with grpc.insecure_channel(by_grpc.grpc_address) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        for i, (text, done) in enumerate(steps):
            by_file.write_config(text)
            _reload(stub, text)
            for srv in (by_file, by_grpc):
                wait_until(lambda s=srv: done(s), what=f"step {i} on {srv.rest_url}")
    final = {3: "AVAILABLE", 2: "AVAILABLE", 1: "END"}
    for srv in (by_file, by_grpc):
        wait_until(lambda s=srv: s.version_states("m") == final, what=f"final state on {srv.rest_url}")
        wait_until(lambda s=srv: served_version(s, "/v1/models/m/labels/stable") == 2, what="stable -> 2")
        r = requests.post(f"{srv.rest_url}/v1/models/m/labels/canary:predict", json={"instances": [1.0]},
                          timeout=30)
        assert r.status_code == 400 and "Unrecognized servable version label: canary" in r.json()["error"]
    assert by_file.status("m") == by_grpc.status("m")


# -- process behaviour ----------------------------------------------------------------------
def test_sigterm_stops_the_server_cleanly(tfserving_factory, tmp_path):
    srv = tfserving_factory(tmp_path / "serving")
    proc = srv.proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert "Stopped" in srv.log()


def _run_server(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving_host.local_server", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_help_says_production_uses_real_tensorflow_serving():
    r = _run_server("--help")
    assert r.returncode == 0
    assert "NOT TensorFlow Serving" in r.stdout
    assert "production uses real TensorFlow Serving" in " ".join(r.stdout.split())
    for flag in ("--rest_api_port", "--port", "--model_config_file", "--model_config_file_poll_wait_seconds",
                 "--file_system_poll_wait_seconds", "--max_num_load_retries", "--load_retry_interval_micros",
                 "--allow_version_labels_for_unavailable_models", "--model_name", "--model_base_path"):
        assert flag in r.stdout


def test_bad_start_gives_one_clear_error_line(tmp_path):
    r = _run_server("--rest_api_port=0")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: set --model_config_file=FILE or --model_base_path")
    bad = tmp_path / "models.config"
    bad.write_text("model_config_list { config { name: ")
    r = _run_server(f"--model_config_file={bad}", "--rest_api_port=0")
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Invalid protobuf file:") and str(bad) in last


def test_a_start_on_a_zero_byte_config_file_fails_as_tf_serving_s(tmp_path):
    """TF Serving cannot read a 0-byte models.config (its ``mmap`` of 0 bytes fails: "Failed to
    start server. Error: INVALID_ARGUMENT: <path>; Invalid argument"); the local server started
    on it serving nothing, so a setup that fails in production worked here."""
    empty = tmp_path / "models.config"
    empty.write_bytes(b"")
    r = _run_server(f"--model_config_file={empty}", "--rest_api_port=0")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: {empty}; Invalid argument; the file is empty, which TF Serving cannot read: write "
        "model_config_list {} into it for a server with no models, and start again")


def test_a_config_that_does_not_parse_fails_before_tensorflow_is_imported(tmp_path):
    """A models.config typo or a 0-byte file is refused before the imports that take seconds (the
    gRPC service pulls in TensorFlow): the person who started the server hears at once."""
    bad, empty = tmp_path / "bad.config", tmp_path / "empty.config"
    bad.write_text("model_config_list { config { name: ")
    empty.write_bytes(b"")
    for config in (bad, empty):
        code = ("import sys\nfrom serving_host import local_server\n"
                f"rc = local_server.main(['--model_config_file={config}', '--rest_api_port=0'])\n"
                "print(rc, 'tensorflow' in sys.modules)")
        r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.stdout.split() == ["1", "False"], r.stdout + r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("error: "), r.stderr


def test_single_model_flags(tfserving_factory, tmp_path):
    """``--model_name``/``--model_base_path`` serve one model, as tensorflow_model_server does."""
    base = tmp_path / "single"
    publish(base, "hp", 7)
    srv = tfserving_factory(tmp_path / "serving", grpc=False,
                            extra_args=["--model_config_file=", "--model_name=hp", f"--model_base_path={base / 'hp'}"])
    srv.wait_for_state("hp", 7, "AVAILABLE")
    r = requests.post(f"{srv.rest_url}/v1/models/hp:predict", json={"instances": [4.0]}, timeout=10)
    assert r.json() == {"predictions": [4.0]}


def test_labels_in_the_config_at_start_need_the_flag(tfserving_factory, tmp_path):
    """As in TF Serving: at start nothing is loaded, so a labelled config is refused..."""
    base = tmp_path / "serving"
    publish(base, "m", 1)
    (base / "models.config").write_text(model_config(base, "m", labels={"stable": 1}))
    r = _run_server(f"--model_config_file={base / 'models.config'}", "--rest_api_port=0")
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Request to assign label to version 1 of model m")
    assert "--allow_version_labels_for_unavailable_models" in last
    # ...unless new labels may point at versions that are not loaded yet
    srv = tfserving_factory(base, extra_args=["--allow_version_labels_for_unavailable_models"])
    srv.wait_for_state("m", 1, "AVAILABLE")
    assert served_version(srv, "/v1/models/m/labels/stable") == 1
