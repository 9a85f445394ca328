"""A save or export killed from outside (SIGKILL) never leaves a partial result."""

import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import splitnet

CHILD = """
import sys
import keras, splitnet
from splitnet.files import save_keras
model = keras.saving.load_model(sys.argv[1])
print("ready", flush=True)
if sys.argv[3] == "keras":
    save_keras(model, sys.argv[2])
else:
    splitnet.export_saved_model(model, sys.argv[2])
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def big_split(tmp_path_factory):
    """A split model large enough (about 20 MB) that writing it takes a while."""
    inputs = keras.Input((1200,))
    h = keras.layers.Dense(1200, activation="relu", name="a")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1200, name="b")(h))
    split = splitnet.split_model(model, {"a": {"units": "0:600"}, "b": {"rows": "0:600"}})
    path = tmp_path_factory.mktemp("big") / "split.keras"
    split.save(path)
    return path, split


@pytest.mark.parametrize("kind", ["keras", "saved_model"])
def test_sigkill_leaves_nothing_or_a_complete_result(tmp_path, big_split, kind):
    source, split = big_split
    probe = np.random.default_rng(0).normal(size=(4, 1200)).astype("float32")
    expected = np.asarray(split(probe))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    killed_while_writing = 0
    for attempt, delay in enumerate([0.0, 0.05, 0.2, 0.6, 5.0]):
        target = tmp_path / (f"out{attempt}.keras" if kind == "keras" else f"out{attempt}")
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(source), str(target), kind],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert child.stdout.readline().strip() == "ready"
        time.sleep(delay)
        running = child.poll() is None
        if running:
            os.kill(child.pid, signal.SIGKILL)
        child.wait()
        if not target.exists():
            killed_while_writing += running
            continue
        # Whatever exists under the target's name is complete and loads.
        if kind == "keras":
            loaded = keras.saving.load_model(target)
            np.testing.assert_array_equal(np.asarray(loaded(probe)), expected)
        else:
            loaded = tf.saved_model.load(str(target))  # keep it referenced while serving
            served = loaded.serve(probe).numpy()
            np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    assert killed_while_writing >= 1  # the test did interrupt a write
    assert (tmp_path / ("out4.keras" if kind == "keras" else "out4")).exists()  # and let one finish
