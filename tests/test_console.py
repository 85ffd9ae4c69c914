"""What a person reads while a job runs: Horovod's rank output without its prefix, third-party
chatter below --verbose (pipelines.console)."""
from __future__ import annotations

import logging
import sys

from pipelines.console import CHATTY_LOGGERS, RankOutput, configure_logging


def test_rank_stdout_reaches_stdout_without_horovods_prefix(capsys):
    out = RankOutput("stdout")
    # Horovod forwards in chunks that need not end at a line.
    out.write("[0]<stdout>:epoch  1/16  loss 0.6571  auc 0.5672\n[0]<stdout>:epoch  2/")
    out.write("16  loss 0.5701\n")
    out.write("Sat Dec  5 12:00:00 2026[1]<stdout>:rank one says hello")
    out.flush()
    assert capsys.readouterr().out.splitlines() == [
        "epoch  1/16  loss 0.6571  auc 0.5672", "epoch  2/16  loss 0.5701", "rank one says hello"]


def test_rank_stderr_is_debug_and_its_tail_is_kept_for_a_failure(capsys, caplog):
    err = RankOutput("stderr", keep=2)
    with caplog.at_level(logging.DEBUG, logger="pipelines.ranks"):
        err.write("[0]<stderr>:WARNING:tensorflow:Callback method is slow\n[1]<stderr>:Traceback (most recent call last):\n")
        err.write("[1]<stderr>:ValueError: boom\n")
    assert capsys.readouterr().out == ""
    assert err.tail == ["[rank 1] Traceback (most recent call last):", "[rank 1] ValueError: boom"]
    assert [r.levelno for r in caplog.records] == [logging.DEBUG] * 3
    assert "[rank 0] WARNING:tensorflow:Callback method is slow" in caplog.text


def test_third_party_loggers_keep_to_warnings_unless_verbose():
    try:
        configure_logging("INFO", "text")
        assert all(logging.getLogger(n).getEffectiveLevel() == logging.WARNING for n in CHATTY_LOGGERS)
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        configure_logging("DEBUG", "text")
        assert all(logging.getLogger(n).level == logging.NOTSET for n in CHATTY_LOGGERS)
    finally:
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        configure_logging("INFO", "text")


def test_keras_progress_bars_are_off_below_verbose(capsys):
    import numpy as np
    import tensorflow as tf

    from pipelines.console import quiet_tensorflow

    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
    configure_logging("INFO", "text")
    try:
        quiet_tensorflow()
        model.predict(np.zeros((3, 2)))            # verbose="auto": a progress bar on stdout, normally
        assert "1/1" not in capsys.readouterr().out
    finally:
        tf.keras.utils.enable_interactive_logging()
        sys.stdout.flush()
