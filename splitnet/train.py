"""Training entry points: compile from a spec, load data, the built-in synthetic task.

Training itself is Keras' `model.fit`; this module only turns a spec's
`train` section (or command-line overrides) into its arguments.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from pathlib import Path

import keras
import numpy as np

from splitnet.errors import InputError

_CLASSIFICATION_LOSSES = {
    "sparse_categorical_crossentropy": "sparse",
    "categorical_crossentropy": "onehot",
    "binary_crossentropy": "binary",
}


class DataError(InputError):
    """Training data cannot be used with this model."""


@dataclasses.dataclass
class Data:
    """Arrays for `model.fit`: `x`, `y` and optional validation arrays."""

    x: object
    y: np.ndarray
    x_val: object = None
    y_val: np.ndarray | None = None
    source: str = "arrays"  # what the data is, for the line `describe` prints

    @property
    def validation(self):
        return None if self.x_val is None else (self.x_val, self.y_val)

    def __len__(self):
        return len(self.y)

    def describe(self):
        """One line: where the data comes from and its shapes, e.g. for `splitnet train`.

        Example:
            >>> Data(np.zeros((8, 3), "float32"), np.zeros(8, "int64"), source="xy.npz").describe()
            'xy.npz: x (8, 3) float32, y (8,) int64'
        """
        xs = self.x if isinstance(self.x, list) else [self.x]
        names = ["x"] if len(xs) == 1 else [f"x_{i}" for i in range(len(xs))]
        parts = [f"{n} {tuple(a.shape)} {a.dtype}" for n, a in zip(names, xs)] + [f"y {tuple(self.y.shape)} {self.y.dtype}"]
        line = f"{self.source}: " + ", ".join(parts)
        return line if self.y_val is None else f"{line}; validation: {len(self.y_val)} samples"


def default_loss(model):
    """The loss for a spec without `train.loss`, chosen from the output activation."""
    activation = getattr(model.layers[-1], "activation", None)
    name = getattr(activation, "__name__", "")
    if name == "softmax":
        return "sparse_categorical_crossentropy"
    if name == "sigmoid":
        return "binary_crossentropy"
    return "mean_squared_error"


def compile_model(model, train_spec, learning_rate=None):
    """Compile `model` with a spec's loss, optimizer and metrics.

    Args:
        model: The (split) model.
        train_spec: `spec.TrainSpec`.
        learning_rate: Overrides the optimizer's learning rate.

    Example:
        >>> import splitnet
        >>> from splitnet.train import compile_model
        >>> spec = splitnet.load_spec("configs/quickstart.yaml")  # doctest: +SKIP
        >>> compile_model(splitnet.build_model(spec), spec.train)  # doctest: +SKIP
    """
    config = train_spec.optimizer_config
    if learning_rate is not None:
        config["config"]["learning_rate"] = learning_rate
    model.compile(
        optimizer=keras.optimizers.get(config),
        loss=train_spec.loss or default_loss(model),
        metrics=list(train_spec.metrics),
    )
    # Build the optimizer's slots now, so a model saved before training holds
    # them and loads without Keras' "skipping optimizer variables" warning.
    model.optimizer.build(model.trainable_variables)
    return model


def set_learning_rate(model, learning_rate):
    """Override the learning rate of a compiled model's optimizer."""
    try:
        model.optimizer.learning_rate = learning_rate
    except (TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"cannot set the learning rate of this optimizer: {exc}") from None


def loss_name(model):
    """The compiled loss's name in snake case, e.g. `sparse_categorical_crossentropy`."""
    loss = model.loss
    if isinstance(loss, str):
        return loss
    name = getattr(loss, "name", None) or getattr(loss, "__name__", "")
    return name


def _input_specs(model):
    return [(tuple(t.shape[1:]), t.dtype) for t in model.inputs]


def _structure(model, arrays):
    return arrays[0] if len(model.inputs) == 1 else list(arrays)


def synthetic_data(model, loss=None, n=2048, seed=0):
    """A deterministic, learnable task shaped to the model: inputs and a linear teacher.

    Inputs are standard normal; integer inputs (token ids) are uniform below
    the smallest vocabulary of the model's embeddings, and stand for a fixed
    random vector per id. Targets come from a fixed random linear map
    of the inputs (per position when input and output share their middle
    axes, e.g. (batch, steps, features) -> (batch, steps, classes); else of
    the flattened inputs): class labels for a classification loss,
    `tanh` of the map for anything else. A model with a Dense head can learn
    it, so the loss falls.

    Args:
        model: A built model with fully known input feature sizes.
        loss: The loss name; defaults to the compiled loss.
        n: Number of samples.
        seed: Random seed: the same seed gives the same arrays.

    Returns:
        `Data` with 7/8 of the samples for training and 1/8 for validation.

    Example:
        >>> import keras
        >>> from splitnet.train import synthetic_data
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
        >>> data = synthetic_data(model, "sparse_categorical_crossentropy", n=16)
        >>> data.x.shape, data.y.dtype
        ((14, 4), dtype('int64'))
    """
    loss = loss or loss_name(model) or default_loss(model)
    rng = np.random.default_rng(seed)
    out_shape = tuple(model.outputs[0].shape[1:]) if len(model.outputs) == 1 else None
    if out_shape is None or any(d is None for d in out_shape):
        raise DataError("the synthetic task needs a model with one output of known shape; give train.data")
    inputs, views = [], []
    for shape, dtype in _input_specs(model):
        shape = tuple(8 if d is None else d for d in shape)  # variable length: 8 steps
        if "int" in str(dtype):
            vocabulary = _vocabulary(model)
            ids = rng.integers(0, vocabulary, size=(n,) + shape).astype(str(dtype))
            inputs.append(ids)
            views.append(rng.normal(size=(vocabulary, 8))[ids])  # a vector per id
        else:
            inputs.append(rng.normal(size=(n,) + shape).astype("float32"))
            views.append(inputs[-1])
    middle = out_shape[:-1]
    if len(views) == 1 and views[0].shape[1:-1] == middle:
        features = views[0]  # per position
    else:
        if middle:
            raise DataError(f"the synthetic task cannot make targets of shape {out_shape}; give train.data")
        features = np.concatenate([x.reshape(n, -1) for x in views], axis=-1)
    width = out_shape[-1]
    kind = _CLASSIFICATION_LOSSES.get(loss)
    teacher = rng.normal(size=(features.shape[-1], width)) / math.sqrt(features.shape[-1])
    logits = features @ teacher
    if kind == "sparse":
        y = np.argmax(logits, axis=-1).astype("int64")
    elif kind == "onehot":
        y = np.eye(width, dtype="float32")[np.argmax(logits, axis=-1)]
    elif kind == "binary":
        y = (logits > 0).astype("float32")
    else:
        y = np.tanh(logits).astype("float32")
    split = n - n // 8
    x_train = _structure(model, [x[:split] for x in inputs])
    x_val = _structure(model, [x[split:] for x in inputs])
    return Data(x_train, y[:split], x_val, y[split:], source=f"the synthetic task (seed {seed})")


def _vocabulary(model):
    """The smallest vocabulary among the model's embeddings: ids below it fit every one."""
    from splitnet import tree

    sizes = [int(layer.input_dim) for _, layer in tree.walk(model) if isinstance(layer, keras.layers.Embedding)]
    if not sizes:
        raise DataError("the synthetic task makes integer inputs only for models with an Embedding; give train.data")
    return min(sizes)


def load_data(path, model):
    """Load an `.npz` with arrays `x`, `y` (optional `x_val`, `y_val`) and check it fits `model`.

    For a model with several inputs, give `x_0`, `x_1`, ... (and
    `x_val_0`, ...) in the order of `model.inputs`. Loaded without pickle.
    """
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz archive (write one with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except Exception as exc:  # noqa: BLE001 - anything numpy cannot read as .npz (pickled objects too)
        raise DataError(f"cannot read {path} as an .npz file: {exc}") from None
    keys = set(arrays)

    def inputs(prefix):
        if len(model.inputs) == 1:
            return arrays.get(prefix)
        names = [f"{prefix}_{i}" for i in range(len(model.inputs))]
        if not any(name in arrays for name in names):
            return None
        missing = [name for name in names if name not in arrays]
        if missing:
            raise DataError(f"{path}: missing arrays {', '.join(missing)} for a model with {len(names)} inputs")
        return [arrays[name] for name in names]

    x, y = inputs("x"), arrays.get("y")
    if x is None or y is None:
        want = "x, y" if len(model.inputs) == 1 else "x_0.., y"
        raise DataError(f"{path}: needs arrays {want} (has: {', '.join(sorted(keys)) or 'none'})")
    data = Data(x, y, inputs("x_val"), arrays.get("y_val"), source=str(_shown(path)))
    if (data.x_val is None) != (data.y_val is None):
        raise DataError(f"{path}: give both x_val and y_val, or neither")
    for xs, ys, name in ((data.x, data.y, "x"), (data.x_val, data.y_val, "x_val")):
        if xs is None:
            continue
        for array, (shape, _) in zip(xs if isinstance(xs, list) else [xs], _input_specs(model)):
            if array.ndim != len(shape) + 1 or any(d is not None and d != a for d, a in zip(shape, array.shape[1:])):
                raise DataError(
                    f"{path}: {name} has shape {array.shape}, but model {model.name!r} expects (n, "
                    + ", ".join("?" if d is None else str(d) for d in shape)
                    + ")"
                )
            if len(array) != len(ys):
                raise DataError(f"{path}: {name} has {len(array)} samples but its labels have {len(ys)}")
        named = [(name, xs)] if not isinstance(xs, list) else [(f"{name}_{i}", a) for i, a in enumerate(xs)]
        for array_name, array in named + [("y" if name == "x" else "y_val", ys)]:
            _check_finite(path, array_name, array)
        _check_targets(path, ys, model)
    return data


def _check_finite(path, name, array):
    """NaN or infinity in the data makes the loss NaN, and the failure shows up far from its cause."""
    if not np.issubdtype(array.dtype, np.inexact):
        return
    bad = ~np.isfinite(array)
    if bad.any():
        first, count = int(np.argwhere(bad)[0][0]), int(bad.sum())
        raise DataError(
            f"{path}: {name} has {count:,} non-finite value{'s' if count > 1 else ''} (NaN or inf), "
            f"the first in sample {first}; "
            "remove or replace them"
        )


def _check_targets(path, y, model):
    """Targets must fit the output (and sparse labels be classes): TensorFlow fails deep inside otherwise."""
    if len(model.outputs) != 1:
        return
    output = tuple(model.outputs[0].shape[1:])
    sparse = model.compiled and loss_name(model) == "sparse_categorical_crossentropy"
    want = output[:-1] if sparse else output
    got = tuple(y.shape[1:])
    if sparse and got[-1:] == (1,) and got[:-1] == want:
        got = got[:-1]  # labels of shape (n, 1) are fine too
    if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
        expected = ", ".join(["n"] + ["?" if d is None else str(d) for d in want])
        raise DataError(f"{path}: y has shape {y.shape}, but model {model.name!r} needs targets of shape ({expected})")
    if not sparse:
        return
    classes = output[-1]
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.array_equal(y, np.round(y)):
            raise DataError(f"{path}: class labels must be integers, got {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise DataError(f"{path}: class labels must be in [0, {classes}), got values from {y.min()} to {y.max()}")


def get_data(model, data_path=None, seed=0):
    """The spec's or command line's data, or the synthetic task when there is none."""
    if data_path is not None:
        return load_data(data_path, model)
    return synthetic_data(model, seed=seed)


# -- settings that travel with a saved model ------------------------------------------


def settings_dict(train_spec, data=None, epochs=None, batch_size=None):
    """The train settings that go with a model: the spec's, after command-line overrides.

    Loss, optimizer and metrics are in the model's compile config already;
    these are the rest: the data (an absolute path, or None for the
    synthetic task), epochs, batch size and seed. `for_file` turns them
    into what is stored in a `.keras` file.
    """
    data = data if data is not None else train_spec.data
    return {
        "data": None if data is None else str(Path(data).resolve()),
        "epochs": epochs or train_spec.epochs,
        "batch_size": batch_size or train_spec.batch_size,
        "seed": train_spec.seed,
    }


def for_file(settings, model_path):
    """`settings` as stored in the `.keras` file `model_path`.

    The data path is kept both relative to the file's folder (so a project
    folder can move as a whole) and absolute (so the file alone can move).
    """
    out = dict(settings)
    if out.get("data") is not None:
        out["data_absolute"] = out["data"]
        out["data"] = os.path.relpath(out["data"], Path(model_path).resolve().parent)
    return out


def settings_from(settings, model_path):
    """`(TrainSpec, completed_epochs)` from the settings stored in `model_path` (or defaults).

    The data path is the stored relative one if that file exists, else the
    absolute one; whether it exists is checked only when it is used.
    """
    from splitnet.spec import TrainSpec

    if not settings:
        return TrainSpec(), 0
    data = settings.get("data")
    if data is not None:
        relative = Path(model_path).resolve().parent / data
        absolute = Path(settings.get("data_absolute") or relative)
        data = Path(_shown(relative if relative.is_file() or not absolute.is_file() else absolute))
    spec = TrainSpec(
        data=data,
        epochs=int(settings.get("epochs", TrainSpec.epochs)),
        batch_size=int(settings.get("batch_size", TrainSpec.batch_size)),
        seed=int(settings.get("seed", TrainSpec.seed)),
    )
    return spec, int(settings.get("completed_epochs", 0))


def _shown(path):
    """A path as a user would write it here: relative to the working folder when inside it."""
    absolute = Path(path).resolve()
    relative = os.path.relpath(absolute)
    return absolute if relative.startswith("..") else Path(relative)
