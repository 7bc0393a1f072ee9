"""Train and retrain: one MLflow run per call, then a new registered version.

Order matters: settings, the ``production`` alias and all data (base and incoming batches) are
read and validated *before* a run starts, so bad input leaves nothing behind - no run, no
version. Inside the run: per-epoch metrics, held-out evaluation, plots, the MLflow model, the
TF-Serving SavedModel and the golden smoke set. Registration goes through
``registry.register.register_version``.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlops_common import lineage, log, paths, stop
from mlops_common.errors import ConfigError, RefusedError, UserError, reworded
from registry import artifacts
from registry import tags as T

from . import export, tracking, validation
from .batches import Batch, check_location, read_batches
from .constants import (
    DATASETS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_DATASET,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_SEED,
    GOLDEN_SIZE,
    IMAGE_SIZE,
    NUM_CLASSES,
)
from .datasets import Arrays, check_name, concat, fingerprint, image_shape, load_partition, train_validation_split
from .evaluate import Evaluation, evaluation_of

_log = log.get("train")

DATA_SOURCES = {"digits": "sklearn.datasets.load_digits",
                "fashion_mnist": "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"}


@dataclass(frozen=True)
class TrainParams:
    """Hyper-parameters of one run. ``dataset`` None: digits, or production's data set on retrain."""

    dataset: str | None = None
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    learning_rate: float = DEFAULT_LEARNING_RATE
    seed: int = DEFAULT_SEED

    def checked(self) -> "TrainParams":
        if self.dataset is not None:
            check_name(self.dataset)
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if not 1 <= self.batch_size <= 2**31 - 1:       # TensorFlow's int32 batch size (else a traceback)
            raise ConfigError(f"--batch-size must be between 1 and 2147483647 (2**31 - 1), got {self.batch_size}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"--learning-rate must be a positive number, got {self.learning_rate}")
        import numpy as np

        with np.errstate(over="ignore"):
            as_float32 = float(np.float32(self.learning_rate))
        if as_float32 == 0.0:     # the optimizer's float32: no step at all
            raise ConfigError(f"--learning-rate {self.learning_rate} is 0 in float32, which the optimizer uses "
                              f"(nothing would be learned); use a larger one")
        if not math.isfinite(as_float32):     # past float32's 3.4e38: an infinite step, a FAILED run
            raise ConfigError(f"--learning-rate {self.learning_rate} is infinite in float32, which the optimizer "
                              f"uses (training would diverge at once); use a smaller one (default "
                              f"{DEFAULT_LEARNING_RATE:g})")
        if not 0 <= self.seed <= 2**32 - 1:
            raise ConfigError(f"--seed must be between 0 and 4294967295 (2**32 - 1), got {self.seed}")
        return self


@dataclass(frozen=True)
class TrainingData:
    """Everything a run learns from and is judged on, already validated."""

    dataset: str
    base: Arrays
    heldout: Arrays
    incoming: tuple[Batch, ...] = ()
    incoming_location: str | None = None
    combined: Arrays = field(init=False)
    fingerprint: str = field(init=False)

    def __post_init__(self):
        combined = concat(self.base, *(b.data for b in self.incoming)) if self.incoming else self.base
        object.__setattr__(self, "combined", combined)
        object.__setattr__(self, "fingerprint", fingerprint(combined))

    @property
    def n_incoming(self) -> int:
        return sum(len(b.data) for b in self.incoming)


@dataclass
class RunResult:
    """What one training run produced (before registration)."""

    run_id: str
    experiment_id: str
    model_uri: str                 # the logged MLflow model (models:/m-...)
    evaluation: Evaluation
    history: dict[str, list[float]]
    data: TrainingData
    params: TrainParams
    retrained_from: str | None = None
    bundle_files: dict[str, str] = field(default_factory=dict)   # sha256 of what tfserving/ and golden/ hold
    model_files: dict[str, str] = field(default_factory=dict)    # ... and of the logged model's files

    def metrics(self) -> dict[str, float]:
        last = {k: v[-1] for k, v in self.history.items() if v}
        return {**last, "heldout_accuracy": self.evaluation.accuracy, "heldout_loss": self.evaluation.loss}


def prepare_data(dataset: str, incoming: str | None = None) -> TrainingData:
    """Load the frozen partition and read + validate incoming batches (before any run starts).
    A local ``incoming`` is recorded absolute: a relative one said nothing of where the data was
    (and ``mlflow run`` resolves it against the project, not where it was typed); and as text
    MLflow can hold: a path's bytes that are not UTF-8 (a Latin-1 ``é``) as ``\\xNN``, which was
    MLflow's UnicodeEncodeError traceback as the run was created."""
    import os

    from .s3 import is_s3

    if incoming:
        check_location(incoming)        # before a URL is made a local path below
    if incoming and not is_s3(incoming) and not (expanded := os.path.expanduser(incoming)).startswith("~"):
        incoming = os.path.abspath(expanded)     # "~nosuchuser/...": left for read_batches to name
    part = load_partition(check_name(dataset))
    validation.check(f"the {dataset} base set", part.base.images, part.base.labels,
                     image_size=IMAGE_SIZE[dataset])
    try:
        batches = tuple(read_batches(incoming, dataset)) if incoming else ()
    except validation.DataError as exc:
        raise validation.DataError(f"{exc.message} (nothing was trained or registered)") from None
    for b in batches:
        _log.info("incoming batch %s: %d examples (valid)", b.source, len(b.data))
    try:
        return TrainingData(dataset, part.base, part.heldout, batches,
                            os.fsencode(incoming).decode("utf-8", "backslashreplace") if incoming else None)
    except MemoryError:     # each batch fit, all of them joined with the base set do not: was a traceback
        raise validation.DataError(
            f"the incoming batches at {incoming} ({sum(len(b.data) for b in batches)} examples) and the {dataset} "
            f"base set are too large to hold in this machine's memory together (a retrain loads them whole); "
            f"retrain on fewer batches at a time (nothing was trained or registered)") from None


def _load_start_model(uri: str, dataset: str):
    """The Keras model behind ``uri``, checked against the data set and, for a registered version
    (``models:/<name>/<n>``), against the files recorded when it was registered: a retrain must not
    start from weights rewritten in the artifact store since (the gate checks the new version's own
    files, not the ones it started from)."""
    from registry import bundle_hashes

    from .evaluate import load_checked

    registered = re.fullmatch(r"models:/(.+)/(\d+)", uri)
    verify = None
    if registered:
        def verify(folder):
            bundle_hashes.check_model(registered.group(1), int(registered.group(2)), folder,
                                      unchanged="Nothing was trained or registered")
    return load_checked(uri, uri, dataset, damaged="retrain with --from-scratch, or promote a version that loads",
                        other_shape="retrain with --from-scratch or the matching --dataset", verify=verify)


def fit_model(params: TrainParams, data: TrainingData, *, start_model=None, on_epoch=None, stream=None):
    """Seed, build (or continue ``start_model`` with a fresh optimizer) and fit on ``data``.

    No MLflow here: ``run_training`` logs around it, ``calibrate`` uses it bare.
    """
    from .model import build_model, compile_model, first_non_finite, fit, seed_everything

    seed_everything(params.seed)
    if start_model is None:
        model = build_model(image_shape(data.dataset), NUM_CLASSES, params.learning_rate)
    else:
        model = start_model
        compile_model(model, params.learning_rate)
    train, val = train_validation_split(data.combined, params.seed)
    history = fit(model, train, val, epochs=params.epochs, batch_size=params.batch_size,
                  seed=params.seed, on_epoch=on_epoch, stream=stream)
    diverged = first_non_finite(history)
    if diverged is not None:
        epoch, name, value = diverged
        raise ConfigError(f"training diverged: {name} became {value} at epoch {epoch + 1}/{params.epochs} "
                          f"with --learning-rate {params.learning_rate:g}; nothing was registered; "
                          f"train again with a lower --learning-rate (default {DEFAULT_LEARNING_RATE:g})")
    return model, history


def dataset_digest(fingerprint_hex: str, source: str) -> str:
    """The training input's MLflow digest (at most 36 characters; the full sha256 is in params and
    tags). MLflow keeps one dataset per experiment, name and digest: the same examples read from
    another place got the first place as their source, so the digest of data read from a
    location other than the bundled set also depends on where (pure)."""
    import hashlib

    if source in DATA_SOURCES.values():
        return fingerprint_hex[:32]
    return fingerprint_hex[:24] + hashlib.sha256(source.encode()).hexdigest()[:8]


def _log_data_inputs(data: TrainingData) -> None:
    import warnings

    import mlflow

    source = data.incoming_location or DATA_SOURCES[data.dataset]
    name = data.dataset + ("+incoming" if data.incoming else "")
    with warnings.catch_warnings():  # "source can be interpreted in multiple ways": it is a label
        warnings.simplefilter("ignore", UserWarning)
        train_ds = mlflow.data.from_numpy(data.combined.images, targets=data.combined.labels,
                                          source=source, name=name, digest=dataset_digest(data.fingerprint, source))
        heldout_ds = mlflow.data.from_numpy(data.heldout.images, targets=data.heldout.labels,
                                            source=DATA_SOURCES[data.dataset], name=f"{data.dataset}-heldout",
                                            digest=fingerprint(data.heldout)[:32])
    mlflow.log_input(train_ds, context="training")
    mlflow.log_input(heldout_ds, context="evaluation")


def _log_artifacts(model, data: TrainingData, history: dict, evaluation: Evaluation, probs) -> dict[str, str]:
    """Plots, evaluation, TF-Serving SavedModel and golden set of the current run; returns the
    sha256 of every file logged under ``tfserving/`` and ``golden/`` (registration records them:
    ``registry.bundle_hashes``)."""
    import json

    import mlflow

    from registry import bundle_hashes

    from . import metrics, plots

    mlflow.log_figure(plots.training_curves(history), "plots/training_curves.png")
    cm = metrics.confusion(data.heldout.labels, probs.argmax(axis=1), NUM_CLASSES)
    mlflow.log_figure(plots.confusion_matrix_figure(
        cm, f"{data.dataset} held-out (n={len(data.heldout)}, acc={evaluation.accuracy:.3f})"),
        "plots/confusion_matrix.png")
    mlflow.log_text(evaluation.heldout_json(), artifacts.HELDOUT)
    with tempfile.TemporaryDirectory(prefix="mlops-export-") as tmp:
        saved = export.export_saved_model(model, Path(tmp) / artifacts.TFSERVING)
        golden = export.golden_set(saved, data.heldout.images[:GOLDEN_SIZE])
        export.write_warmup_requests(saved, golden[artifacts.golden_file("request")])   # TF Serving warms every load
        (Path(tmp) / artifacts.GOLDEN).mkdir()
        for name, doc in golden.items():
            (Path(tmp) / artifacts.GOLDEN / name).write_text(json.dumps(doc) + "\n")
        files = bundle_hashes.tree_files(tmp)
        mlflow.log_artifacts(str(saved), artifacts.TFSERVING)
        mlflow.log_artifacts(str(Path(tmp) / artifacts.GOLDEN), artifacts.GOLDEN)
    return files


def _log_model(model, data: TrainingData, step: int):
    """Log the MLflow model at ``step`` (the last epoch's): MLflow 3 links a logged model to the
    run's metrics at the step it is logged at, so at step 0 the experiment's Models tab and the
    model's page showed epoch 1's loss and accuracy, not those of the weights it holds."""
    import keras
    import mlflow
    import mlflow.tensorflow
    import tensorflow as tf
    from mlflow.models import infer_signature

    from .model import predict

    example = data.heldout.images[:2]
    signature = infer_signature(example, predict(model, example))
    # MLflow checks the input example by reloading the model as pyfunc and predicting it, and its
    # Keras wrapper calls predict() without verbose=0: a colour progress bar on stdout. Keras'
    # non-interactive logging sends it to absl's INFO instead (not shown); the check itself runs,
    # and its failure is still MLflow's warning.
    interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        return mlflow.tensorflow.log_model(
            model, name="model", signature=signature, input_example=example, step=step,
            # Explicit requirements: skips MLflow's slow requirement inference (it reloads the model).
            pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"])
    finally:
        if interactive:
            keras.config.enable_interactive_logging()


def _logged_model_files(model_uri: str) -> dict[str, str]:
    """The sha256 of every file of the logged model ``model_uri``, read back from the store right
    after logging (MLflow writes and uploads them itself): registration records them, and the gate
    and ``mlops evaluate`` check the model they score against them (``registry.bundle_hashes``)."""
    from registry import bundle_hashes, versions

    with tempfile.TemporaryDirectory(prefix="mlops-logged-model-") as tmp:
        try:
            folder = versions.download_logged_model(model_uri, tmp)
        except Exception as exc:    # MLflow's "failures occurred while downloading" did not say the disk is full
            if not paths.disk_full(exc):
                raise
            raise _no_space(f"downloading the logged model back into {tmp}") from None
        return bundle_hashes.model_files(folder)


def run_identity(params: TrainParams, data: TrainingData, n_validation: int, *,
                 retrained_from: str | None = None, parent_run_id: str | None = None) -> tuple[dict, dict]:
    """Params and tags of a training run (pure): retrain-only params (``incoming``,
    ``retrained_from``, ``n_incoming``) are absent from a base training, not ``unknown``; the
    lineage (kind, start version and its run, incoming data) is in ``mlops.*`` tags."""
    run_params = {"dataset": data.dataset, "epochs": params.epochs, "batch_size": params.batch_size,
                  "learning_rate": params.learning_rate, "seed": params.seed, "n_base": len(data.base),
                  "n_train": len(data.combined), "n_validation": n_validation,
                  "fingerprint": data.fingerprint}
    tags = {**lineage.lineage_tags(), "dataset.name": data.dataset, "dataset.fingerprint": data.fingerprint,
            "mlops.kind": "retrain" if retrained_from is not None else "train",
            "mlflow.note.content": tracking.run_note(
                data.dataset, len(data.base), data.n_incoming, retrained_from=retrained_from,
                incoming=data.incoming_location, parent_run_id=parent_run_id)}
    if retrained_from is not None:
        run_params.update(incoming=data.incoming_location or "", retrained_from=retrained_from,
                          n_incoming=data.n_incoming)
        tags["mlops.retrained_from"] = retrained_from
        if data.incoming_location:
            tags["mlops.incoming"] = data.incoming_location
        if parent_run_id:
            tags["mlops.parent_run_id"] = parent_run_id
    return run_params, tags


def run_training(params: TrainParams, data: TrainingData, *, model_name: str,
                 start_from: str | None = None, retrained_from: str | None = None,
                 parent_run_id: str | None = None) -> RunResult:
    """Train on ``data`` (from ``start_from`` weights if given) inside one MLflow run, named by
    ``tracking.run_name`` (``train digits``, ``retrain v2 + batch-001 (good)``).

    Under ``mlflow run`` (MLFLOW_RUN_ID set) this logs into that run (and renames it). A full
    disk is one line (the run is FAILED, nothing registered), not a traceback. A stop asked
    while MLflow ended the finished run is left for the caller to raise (``_register_kept``).
    """
    from registry.client import mlflow_errors, tracking_client

    client = tracking_client()
    with mlflow_errors("choosing the MLflow experiment"):
        tracking.use_experiment(model_name)
    start_model = _load_start_model(start_from, data.dataset) if start_from else None
    n_val = len(train_validation_split(data.combined, params.seed)[1])
    run_params, tags = run_identity(params, data, n_val, retrained_from=retrained_from,
                                    parent_run_id=parent_run_id)
    name = tracking.run_name(data.dataset, retrained_from=retrained_from, incoming=data.incoming_location)

    import mlflow

    from .model import predict

    # the full-disk handler outermost: MLflow has ended the run FAILED by the time it speaks
    with _full_disk_is_one_line(), mlflow_errors("logging the training run"), _training_run(name) as run:
        run_id = run.info.run_id
        _log.info("MLflow run '%s' %s: %s", name, run_id, tracking.run_url(run.info.experiment_id, run_id))
        tracking.log_new_params(client, run_id, run_params)
        mlflow.set_tags(tags)
        _log_data_inputs(data)
        _log.info("training on %d examples (%d base + %d incoming; %d of them for validation)",
                  len(data.combined), len(data.base), data.n_incoming, n_val)
        model, history = fit_model(params, data, start_model=start_model,
                                   on_epoch=lambda e, logs: mlflow.log_metrics(logs, step=e))
        _log.info("logging the model, the TF-Serving SavedModel and the golden set")
        info = _log_model(model, data, step=len(history["loss"]) - 1)
        model_files = _logged_model_files(info.model_uri)
        probs = predict(model, data.heldout.images)
        evaluation = evaluation_of(probs, data.heldout, model_uri=info.model_uri, dataset=data.dataset)
        mlflow.log_metrics(evaluation.run_metrics(), model_id=info.model_id)   # step 0: linked by id
        files = _log_artifacts(model, data, history, evaluation, probs)
        _log.info("held-out accuracy %.4f, loss %.4f (n=%d)", evaluation.accuracy, evaluation.loss,
                  evaluation.n)
    return RunResult(run_id, run.info.experiment_id, info.model_uri, evaluation, history, data,
                     params, retrained_from, files, model_files)


@contextlib.contextmanager
def _training_run(name: str):
    """``mlflow.start_run(run_name=name)``, the run created and ended whole. A Ctrl-C or SIGTERM
    landing in MLflow's request that created the run (made on the server, never entered) or
    ended it (taken off MLflow's stack before its end was sent) left it RUNNING for good. While
    MLflow creates or ends the run a signal now only asks (``mlops_common.stop``; a second one
    stops at once): one that came while the run was created is raised inside it, which is ended
    FAILED; one that came while a finished run was ended leaves it FINISHED and is raised where
    the registration starts (``_register_kept``, which says the run is kept)."""
    import mlflow
    from mlflow.entities import RunStatus

    with stop.at_safe_points():
        run = mlflow.start_run(run_name=name)
    try:
        stop.raise_if_asked()
        yield run
    except BaseException:
        with stop.at_safe_points():
            mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    with stop.at_safe_points():
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


@contextlib.contextmanager
def _full_disk_is_one_line():
    """A full disk while training or logging is one line saying what to free, not a traceback."""
    try:
        yield
    except OSError as exc:
        if not paths.disk_full(exc):
            raise
        raise _no_space(f"{exc.strerror}{': ' + exc.filename if exc.filename else ''}") from None
    except Exception as exc:
        # TensorFlow's own writes (the SavedModel export, the warmup file) fail with its
        # ResourceExhaustedError ("<file>; No space left on device"), not an OSError
        tf = sys.modules.get("tensorflow")
        full = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))
        if tf is None or not isinstance(exc, tf.errors.ResourceExhaustedError) or not any(
                f in str(exc) for f in full):
            raise
        raise _no_space(" ".join(str(exc).split())[:300]) from None


def _no_space(detail: str) -> ConfigError:
    return ConfigError(f"no space left on the disk ({detail}) while training or logging the model; free space in "
                       f"{tempfile.gettempdir()} (TMPDIR) and rerun: the MLflow run is marked FAILED and nothing "
                       f"was registered")


def register_run(model_name: str, result: RunResult) -> int:
    """Register the run's logged model as a new version with dataset (and retrain) tags."""
    return _register(model_name, result.model_uri, result.run_id, dataset=result.data.dataset,
                     fingerprint=result.data.fingerprint, retrained_from=result.retrained_from,
                     n_train=len(result.data.combined), accuracy=result.evaluation.accuracy,
                     bundle_files=result.bundle_files, model_files=result.model_files)


def _register(model_name: str, model_uri: str, run_id: str, *, dataset: str, fingerprint: str,
              retrained_from: str | None, n_train, accuracy: float | None, bundle_files: dict,
              model_files: dict, provenance=None) -> int:
    from registry.register import register_version

    tags = {T.DATASET: dataset, T.DATASET_FINGERPRINT: fingerprint}
    if retrained_from is not None:
        tags[T.RETRAINED_FROM] = retrained_from
    what = (f"retrained from version {retrained_from}" if retrained_from not in (None, "scratch")
            else "trained from scratch")
    score = f"{accuracy:.4f}" if isinstance(accuracy, (int, float)) else "unknown"
    return register_version(model_name, model_uri, run_id=run_id, tags=tags, provenance=provenance,
                            bundle_files=bundle_files or None, model_files=model_files or None,
                            description=f"{what} on {dataset} ({n_train} examples); held-out accuracy {score}")


def _register_kept(model_name: str, result: RunResult) -> int:
    """``register_run``; a failure says the finished run is kept and how to register it later."""
    try:
        stop.raise_if_asked()       # a stop that came while MLflow ended the run (``_training_run``)
        return register_run(model_name, result)
    except UserError as exc:
        raise reworded(exc, f"{exc.message}. The training run {result.run_id} is kept: register it with "
                            f"`mlops registry register --run-id {result.run_id}`") from None
    except KeyboardInterrupt:   # Ctrl-C, SIGTERM (a cancelled CI job): the finished run is kept all the same
        _log.warning("the training run %s is kept: register it with `mlops registry register --run-id %s`",
                     result.run_id, result.run_id)
        raise


def register_finished_run(model_name: str, run_id: str) -> dict:
    """``mlops registry register --run-id``: register a finished ``mlops train`` / ``retrain`` run
    that has no version of ``model_name`` yet (its registration failed after the training), with
    the tags, description and ledger row ``mlops train`` gives (``register_version``). The files
    under ``tfserving/`` and ``golden/`` are hashed as the store holds them now (training hashes
    them before uploading); the version's commit and CircleCI pipeline are the ones the run was trained
    at (its tags), the actor is who registers."""
    import mlflow.artifacts

    from registry import bundle_hashes, versions
    from registry.client import mlflow_errors, tracking_client
    from registry.provenance import Provenance

    client = tracking_client()
    with mlflow_errors(f"reading run {run_id}"):
        run = client.get_run(run_id)
    tags = run.data.tags
    kind = tags.get("mlops.kind")
    if kind not in ("train", "retrain"):
        raise RefusedError(f"run {run_id} is not from `mlops train` or `mlops retrain` (its mlops.kind tag is "
                           f"{kind or 'missing'}): nothing registered")
    if run.info.status != "FINISHED":
        raise RefusedError(f"run {run_id} is {run.info.status}, not FINISHED: a training that did not finish "
                           f"is not registered")
    outputs = run.outputs.model_outputs if run.outputs else []
    dataset, fp = tags.get("dataset.name"), tags.get("dataset.fingerprint")
    if len(outputs) != 1 or not dataset or not fp:
        raise RefusedError(f"run {run_id} has {len(outputs)} logged models and dataset tags "
                           f"{dataset or '-'} / {fp or '-'}, not the one model and the data set a training "
                           f"logs: nothing registered")
    before = versions.versions_of_run(model_name, run_id, what=f"reading the versions of '{model_name}'")
    if before:
        raise RefusedError(f"run {run_id} is already version {', '.join(map(str, sorted(before)))} of "
                           f"'{model_name}': nothing registered")
    model_uri = f"models:/{outputs[0].model_id}"
    with tempfile.TemporaryDirectory(prefix="mlops-register-") as tmp:
        with mlflow_errors(f"downloading the bundle of run {run_id}"):
            for part in artifacts.PARTS:
                mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=part, dst_path=tmp)
        bundle_files = bundle_hashes.tree_files(tmp)
    # the version's lineage is the run's (the commit and CircleCI ids it was trained in, as `mlops train`
    # records them); who registers is this shell's user. The shell's pipeline named a terminal's
    # registration of a CI training none, so `promote --pipeline-id` of its pipeline found no version.
    here = Provenance.from_environment()
    trained_ci = {k: v for k, v in tags.items() if k in lineage.CI_VARS.values() and v}
    if trained_ci:
        here = replace(here, pipeline_id=trained_ci.get("ci.pipeline_id"),
                       workflow_id=trained_ci.get("ci.workflow_id"), ci=trained_ci)
    by = replace(here, git_commit=tags.get(T.GIT_COMMIT))
    version = _register(model_name, model_uri, run_id, dataset=dataset, fingerprint=fp,
                        retrained_from=tags.get("mlops.retrained_from"),
                        n_train=run.data.params.get("n_train", "?"),
                        accuracy=run.data.metrics.get("heldout_accuracy"), bundle_files=bundle_files,
                        model_files=_logged_model_files(model_uri), provenance=by)
    return {"run_id": run_id, "version": version, "model_name": model_name,
            "model_uri": f"models:/{model_name}/{version}", "dataset": dataset,
            "run_url": tracking.run_url(run.info.experiment_id, run_id),
            "version_url": tracking.version_url(model_name, version)}


def summary(model_name: str, result: RunResult, version: int) -> dict:
    """The ``--json`` document of ``mlops train`` / ``mlops retrain``."""
    out = {
        "run_id": result.run_id,
        "version": version,
        "model_name": model_name,
        "model_uri": f"models:/{model_name}/{version}",
        "metrics": result.metrics(),
        "dataset": result.data.dataset,
        "fingerprint": result.data.fingerprint,
        "heldout_fingerprint": result.evaluation.heldout_fingerprint,
        "n_train": len(result.data.combined),
        "n_incoming": result.data.n_incoming,
        "run_url": tracking.run_url(result.experiment_id, result.run_id),
    }
    if result.retrained_from is not None:
        out.update(retrained_from=result.retrained_from, incoming=result.data.incoming_location)
    out["version_url"] = tracking.version_url(model_name, version)
    return out


def _ledger_ready() -> None:
    """Open the ledger the registration writes to: a bad MLOPS_LEDGER_URL (a relative SQLite path,
    a server down) fails here, not after a whole training left a FINISHED run and no version."""
    from registry.ledger import Ledger

    Ledger()


def train(model_name: str, params: TrainParams) -> dict:
    """``mlops train``: a fresh model on the base set; registers version N."""
    from registry.client import tracking_client

    params = params.checked()
    params = replace(params, dataset=params.dataset or DEFAULT_DATASET)
    tracking_client()  # fail fast on a wrong server, before loading data or training
    _ledger_ready()
    data = prepare_data(params.dataset)
    result = run_training(params, data, model_name=model_name)
    return summary(model_name, result, _register_kept(model_name, result))


def retrain_plan(model_name: str, params: TrainParams, *, from_scratch: bool) -> tuple[TrainParams, int | None]:
    """Which version a retrain starts from and on which data set (reads the production alias).
    ``from_scratch`` drops production's weights, not its data set (the default of --dataset)."""
    from registry import versions
    from registry.client import tracking_client

    tracking_client()  # fail fast on a wrong server, before loading data or training
    production = tracking.production_version(model_name)
    # the version whose data set --dataset auto means: the alias holder, else the ledger's (a
    # --from-scratch retrain with the alias removed outside mlops; without it, that is refused)
    holder = production if production is not None else _ledger_holder(model_name, from_scratch=from_scratch)
    dataset = params.dataset
    if holder is not None:
        prod_dataset = T.read(versions.get_version(model_name, holder).tags, T.DATASET)
        if prod_dataset and prod_dataset not in DATASETS and not (from_scratch and dataset):
            raise ConfigError(f"production (version {holder}) of '{model_name}' has the dataset tag "
                              f"'{prod_dataset}', which is none of this project's data sets ({', '.join(DATASETS)}): "
                              f"set the version's tag to the one it was trained on in the MLflow UI, or retrain "
                              f"with --from-scratch and --dataset")
        if dataset and prod_dataset and dataset != prod_dataset and not from_scratch:
            raise ConfigError(f"production (version {holder}) was trained on '{prod_dataset}', not "
                              f"'{dataset}'; drop --dataset or retrain with --from-scratch")
        dataset = dataset or prod_dataset
    return replace(params, dataset=dataset or DEFAULT_DATASET), None if from_scratch else production


def _ledger_holder(model_name: str, *, from_scratch: bool) -> int | None:
    """No ``production`` alias: the version the ledger says holds production, if it still exists
    (its data set is what --dataset auto means; None: digits). Without ``from_scratch`` a holder is
    refused: the alias was removed outside mlops, or that version deleted, and a retrain would start
    from scratch, tagged ``retrained_from=scratch``, instead of from production as documented; the
    gate refuses the same state (``gate_rules.choose_baseline``)."""
    from registry import versions
    from registry.ledger import Ledger
    from registry.promotion_rules import ledger_production

    held = ledger_production(Ledger().entries(model_name, actions=("promote", "rollback"), current=True))
    if not held:
        return None
    if from_scratch:
        return held if versions.version_exists(model_name, held) else None
    fix = (f"v{held} was deleted from the registry; record its removal with `mlops registry reconcile`"
           if not versions.version_exists(model_name, held) else
           f"the alias was removed outside mlops; put it back with `mlops registry promote --version {held}`")
    raise RefusedError(f"'{model_name}' has no production alias but the ledger says v{held} holds production: "
                       f"a retrain would start from scratch, not from it; {fix}, or retrain with --from-scratch "
                       f"(nothing was trained or registered)")


def _run_of(model_name: str, version: int | None) -> str | None:
    """The run behind ``version`` (lineage of a retrain), None for a retrain from scratch."""
    if version is None:
        return None
    from registry import versions

    return versions.get_version(model_name, version).run_id


def retrain(model_name: str, params: TrainParams, incoming: str, *, from_scratch: bool = False) -> dict:
    """``mlops retrain``: continue from the ``production`` version (or from scratch when there is
    none, or when asked) on base + incoming batches; registers a version tagged ``retrained_from``."""
    params, production = retrain_plan(model_name, params.checked(), from_scratch=from_scratch)
    _ledger_ready()
    data = prepare_data(params.dataset, incoming)
    if production is None:
        _log.info("retraining from scratch%s", "" if from_scratch else " (no version holds the production alias)")
    else:
        _log.info("retraining from production: version %d", production)
    result = run_training(params, data, model_name=model_name,
                          start_from=f"models:/{model_name}/{production}" if production else None,
                          retrained_from=str(production) if production else "scratch",
                          parent_run_id=_run_of(model_name, production))
    return summary(model_name, result, _register_kept(model_name, result))
