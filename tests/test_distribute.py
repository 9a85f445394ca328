"""tf.distribute: frozen entries exact under MirroredStrategy and MultiWorkerMirroredStrategy.

Each strategy runs in its own process, so its device setup and collective
runtime do not leak into other tests.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
from click.testing import CliRunner

import splitnet
from splitnet.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

MIRRORED = """
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, splitnet

def model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,))
    h = keras.layers.Dense(16, activation="relu", name="d")(inputs)
    return keras.Model(inputs, keras.layers.Dense(4, activation="softmax", name="out")(h))

freeze = {"d": {"units": "0:6", "rows": [0, 1]}, "out": {"units": [0]}}
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 12)).astype("float32")
y = rng.integers(0, 4, 256)
base = model()

def train(strategy):
    with strategy.scope():
        split = splitnet.split_model(base, freeze)
        split.compile(optimizer=keras.optimizers.AdamW(0.01, weight_decay=0.05), loss="sparse_categorical_crossentropy")
    split.fit(x, y, batch_size=64, epochs=3, shuffle=False, verbose=0)
    return split

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
mirrored, single = train(strategy), train(tf.distribute.get_strategy())
masks = splitnet.frozen_masks(mirrored)
before, after, reference = (splitnet.merged_weights(m) for m in (base, mirrored, single))
for key, mask in masks.items():
    assert np.array_equal(after[key][0][mask["kernel"]], before[key][0][mask["kernel"]]), key
    assert np.array_equal(after[key][1][mask["bias"]], before[key][1][mask["bias"]]), key
    assert (after[key][0] != before[key][0])[~mask["kernel"]].all(), key
for key in reference:
    for a, b in zip(after[key], reference[key]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
print("ok", sum(int(m["kernel"].sum()) for m in masks.values()))
"""


def test_mirrored_two_devices_matches_single_device():
    result = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")


MIRRORED_KINDS = """
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, splitnet

def language_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), dtype="int32")
    embed = keras.layers.ReversibleEmbedding(20, 8, name="embed")
    x = embed(inputs)
    x = keras.layers.Conv1D(8, 3, padding="causal", activation="relu", name="conv")(x)
    x = x + keras.layers.MultiHeadAttention(2, 4, name="attn")(x, x, use_causal_mask=True)
    return keras.Model(inputs, embed(x, reverse=True))

def image_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, name="conv_2")(x)
    return keras.Model(inputs, keras.layers.Flatten()(x))

rng = np.random.default_rng(0)
cases = [
    (language_model, {"embed": {"rows": ":16"}, "conv": {"units": [0, 5]}, "attn": {"heads": [1]}},
     rng.integers(0, 20, (64, 6)).astype("int32"), rng.integers(0, 20, (64, 6)), "sparse_categorical_crossentropy"),
    (image_model, {"conv": {"units": "0:4"}, "conv_2": {"rows": [1, 6], "units": [3]}},
     rng.normal(size=(64, 6, 6, 3)).astype("float32"), rng.normal(size=(64, 16)).astype("float32"), "mse"),
]
# One strategy per process: a second MirroredStrategy in the same process fails
# its collectives ("Shape mismatch in the collective instance"), plain models too.
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
for make, freeze, x, y, loss in cases:
    base = make()
    def train(strategy):
        with strategy.scope():
            split = splitnet.split_model(base, freeze)
            split.compile(optimizer=keras.optimizers.AdamW(0.01, weight_decay=0.05), loss=loss)
        split.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        return split
    mirrored, single = train(strategy), train(tf.distribute.get_strategy())
    masks = splitnet.frozen_masks(mirrored)
    before, after, reference = (splitnet.merged_weights(m) for m in (base, mirrored, single))
    for key, layer_masks in masks.items():
        for mask, old, new in zip(layer_masks.values(), before[key], after[key]):
            assert np.array_equal(new[mask], old[mask]), key
            assert (new != old)[~mask].any(), key
    for key in reference:
        for a, b in zip(after[key], reference[key]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
print("ok")
"""


def test_mirrored_layer_kinds_match_single_device():
    result = subprocess.run([sys.executable, "-c", MIRRORED_KINDS], capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")


def test_cli_train_with_mirrored_strategy(tmp_path):
    built = tmp_path / "split.keras"
    assert CliRunner().invoke(main, ["build", str(QUICKSTART), "-o", str(built)]).exit_code == 0
    out = tmp_path / "trained.keras"
    result = CliRunner().invoke(main, ["train", str(built), "--strategy", "mirrored", "--epochs", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    before, after = keras.saving.load_model(built), keras.saving.load_model(out)
    for key, mask in splitnet.frozen_masks(before).items():
        np.testing.assert_array_equal(
            splitnet.merged_weights(after)[key][0][mask["kernel"]], splitnet.merged_weights(before)[key][0][mask["kernel"]]
        )


def test_multiworker_without_tf_config_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    result = CliRunner().invoke(main, ["train", str(QUICKSTART), "--strategy", "multiworker", "-o", str(tmp_path / "o.keras")])
    assert result.exit_code == 2
    assert "needs TF_CONFIG" in result.stderr


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_multiworker_processes_agree(tmp_path):
    built = tmp_path / "split.keras"
    assert CliRunner().invoke(main, ["build", str(QUICKSTART), "-o", str(built)]).exit_code == 0
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    exe = Path(sys.executable).with_name("splitnet")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "splitnet.cli"]
    processes = []
    for index in range(2):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        args = ["train", str(built), "--strategy", "multiworker", "--epochs", "1", "--batch-size", "128"]
        processes.append(
            subprocess.Popen(
                command + args + ["-o", str(tmp_path / f"worker{index}.keras")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=tmp_path,
            )
        )
    try:
        outputs = [p.communicate(timeout=300) for p in processes]
    finally:
        for p in processes:
            p.kill()
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    base = keras.saving.load_model(built)
    trained = [splitnet.merged_weights(keras.saving.load_model(tmp_path / f"worker{i}.keras")) for i in range(2)]
    for key, mask in splitnet.frozen_masks(base).items():
        original = splitnet.merged_weights(base)[key]
        for weights in trained:
            np.testing.assert_array_equal(weights[key][0][mask["kernel"]], original[0][mask["kernel"]])
            np.testing.assert_array_equal(weights[key][1][mask["bias"]], original[1][mask["bias"]])
        # Synchronous training: both workers hold the same trained weights.
        np.testing.assert_array_equal(trained[0][key][0], trained[1][key][0])
        assert (trained[0][key][0] != original[0])[~mask["kernel"]].any()
