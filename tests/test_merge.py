"""Merge: each group back to the original Dense, layer for layer."""

import keras
import numpy as np
import pytest
from conftest import assert_same_function, case_params, data, is_split, make_model, perturb

import splitnet
from splitnet import SplitDense


def _layer_configs(model):
    return [(type(layer).__name__, layer.get_config()) for layer in model.layers]


@pytest.mark.parametrize("case", case_params())
def test_merge_restores_the_architecture_and_weights(case):
    model = make_model()
    split = splitnet.split_model(model, {"d": case.rule, "out": {"units": [1, 3]}})
    perturb(split, seed=7)  # so the merged weights are not just the originals
    merged = splitnet.merge_model(split)
    assert _layer_configs(merged) == _layer_configs(model)
    assert [w.shape for w in merged.weights] == [w.shape for w in model.weights]
    expected = splitnet.merged_weights(split)
    for name in ("d", "out"):
        for got, want in zip(merged.get_layer(name).get_weights(), expected[name]):
            np.testing.assert_array_equal(got, want)
    x, _ = data()
    assert_same_function(merged.predict(x, verbose=0), split.predict(x, verbose=0))
    # Not in place: the split model is still split.
    assert is_split(split.get_layer("d"))
    assert not any(is_split(layer) for layer in merged.layers)


def test_merge_after_training_and_reload(tmp_path):
    model = make_model()
    split = splitnet.split_model(model, {"d": {"units": "0:30", "rows": [0, 5]}})
    split.compile(optimizer=keras.optimizers.AdamW(0.01, weight_decay=0.01), loss="sparse_categorical_crossentropy")
    split.fit(*data(64), epochs=1, verbose=0)
    split.save(tmp_path / "split.keras")
    loaded = keras.saving.load_model(tmp_path / "split.keras")
    merged = splitnet.merge_model(loaded)
    assert _layer_configs(merged) == _layer_configs(model)
    x, _ = data()
    assert_same_function(merged.predict(x, verbose=0), split.predict(x, verbose=0))
    assert merged.compiled  # the compile settings are kept, with a fresh optimizer


def test_merge_plain_model_is_an_equivalent_copy():
    model = make_model()
    merged = splitnet.merge_model(model)
    assert merged is not model
    assert _layer_configs(merged) == _layer_configs(model)
    x, _ = data()
    np.testing.assert_array_equal(merged.predict(x, verbose=0), model.predict(x, verbose=0))


def test_merge_keeps_user_frozen_dense_frozen():
    model = make_model()
    model.get_layer("out").trainable = False  # the user's own choice, not splitnet's
    merged = splitnet.merge_model(splitnet.split_model(model, {"d": {"units": [0]}}))
    assert not merged.get_layer("out").trainable
    assert merged.get_layer("d").trainable


def test_split_merge_split_round_trip():
    model = make_model()
    once = splitnet.merge_model(splitnet.split_model(model, {"d": {"units": [0, 2]}}))
    twice = splitnet.split_model(once, {"d": {"rows": "0:3"}})
    assert set(splitnet.frozen_masks(twice)) == {"d"}
    np.testing.assert_array_equal(splitnet.merged_weights(twice)["d"][0], model.get_layer("d").get_weights()[0])
