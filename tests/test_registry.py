"""The blessing rule and the registry's history of statuses."""
import json

from pipelines.ml import registry


def entry(version, status, auc):
    return registry.ModelEntry(version, registry.now(), "run", None, f"/m/{version}", "gold.model_input", 3, 1, "cfg",
                               "code", json.dumps({"validation_auc": auc}), status, "")


def test_decide_needs_both_baseline_and_blessed_beaten():
    assert registry.decide(0.70, 0.65, None)[0] == "blessed"
    assert registry.decide(0.70, 0.65, 0.69)[0] == "blessed"
    status, reason = registry.decide(0.70, 0.72, None)
    assert status == "rejected" and "logistic regression" in reason
    status, reason = registry.decide(0.70, 0.65, 0.71)
    assert status == "rejected" and "blessed model" in reason


def test_blessing_retires_the_previous_model(lakehouse):
    registry.register(lakehouse, entry("m1", "blessed", 0.70))
    registry.register(lakehouse, entry("m2", "rejected", 0.60))
    assert registry.blessed(lakehouse).model_version == "m1"
    registry.register(lakehouse, entry("m3", "blessed", 0.75))
    statuses = {e.model_version: e.status for e in registry.entries(lakehouse)}
    assert statuses == {"m1": "retired", "m2": "rejected", "m3": "blessed"}
    assert registry.blessed(lakehouse).path == "/m/m3"
    # Registering the same version again replaces its row, never duplicates it.
    registry.register(lakehouse, entry("m3", "blessed", 0.75))
    assert len(registry.entries(lakehouse)) == 3
