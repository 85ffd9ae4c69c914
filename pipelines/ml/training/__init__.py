"""Training: the driver side (`driver`: pin the snapshot, run 1 process or N Horovod ranks), the
rank side (`worker`: the function every process runs), its Keras `callbacks`, and the `plan` and
result they share. Importing this package does not start TensorFlow.

    >>> from pipelines.ml.training import train
    >>> result = train(cfg, spark)
"""
from pipelines.ml.training.driver import new_model_version, train
from pipelines.ml.training.plan import (MODEL_FILE, RESULT_FILE, ROC_FILE, SPEC_FILE, STATE_FILE, TrainingError,
                                        TrainingPlan, TrainingResult, model_dir_for, read_result, read_state)
from pipelines.ml.training.worker import run_training

__all__ = ["train", "run_training", "new_model_version", "TrainingError", "TrainingPlan", "TrainingResult",
           "model_dir_for", "read_state", "read_result", "MODEL_FILE", "STATE_FILE", "RESULT_FILE", "SPEC_FILE",
           "ROC_FILE"]
