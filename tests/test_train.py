"""The synthetic task and data loading."""

import keras
import numpy as np
import pytest

from splitnet.train import DataError, load_data, synthetic_data


def _model(input_shape, units, activation=None):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, keras.layers.Dense(units, activation=activation)(inputs))


@pytest.mark.parametrize(
    "loss, y_shape, y_dtype",
    [
        ("sparse_categorical_crossentropy", (), "int64"),
        ("categorical_crossentropy", (5,), "float32"),
        ("binary_crossentropy", (5,), "float32"),
        ("mean_squared_error", (5,), "float32"),
    ],
)
def test_synthetic_targets_fit_the_loss(loss, y_shape, y_dtype):
    data = synthetic_data(_model((6,), 5), loss, n=64, seed=3)
    assert data.x.shape == (56, 6) and data.x_val.shape == (8, 6)
    assert data.y.shape == (56,) + y_shape and data.y.dtype == y_dtype
    if loss.startswith("sparse"):
        assert set(np.unique(data.y)) <= set(range(5)) and len(np.unique(data.y)) > 1
    if loss == "categorical_crossentropy":
        np.testing.assert_array_equal(data.y.sum(axis=1), 1.0)


def test_synthetic_is_deterministic_and_seeded():
    model = _model((6,), 3)
    a, b, c = (synthetic_data(model, "mse", n=32, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)


def test_synthetic_rank3_per_position():
    data = synthetic_data(_model((7, 6), 4, "softmax"), "sparse_categorical_crossentropy", n=16)
    assert data.x.shape == (14, 7, 6) and data.y.shape == (14, 7)


def test_synthetic_task_is_learnable():
    keras.utils.set_random_seed(0)
    model = _model((10,), 4, "softmax")
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    data = synthetic_data(model, n=512)
    before = model.evaluate(data.x, data.y, verbose=0)
    model.fit(data.x, data.y, epochs=5, verbose=0)
    assert model.evaluate(data.x, data.y, verbose=0) < 0.6 * before


def test_load_data(tmp_path):
    model = _model((6,), 3)
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((10, 6), "float32"), y=np.zeros((10, 3)), x_val=np.zeros((2, 6)), y_val=np.zeros((2, 3)))
    data = load_data(path, model)
    assert len(data) == 10 and data.validation[0].shape == (2, 6)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((4, 6))}, r"needs arrays x, y \(has: x\)"),
        ({"x": np.zeros((4, 5)), "y": np.zeros((4, 3))}, r"x has shape \(4, 5\), but model '.*' expects \(n, 6\)"),
        ({"x": np.zeros((4, 6)), "y": np.zeros((3, 3))}, "x has 4 samples but its labels have 3"),
        ({"x": np.zeros((4, 6)), "y": np.zeros((4, 3)), "x_val": np.zeros((1, 6))}, "give both x_val and y_val"),
        ({"x": np.zeros((4, 6)), "y": np.zeros((4, 2))}, r"y has shape \(4, 2\), but model '.*' needs targets of shape \(n, 3\)"),
        ({"x": np.array([object()] * 4), "y": np.zeros(4)}, "cannot read"),
    ],
)
def test_load_data_errors(tmp_path, arrays, message):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        load_data(path, _model((6,), 3))


def test_load_data_not_npz(tmp_path):
    path = tmp_path / "d.npz"
    path.write_text("hello")
    with pytest.raises(DataError, match="d.npz: not an .npz archive"):
        load_data(path, _model((6,), 3))
