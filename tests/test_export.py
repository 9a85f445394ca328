"""Export: merged, reloaded and checked, atomic, loadable without splitnet."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import data, make_model

import splitnet
from splitnet.export import ExportError
from splitnet.files import OutputError

# Runs in a fresh interpreter where `import splitnet` fails.
RELOAD_WITHOUT_SPLITNET = """
import sys
sys.modules["splitnet"] = None  # any attempt to import splitnet raises ImportError
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], loaded.serve(x).numpy())
sig = loaded.signatures["serving_default"]
print(sorted(sig(tf.constant(x)).keys()))
"""


@pytest.fixture
def split():
    model = make_model()
    return splitnet.split_model(model, {"d": {"units": "0:10", "rows": [1, 2]}, "out": {"units": [0]}})


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_export_reloads_without_splitnet(tmp_path, split):
    path = tmp_path / "export"
    merged, diff = splitnet.export_saved_model(split, path)
    assert diff <= 1e-6
    assert (path / "saved_model.pb").is_file()
    x, _ = data()
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", RELOAD_WITHOUT_SPLITNET, str(path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # not the repository, so the source tree is not importable either
    )
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), merged.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), split.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_existing_path_is_refused_unless_forced(tmp_path, split):
    path = tmp_path / "export"
    path.mkdir()
    (path / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="already exists"):
        splitnet.export_saved_model(split, path)
    assert (path / "keep.txt").read_text() == "mine"
    splitnet.export_saved_model(split, path, force=True)
    assert (path / "saved_model.pb").is_file() and not (path / "keep.txt").exists()
    assert _siblings(path) == []  # no temporary or old folders left


def test_missing_parent_is_refused(tmp_path, split):
    with pytest.raises(OutputError, match="does not exist"):
        splitnet.export_saved_model(split, tmp_path / "no" / "export")


def test_failed_export_leaves_nothing(tmp_path, split, monkeypatch):
    def broken_export(self, filepath, **kwargs):
        os.makedirs(filepath, exist_ok=True)
        open(os.path.join(filepath, "saved_model.pb"), "w").close()  # half-written
        raise RuntimeError("disk full")

    import keras

    monkeypatch.setattr(keras.Model, "export", broken_export)
    path = tmp_path / "export"
    with pytest.raises(RuntimeError, match="disk full"):
        splitnet.export_saved_model(split, path)
    assert not path.exists() and _siblings(path) == []


def test_export_that_does_not_reproduce_is_refused(tmp_path, split, monkeypatch):
    real_load = tf.saved_model.load

    class Wrong:
        def __init__(self, loaded):
            self.serve = lambda x: loaded.serve(x) + 1.0

    monkeypatch.setattr(tf.saved_model, "load", lambda p: Wrong(real_load(p)))
    path = tmp_path / "export"
    with pytest.raises(ExportError, match="differs from the model"):
        splitnet.export_saved_model(split, path)
    assert not path.exists() and _siblings(path) == []


def test_force_keeps_old_export_when_new_one_fails(tmp_path, split, monkeypatch):
    path = tmp_path / "export"
    splitnet.export_saved_model(split, path)
    before = sorted(os.listdir(path))
    real_load = tf.saved_model.load
    monkeypatch.setattr(tf.saved_model, "load", lambda p: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        splitnet.export_saved_model(split, path, force=True)
    monkeypatch.setattr(tf.saved_model, "load", real_load)
    assert sorted(os.listdir(path)) == before and _siblings(path) == []


def test_forced_folder_replacement_is_one_atomic_swap(tmp_path):
    from splitnet.files import _RENAME_EXCHANGE, _rename

    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir()
    old.mkdir()
    (new / "n").touch()
    (old / "o").touch()
    assert _rename(new, old, _RENAME_EXCHANGE)  # renameat2(RENAME_EXCHANGE): no moment without a folder at `old`
    assert [p.name for p in old.iterdir()] == ["n"] and [p.name for p in new.iterdir()] == ["o"]
