"""The train stage's own steps (pipelines/ml/candidate.py) on the tiny model_input."""
from __future__ import annotations

from model_input_fixtures import model_input_lakehouse, training_config


def test_the_nightly_baselines_are_copied_from_an_earlier_model_fitted_from_the_same_inputs(spark, tmp_path, monkeypatch):
    from pipelines.datasets import dataset_for
    from pipelines.ml import candidate
    from pipelines.ml.baselines import baseline_scores, model_input_frames

    lakehouse = model_input_lakehouse(spark, tmp_path / "lakehouse")
    cfg = training_config(lakehouse.root)
    version = lakehouse.table("gold.model_input").version()
    frames = model_input_frames(lakehouse, version)
    first, reused = candidate.nightly_baselines(cfg, spark, lakehouse, version, frames, ["logreg"], None,
                                                str(tmp_path / "m1"), [])
    assert reused == [] and (tmp_path / "m1" / "baselines" / "logreg.json").exists()

    fits, fit = [], candidate.fit_baselines
    monkeypatch.setattr(candidate, "fit_baselines", lambda *a, **kw: fits.append(kw["kinds"]) or fit(*a, **kw))
    earlier = [str(tmp_path / "m1")]
    second, reused = candidate.nightly_baselines(cfg, spark, lakehouse, version, frames, ["logreg"], None,
                                                 str(tmp_path / "m2"), earlier)
    # The same rows, seed and settings: the first model's fit, copied into the new model's folder.
    assert reused == ["logreg"] and fits == [] and (tmp_path / "m2" / "baselines" / "logreg").is_dir()
    key = dataset_for(cfg).key

    def scores(fitted):
        return baseline_scores(frames["validation"], fitted["logreg"]["model"], key).toPandas().sort_values(key)
    assert scores(second)["score"].tolist() == scores(first)["score"].tolist()

    # Other settings are another fit.
    third, reused = candidate.nightly_baselines(cfg, spark, lakehouse, version, frames, ["logreg"],
                                                {"logreg": {"reg_param": 0.5}}, str(tmp_path / "m3"), earlier)
    assert reused == [] and fits == [["logreg"]]
    assert scores(third)["score"].tolist() != scores(first)["score"].tolist()
