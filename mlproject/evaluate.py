"""Evaluate any registered version on the frozen held-out set of its data set.

The quality gate (registry) gets these numbers through the CLI for the candidate and for
production, so both are always measured on the same "known data".
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from mlops_common import faultpoint, stop, strict_json
from mlops_common.errors import ConfigError, DamagedModel, UnfitModel
from registry import artifacts
from registry import tags as version_tags
from registry.gate_stats import encode_correct, encode_labels

from . import metrics
from .constants import DATASETS, NUM_CLASSES
from .datasets import Arrays, check_name, fingerprint, load_partition


@dataclass
class Evaluation:
    """Metrics of one model on one frozen held-out set (plain data; see docs/architecture.md)."""

    model_uri: str
    dataset: str
    heldout_fingerprint: str
    n: int
    accuracy: float
    loss: float
    per_class_accuracy: dict[str, float]
    per_class_count: dict[str, int]
    confusion: list[list[int]] = dataclasses.field(default_factory=list)  # [true][predicted] counts
    non_probability_outputs: int = 0  # images whose outputs are not class probabilities (NaN, logits)
    # one bit per held-out example in held-out order, 1 = answered right (base64,
    # registry.gate_stats.encode_correct): the gate pairs two versions' answers on the same examples
    correct_bits: str = ""
    # the true class of each held-out example in held-out order, one decimal digit each
    # (registry.gate_stats.encode_labels): with correct_bits, the gate pairs the answers per class
    heldout_labels: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def heldout_json(self) -> str:
        """``evaluation/heldout.json`` of the run (training's, the evaluate entry point's): strict
        JSON, a NaN loss (a model answering NaN) as null, which the MLflow UI and jq read; the
        run's metrics keep the NaN."""
        return strict_json.dumps(self.to_dict(), indent=2)

    def run_metrics(self) -> dict[str, float]:
        """The run-metric names of the contract: heldout_accuracy, heldout_loss, ..._class_<k>."""
        out = {"heldout_accuracy": self.accuracy, "heldout_loss": self.loss}
        out.update({f"heldout_accuracy_class_{k}": v for k, v in self.per_class_accuracy.items()})
        return out


def evaluation_of(probs: np.ndarray, heldout: Arrays, *, model_uri: str, dataset: str) -> Evaluation:
    """Build an Evaluation from class probabilities on the held-out set (pure). The confusion
    matrix travels with it so the gate report can show candidate and production side by side."""
    s = metrics.summarize(probs, heldout.labels, NUM_CLASSES)
    predicted = probs.argmax(axis=1)
    cm = metrics.confusion(heldout.labels, predicted, NUM_CLASSES)
    return Evaluation(model_uri=model_uri, dataset=dataset, heldout_fingerprint=fingerprint(heldout),
                      n=len(heldout), accuracy=s["accuracy"], loss=s["loss"],
                      per_class_accuracy=s["per_class_accuracy"], per_class_count=s["per_class_count"],
                      confusion=cm.tolist(), non_probability_outputs=s["non_probability_outputs"],
                      correct_bits=encode_correct(predicted == heldout.labels),
                      heldout_labels=encode_labels(heldout.labels))


def evaluate_model(model, *, model_uri: str, dataset: str) -> Evaluation:
    """Run a Keras ``model`` on the frozen held-out set of ``dataset``."""
    from .model import predict

    heldout = load_partition(check_name(dataset)).heldout
    return evaluation_of(predict(model, heldout.images), heldout, model_uri=model_uri, dataset=dataset)


def evaluate_version(model_name: str, version: int, *, dataset: str | None = None,
                     unchanged: str = "Nothing was evaluated") -> Evaluation:
    """Evaluate registered version ``version`` of ``model_name`` on the frozen held-out set.

    ``dataset`` None -> the version's ``dataset`` tag. The logged model's files are checked against
    the hashes recorded at registration before it is loaded (``registry.bundle_hashes.check_model``:
    one line naming the file when the store holds others now; ``unchanged`` ends it, what did not
    happen); a version registered without them is scored unchecked, with a warning.
    """
    from registry import bundle_hashes, versions


    info = versions.get_version(model_name, version)   # one clear line for unknown model / version
    name = dataset or version_tags.read(info.tags, version_tags.DATASET)
    if not name:
        raise ConfigError(f"version {version} of '{model_name}' has no dataset tag (mlproject's registration "
                          f"sets it): set the version's tag dataset=digits or dataset=fashion_mnist in the "
                          f"MLflow UI, or name the held-out set with `mlops evaluate --dataset`")
    if dataset is None and name not in DATASETS:     # "unknown data set": not the word the gate's user typed
        raise ConfigError(f"version {version} of '{model_name}' has the dataset tag '{name}', which is none of "
                          f"this project's data sets ({', '.join(DATASETS)}): set the version's tag to the one it "
                          f"was trained on in the MLflow UI, or name the held-out set with `mlops evaluate --dataset`")
    check_name(name)
    uri = f"models:/{model_name}/{info.version}"
    model = load_checked(uri, f"version {version} of '{model_name}'", name,
                         damaged="register a new version with `mlops train` (or `mlops retrain`)",
                         other_shape="evaluate it on the data set it was trained on (`mlops evaluate "
                                     "--dataset`); the gate compares versions of one data set only",
                         verify=lambda folder: bundle_hashes.check_model(model_name, info.version, folder,
                                                                         unchanged=unchanged))
    return evaluate_model(model, model_uri=uri, dataset=name)


def load_checked(uri: str, what: str, dataset: str, *, damaged: str, other_shape: str, verify=None):
    """The Keras model behind ``uri`` (``what`` names it in messages), taking ``dataset``'s images,
    or one line: a logged model that is missing or damaged (``damaged``: what to do), or one that
    takes images of another shape (``other_shape``: what to do). Both were tracebacks once.
    ``verify(folder)``: called with the downloaded model's folder before it is loaded (raises to
    refuse it: files that are not the ones registered).

    TensorFlow (~5 s to import) is imported only once the downloaded model's MLmodel file reads and
    names a TensorFlow flavor: a missing or damaged model is refused without it."""
    import tempfile

    from mlops_common import paths
    from registry import versions
    from registry.client import mlflow_errors, tracking_client

    from .datasets import image_shape

    with paths.full_disk_is_one_line(f"{what} cannot be loaded", tempfile.gettempdir(),   # cannot make the folder
                                     tail="the version itself is not at fault"):
        into_dir = tempfile.TemporaryDirectory(prefix="mlops-model-")
    with mlflow_errors(f"loading {uri}"), into_dir as into:
        tracking_client()   # MLflow's own client reads the registry we read (not a stray MLFLOW_REGISTRY_URI)
        with _damaged_is_one_line(what, damaged, into):
            # into a folder removed at once (the model is in memory): without dst_path MLflow left
            # a copy of the model in /tmp at every load, two per gate. Downloaded, checked, then
            # loaded from there (a local path is read in place), so what is scored is what was checked
            local = versions.download_logged_model(uri, into)
            faultpoint.reached("evaluate:downloaded")      # test hook, inert unless set
            if verify is not None:
                verify(local)       # a UserError: none of the handlers below
            _tensorflow_flavor(local)
        model = _load_keras(local, what, damaged, into)
    # UnfitModel: its ``problem`` without the advice, which is for a candidate (the gate's
    # production is moved, not registered again nor evaluated on another data set)
    shape = tuple(model.input_shape[1:])
    if shape != image_shape(dataset):
        problem = f"{what} takes images of shape {shape}, but data set '{dataset}' has {image_shape(dataset)}"
        raise UnfitModel(f"{problem}; {other_shape}", problem=problem)
    out = tuple(model.output_shape[1:]) if isinstance(model.output_shape, tuple) else None
    if out != (NUM_CLASSES,):       # retraining it failed mid-run, or registered a 12-class model
        problem = (f"{what} answers with shape {out} per image, not one probability for each of data set "
                   f"'{dataset}''s {NUM_CLASSES} classes, so it is not one of this project's classifiers")
        raise UnfitModel(f"{problem}; {damaged}", problem=problem)
    return model


def _tensorflow_flavor(folder) -> dict:
    """The first steps of ``mlflow.tensorflow.load_model`` (its MLmodel file read, its ``keras`` or
    ``tensorflow`` flavor looked up), raising what it raises, without importing TensorFlow."""
    from pathlib import Path

    from mlflow.models import Model

    flavors = Model.load(str(Path(folder) / "MLmodel")).flavors
    return flavors["keras"] if "keras" in flavors else flavors["tensorflow"]


def _load_keras(folder, what: str, damaged: str, into: str):
    """The Keras model in the downloaded ``folder``, loaded by MLflow's TensorFlow flavor."""
    from .model import tf_quiet

    tf_quiet()
    import mlflow.tensorflow

    # a signal: raised after TensorFlow's C++, not inside it
    with _damaged_is_one_line(what, damaged, into), stop.deferred():
        return mlflow.tensorflow.load_model(str(folder))


@contextlib.contextmanager
def _damaged_is_one_line(what: str, damaged: str, into: str):
    """MLflow's and Keras's errors from reading a downloaded model as one ``DamagedModel`` line
    (``damaged``: what to do); the server's answers, lost connections and a full disk keep their own."""
    import tempfile

    import yaml
    from mlflow.exceptions import MlflowException, RestException

    from mlops_common import paths

    try:
        yield
    except RestException:
        raise               # the server's answer: mlflow_errors says it
    # KeyError: logged with another flavor; AttributeError, TypeError, YAMLError: an MLmodel
    # file that is not the YAML mapping MLflow expects (garbage, empty, cut off)
    except (MlflowException, OSError, ValueError, KeyError, AttributeError, TypeError, yaml.YAMLError) as exc:
        if paths.disk_full(exc):     # not the model's fault: "damaged; register a new version" sent people astray
            raise ConfigError(f"{what} cannot be loaded: no space left on the disk to download it into "
                              f"({tempfile.gettempdir()}, TMPDIR); free space there and rerun (the version "
                              f"itself is not at fault)") from None
        first = (str(getattr(exc, "message", exc)).splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, KeyError):
            first = f"its MLmodel has no {exc} flavor"
        elif isinstance(exc, (AttributeError, TypeError, yaml.YAMLError)) and not _mlmodel_parses(into):
            first = f"its MLmodel file is not readable ({type(exc).__name__})"
        if "Connection" in first or "Max retries exceeded" in first:
            raise
        problem = (f"{what} cannot be loaded as an MLflow TensorFlow model ({_without_temp_paths(first)}): "
                   f"its logged model is missing or damaged")
        raise DamagedModel(f"{problem}; {damaged}", problem=problem) from None


def _mlmodel_parses(folder: str) -> bool:
    """Whether the MLmodel file downloaded into ``folder`` reads as MLflow's model description
    (then an AttributeError or TypeError came from elsewhere, e.g. Keras reading the model)."""
    from pathlib import Path

    from mlflow.models import Model

    found = next(Path(folder).rglob("MLmodel"), None)
    if found is None:
        return False
    try:
        Model.load(str(found))
    except Exception:  # noqa: BLE001 - any failure to read it means it is not readable
        return False
    return True


def _without_temp_paths(text: str) -> str:
    """MLflow names the temporary folder it downloaded into, deleted by the time anyone reads it."""
    import re
    import tempfile

    return re.sub(re.escape(tempfile.gettempdir()) + r"/[^\s\"']*/", "", text)


def log_to_active_project_run(evaluation: Evaluation) -> str | None:
    """Under ``mlflow run -e evaluate`` (MLFLOW_RUN_ID set), record the evaluation in that run."""
    from mlops_common import settings

    run_id = settings.env("MLFLOW_RUN_ID")
    if not run_id:
        return None
    from mlflow.entities import Metric, RunTag

    from registry.client import mlflow_errors, tracking_client

    from .tracking import evaluate_run_name

    now = int(time.time() * 1000)
    with mlflow_errors(f"logging the evaluation into run {run_id}"):
        client = tracking_client()
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in evaluation.run_metrics().items()],
                         tags=[RunTag("evaluated_model_uri", evaluation.model_uri),
                               RunTag("dataset.name", evaluation.dataset),
                               # named like the training runs beside it, not MLflow's random name
                               RunTag("mlflow.runName", evaluate_run_name(evaluation.model_uri,
                                                                          evaluation.dataset))])
        client.log_text(run_id, evaluation.heldout_json(), artifacts.HELDOUT)
    return run_id
