"""The private Keras API splitnet relies on is still there (see splitnet/compat.py)."""

import keras
import numpy as np

from splitnet import compat


def test_private_keras_api_is_present():
    compat.check()  # raises naming the missing attribute after a Keras upgrade


def test_check_names_what_is_missing(monkeypatch):
    monkeypatch.delattr(keras.layers.Layer, "_untrack_variable")
    try:
        compat.check()
    except RuntimeError as exc:
        assert "Layer._untrack_variable" in str(exc) and "splitnet/compat.py" in str(exc)
    else:
        raise AssertionError("compat.check() did not notice a missing attribute")


def test_weight_paths_finds_every_layer_where_keras_files_it(tmp_path):
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.first, self.second = keras.layers.Dense(3), keras.layers.Dense(3)

        def call(self, x):
            return self.second(self.first(x))

    x = keras.Input((4,))
    block = Block()
    model = keras.Model(x, keras.layers.Dense(2)(block(x)))
    layers = [block.first, block.second, model.layers[-1]]
    located = compat.weight_paths(model, layers, tmp_path)
    assert sorted(id(layer) for layer in located.values()) == sorted(id(layer) for layer in layers)
    assert all(type(layer) is keras.layers.Dense for layer in layers)  # classes put back
    # The paths are the ones Keras itself uses for those layers' weights.
    model.save_weights(tmp_path / "model.weights.h5")
    import h5py

    with h5py.File(tmp_path / "model.weights.h5") as h5:
        for group, layer in located.items():
            np.testing.assert_array_equal(h5[group]["0"][()], layer.get_weights()[0])
