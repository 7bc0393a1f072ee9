"""registry.versions against a real MLflow server: lookups, tags, aliases, bundles."""
from __future__ import annotations

import json
import os

import pytest

from mlops_common.errors import ConfigError, NotFoundError, RefusedError
from registry import versions
from registry.ledger import Ledger


def test_unknown_model_and_version_are_one_clear_line(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    with pytest.raises(NotFoundError, match="registered model 'no-such-model' does not exist"):
        versions.get_version("no-such-model", 1)
    v = make_version()
    with pytest.raises(NotFoundError, match=rf"version 7 of registered model '{model}' does not exist "
                                            rf"\(the latest is {v}\)"):
        versions.get_version(model, 7)
    with pytest.raises(ConfigError, match="not a version number"):
        versions.get_version(model, "seven")
    with pytest.raises(NotFoundError):
        versions.production_version("no-such-model")


def test_version_info_production_and_aliases(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    pipe = f"pipe-a-{model}"      # a tag searched across every model of the server: this test's own
    v1 = make_version(pipeline_id=pipe)
    v2 = make_version()
    assert (v1, v2) == (1, 2)
    assert versions.production_version(model) is None
    versions.set_alias(model, versions.PRODUCTION, v1)
    versions.set_alias(model, versions.CANDIDATE, v2)
    assert versions.production_version(model) == 1
    info = versions.get_version(model, v1)
    assert info.aliases == ("production",)
    assert info.validation_status == "pending"
    assert info.tags["pipeline_id"] == pipe
    assert info.run_id
    listed = versions.list_versions(model)
    assert [i.version for i in listed] == [2, 1]
    assert listed[0].aliases == ("candidate",)
    found = versions.find_by_tag("pipeline_id", pipe)
    assert [(i.model, i.version) for i in found] == [(model, 1)]


def test_register_writes_a_ledger_row(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version(tags={"retrained_from": "scratch"})
    rows = Ledger().entries(model)
    assert [(e.action, e.to_version, e.outcome) for e in rows] == [("register", v, "ok")]
    assert rows[0].details["run_id"] == versions.get_version(model, v).run_id
    assert rows[0].details["retrained_from"] == "scratch"
    assert rows[0].actor


def test_set_tags_refuses_secret_values(make_version, monkeypatch):
    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version()
    monkeypatch.setenv("CIRCLE_TOKEN", "tok-very-secret-123")
    with pytest.raises(RefusedError, match="secret"):
        versions.set_tags(model, v, {"approved_by": "someone tok-very-secret-123"})
    assert "approved_by" not in versions.get_version(model, v).tags
    versions.set_tags(model, v, {"approved_by": "alice"})
    assert versions.get_version(model, v).tags["approved_by"] == "alice"


def test_download_bundle_gives_savedmodel_and_golden_set(make_version, tmp_path, tiny_serving_bundle):
    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version()
    bundle = versions.download_bundle(model, v, tmp_path / "dl" / "b")
    assert (bundle.saved_model_dir / "saved_model.pb").is_file()
    assert (bundle.saved_model_dir / "variables").is_dir()
    assert bundle.golden_request["signature_name"] == "serving_default"
    assert len(bundle.golden_request["instances"]) == len(bundle.golden_response["predictions"]) == 3
    assert bundle.signature == json.loads((tiny_serving_bundle / "golden" / "signature.json").read_text())
    # no temporary folders left next to the destination
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["b"]


def test_download_bundle_of_version_without_artifacts_fails_cleanly(mlops_env, tmp_path):
    import mlflow

    from registry.client import tracking_client
    from registry.register import register_version

    tracking_client()
    model = os.environ["MLOPS_MODEL_NAME"]
    with mlflow.start_run() as run:
        mlflow.log_text("not a model", "notes.txt")
        logged = mlflow.create_external_model(name="model", source_run_id=run.info.run_id)
    v = register_version(model, logged.model_uri, run_id=run.info.run_id)
    with pytest.raises(NotFoundError, match="has no tfserving/ or golden/ artifact"):
        versions.download_bundle(model, v, tmp_path / "dl" / "b")
    assert list((tmp_path / "dl").iterdir()) == []


@pytest.mark.parametrize("model", ["it's a model", "back\\slash", "both'\"quotes\\", "per%cent_"])
def test_models_named_with_quotes_or_backslashes_list_their_versions(make_version, model):
    """MLflow's filter parser takes the text between the quotes as it is: the backslash-escaped
    `it\\'s a model` matched nothing, so status said "no versions yet" while v2 held production,
    and rollback found nothing to roll back to."""
    make_version(model=model, pipeline_id=f"pipe-{model}")
    make_version(model=model)
    versions.set_alias(model, versions.PRODUCTION, 2)
    assert [i.version for i in versions.list_versions(model)] == [2, 1]
    assert versions.latest_version_number(model) == 2
    assert [(i.model, i.version) for i in versions.find_by_tag("pipeline_id", f"pipe-{model}")] == [(model, 1)]


def test_equals_clause_reads_back_as_the_value_through_mlflows_parser():
    from mlflow.utils.search_utils import SearchModelVersionUtils

    for value in ("plain", "it's", "q\"uote", "end\\", "it's\\", "a\\'b"):
        (clause,) = SearchModelVersionUtils.parse_search_filter(versions.equals_clause("name", value))
        assert (clause["comparator"], clause["value"]) == ("=", value)
    (clause,) = SearchModelVersionUtils.parse_search_filter(versions.equals_clause("name", "b'\"q"))
    assert (clause["comparator"], clause["value"]) == ("LIKE", "b_\"q")


def test_a_version_updated_between_pages_is_listed_once_not_skipped(mlops_env, monkeypatch):
    """MLflow pages versions by offset, ordered by default on ``last_updated_timestamp`` (which a
    description write changes: every gate, promotion and deploy rewrites one): a version on a later
    page updated while the pages were read moved to the first page, and the listing skipped it
    (status without it; rollback took it for deleted and went past it)."""
    import mlflow
    from mlflow import MlflowClient

    from registry.rest import MlflowRest

    model = mlops_env["MLOPS_MODEL_NAME"]
    client = MlflowClient()
    client.create_registered_model(model)
    with mlflow.start_run() as run:
        mlflow.log_text("x", "m/x.txt")
    for _ in range(5):
        client.create_model_version(model, source=f"{run.info.artifact_uri}/m", run_id=run.info.run_id)
    monkeypatch.setattr(versions, "SEARCH_PAGE", 2)
    real_get, pages = MlflowRest.get, []

    def get(self, endpoint, params, **kw):
        doc = real_get(self, endpoint, params, **kw)
        if endpoint == "model-versions/search":
            pages.append([int(mv["version"]) for mv in doc.get("model_versions") or ()])
            if len(pages) == 1:     # another process rewrites a description meanwhile
                client.update_model_version(model, "1", description="deployed on host-a")
                assert client.get_model_version(model, "1").last_updated_timestamp > \
                    client.get_model_version(model, "5").last_updated_timestamp
        return doc

    monkeypatch.setattr(MlflowRest, "get", get)
    assert [i.version for i in versions.list_versions(model)] == [5, 4, 3, 2, 1]
    assert len(pages) == 3


def test_logging_a_report_with_tmpdir_full_is_one_line(make_version, tmpfs, monkeypatch):
    """MLflow writes a text artifact (the gate's report.md/.json/.html) to a file in TMPDIR before
    uploading it: with TMPDIR full the gate ended in an OSError traceback after its report files
    were written and before its verdict was recorded. Now one line saying where to free space."""
    import tempfile

    v = make_version()
    run_id = versions.get_version(os.environ["MLOPS_MODEL_NAME"], v).run_id
    full = tmpfs("12k")
    monkeypatch.setattr(tempfile, "tempdir", str(full))
    with pytest.raises(ConfigError) as e:
        versions.log_run_text(run_id, "x" * 100_000, "gate/report.md")
    assert f"logging gate/report.md to run {run_id}: no space left on the disk of {full} (TMPDIR)" in str(e.value)
    assert list(full.iterdir()) == []
