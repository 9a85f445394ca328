"""Shared helpers and the case table of freeze rules used across the tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

IN_DIM, UNITS, OUT = 12, 40, 5


def perturb(model, seed=0):
    """Give every weight a random value, so exactness checks compare something real."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0.0, 0.5, size=w.shape).astype(w.dtype))
    return model


def is_split(layer):
    """Whether `layer` is split, in either form (a nested model of pieces, or in place)."""
    from splitnet import functional, kinds

    return functional.is_split(layer) or kinds.split_kind_of(layer) is not None


def plan_of(layer):
    """The `KernelPlan` of a split layer, in either form."""
    from splitnet import kinds

    return kinds.any_kind_of(layer).plan_of(layer)


def make_model(*, activation="relu", use_bias=True, input_shape=(IN_DIM,), name="net", **dense_kwargs):
    """input -> Dense "d" (UNITS) -> Dense "out" (OUT, softmax), weights perturbed."""
    inputs = keras.Input(input_shape, name="x")
    h = keras.layers.Dense(UNITS, activation=activation, use_bias=use_bias, name="d", **dense_kwargs)(inputs)
    outputs = keras.layers.Dense(OUT, activation="softmax", name="out")(h)
    return perturb(keras.Model(inputs, outputs, name=name))


def data(n=64, input_shape=(IN_DIM,), seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n,) + tuple(input_shape)).astype("float32")
    y = rng.integers(0, OUT, size=(n,) + tuple(input_shape[:-1]))
    return x, y


class Case:
    """One freeze rule for layer "d", with the frozen index sets it must mean."""

    def __init__(self, id, rule, units=(), rows=()):
        self.id, self.rule = id, rule
        self.units, self.rows = set(units), set(rows)

    def masks(self, use_bias=True):
        """The expected frozen masks, computed directly from the index sets."""
        kernel = np.zeros((IN_DIM, UNITS), dtype=bool)
        kernel[sorted(self.rows), :] = True
        kernel[:, sorted(self.units)] = True
        if not use_bias:
            return kernel, np.zeros((0,), dtype=bool)
        bias = np.full((UNITS,), bool(self.rule.get("bias")))
        bias[sorted(self.units)] = True
        return kernel, bias


ALL_UNITS, ALL_ROWS = range(UNITS), range(IN_DIM)

CASES = [
    Case("units-list", {"units": [0, 1, "8:16", -1]}, units=[0, 1, *range(8, 16), 39]),
    Case("units-contiguous", {"units": "0:20"}, units=range(20)),
    Case("units-scattered", {"units": list(range(0, UNITS, 2))}, units=range(0, UNITS, 2)),
    Case("units-negative-range", {"units": "-5:"}, units=range(35, 40)),
    Case("units-all", {"units": "all"}, units=ALL_UNITS),
    Case("units-and-bias", {"units": ":5", "bias": True}, units=range(5)),
    Case("bias-only", {"bias": True}),
    Case("rows", {"rows": "0:6"}, rows=range(6)),
    Case("rows-scattered", {"rows": [0, 3, 5, 7, 9, 11]}, rows=[0, 3, 5, 7, 9, 11]),
    Case("rows-and-bias", {"rows": [1, -1], "bias": True}, rows=[1, 11]),
    Case("units-and-rows", {"units": [2, "10:14"], "rows": "4:"}, units=[2, 10, 11, 12, 13], rows=range(4, 12)),
    Case("rows-all", {"rows": "all"}, rows=ALL_ROWS),
    Case("rows-all-and-bias", {"rows": "all", "bias": True}, rows=ALL_ROWS),
]


def case_params(cases=CASES):
    return [pytest.param(c, id=c.id) for c in cases]


def assert_same_function(a, b):
    """Split and unsplit agree to float32 rounding.

    Not bit for bit: TensorFlow's CPU matmul (Eigen) blocks the output
    columns by the matrix width, so a column computed in a narrower matmul
    can round differently (measured: up to ~1e-6 relative). Row splits also
    add two partial products.
    """
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def configs(tmp_path_factory):
    """A copy of configs/ whose growth examples find their base models.

    A config with `base: ../runs/NAME.keras` grows the model that
    `configs/base/NAME.yaml` trains (as its header says to run first): each
    is trained once here, into the copy's `runs/`.
    """
    import shutil

    from splitnet.job import train_file
    from splitnet.spec import load_spec

    top = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "configs", top / "configs")
    (top / "runs").mkdir()
    for path in sorted((top / "configs").glob("*.yaml")):
        base = load_spec(path).base
        if base is not None:
            recipe = top / "configs" / "base" / base.with_suffix(".yaml").name
            assert base.parent.resolve() == (top / "runs").resolve() and recipe.is_file(), path
            if not base.exists():
                train_file(recipe, base, echo=lambda line: None)
    return top / "configs"
