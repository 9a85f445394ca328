"""The layer kinds beyond Dense: Conv1D/2D/3D, EinsumDense, Embedding, ReversibleEmbedding.

One table of layers (LAYERS) and one of rules (RULES); each test runs the
pairs it applies to. Expected masks are computed here from the rule and the
layer's axes, independently of splitnet's plan; weights are perturbed
first, so exactness checks compare something real.
"""

import dataclasses
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import perturb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import splitnet
from splitnet import functional, kinds
from splitnet.verify import compare, snapshot


@dataclasses.dataclass
class Layer:
    """A one-layer model (the layer is named "L") and where its axes are."""

    make: object  # () -> the layer
    input_shape: tuple
    kernel: str = "kernel"  # the weight the rules index
    row_axis: int = -2
    unit_axis: int = -1
    bias_axis: int | None = 0  # the units axis in the bias; None: not per unit
    ids: int = 0  # vocabulary size for integer inputs, 0 for float inputs
    reverse: bool = False  # ReversibleEmbedding, called both ways

    def model(self):
        inputs = keras.Input(self.input_shape, dtype="int32" if self.ids else "float32")
        layer = self.make()
        outputs = layer(layer(inputs), reverse=True) if self.reverse else layer(inputs)
        return keras.Model(inputs, outputs)

    def data(self, n=6, seed=0):
        rng = np.random.default_rng(seed)
        if self.ids:
            return rng.integers(0, self.ids, size=(n,) + self.input_shape).astype("int32")
        return rng.normal(size=(n,) + self.input_shape).astype("float32")


L = "L"
LAYERS = {
    "conv1d-causal": Layer(lambda: keras.layers.Conv1D(6, 3, padding="causal", dilation_rate=2, activation="relu", name=L), (9, 5)),
    "conv2d": Layer(lambda: keras.layers.Conv2D(6, 3, strides=2, padding="same", name=L), (7, 7, 4)),
    "conv3d": Layer(lambda: keras.layers.Conv3D(5, 2, activation="tanh", name=L), (4, 4, 4, 4)),
    "einsum-query": Layer(
        lambda: keras.layers.EinsumDense("abc,cde->abde", (3, 4, 2), bias_axes="de", name=L), (3, 8), row_axis=0, unit_axis=1
    ),
    "einsum-output": Layer(
        lambda: keras.layers.EinsumDense("abcd,cde->abe", (3, 8), bias_axes="e", name=L), (3, 4, 2), row_axis=0, unit_axis=2
    ),
    "einsum-gemma": Layer(
        lambda: keras.layers.EinsumDense("btd,ndh->btnh", (3, 4, 2), name=L), (3, 8), row_axis=1, unit_axis=0, bias_axis=None
    ),
    "einsum-shared-bias": Layer(
        lambda: keras.layers.EinsumDense("abc,cde->abde", (3, 4, 2), bias_axes="e", activation="relu", name=L),
        (3, 8), row_axis=0, unit_axis=1, bias_axis=None,
    ),
    "einsum-ellipsis": Layer(lambda: keras.layers.EinsumDense("...b,bc->...c", 6, bias_axes="c", name=L), (3, 8)),
    "embedding": Layer(lambda: keras.layers.Embedding(12, 6, mask_zero=True, name=L), (5,), "embeddings", 0, 1, None, ids=12),
    "reversible-tied": Layer(
        lambda: keras.layers.ReversibleEmbedding(12, 6, logit_soft_cap=5.0, name=L), (5,), "embeddings", 0, 1, None, 12, True
    ),
    "reversible-untied": Layer(
        lambda: keras.layers.ReversibleEmbedding(12, 6, tie_weights=False, name=L), (5,), "embeddings", 0, 1, None, 12, True
    ),
}

RULES = {
    "units": {"units": [0, 2]},
    "rows": {"rows": "1:3"},
    "both-negative-open": {"units": "-2:", "rows": [0]},
    "units-bias": {"units": ":1", "bias": True},
    "all-units": {"units": "all"},
    "all-rows": {"rows": "all"},
    "bias": {"bias": True},
    "rows-bias": {"rows": [0, 2], "bias": True},
}


def has_bias(layer):
    return any(w.name == "bias" for w in layer.weights)


def pairs(rules=RULES):
    out = []
    for layer_name, spec in LAYERS.items():
        for rule_name, rule in rules.items():
            if "bias" in rule and (spec.kernel != "kernel" or layer_name == "einsum-gemma"):
                continue  # no bias (refusal tested below)
            out.append(pytest.param(layer_name, rule, id=f"{layer_name}-{rule_name}"))
    return out


def indices(value, size):
    """The set an index expression means (a small resolver of its own, not splitnet's)."""
    if value is None:
        return []
    if value == "all":
        return list(range(size))
    out = []
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, int):
            out.append(item % size)
        else:
            a, b = item.split(":")
            out += list(range(size))[slice(int(a) if a else None, int(b) if b else None)]
    return sorted(out)


def along(shape, axis, chosen):
    """A bool mask of `shape`, True at `chosen` along `axis`."""
    mask = np.zeros(shape, dtype=bool)
    index = [slice(None)] * len(shape)
    index[axis] = chosen
    mask[tuple(index)] = True
    return mask


def expected_masks(spec, layer, rule):
    """What must be frozen, from the rule and the layer's axes alone."""
    values = {w.name: np.asarray(w) for w in layer.weights}
    kernel = values[spec.kernel]
    rows = indices(rule.get("rows"), kernel.shape[spec.row_axis])
    units = indices(rule.get("units"), kernel.shape[spec.unit_axis])
    all_units = len(units) == kernel.shape[spec.unit_axis]
    all_rows = len(rows) == kernel.shape[spec.row_axis]
    bias = values.get("bias")
    nothing_trains = all_units or (all_rows and (rule.get("bias", False) or bias is None))
    masks = {spec.kernel: along(kernel.shape, spec.row_axis, rows) | along(kernel.shape, spec.unit_axis, units)}
    if nothing_trains:
        masks[spec.kernel][...] = True
    if spec.kernel == "kernel":
        if bias is None:
            masks["bias"] = np.zeros((0,), dtype=bool)
        else:
            mask = np.full(bias.shape, bool(rule.get("bias")) or nothing_trains)
            if spec.bias_axis is not None:
                mask |= along(bias.shape, spec.bias_axis, units)
            masks["bias"] = mask
    if "reverse_embeddings" in values:  # (dimensions, vocabulary): the same tokens and dimensions
        shape = values["reverse_embeddings"].shape
        masks["reverse_embeddings"] = along(shape, 1, rows) | along(shape, 0, units)
        if nothing_trains:
            masks["reverse_embeddings"][...] = True
    return masks


def built(layer_name, seed=0):
    spec = LAYERS[layer_name]
    model = spec.model()
    x = spec.data()
    model(x)
    perturb(model, seed)
    LAYERS_BY_MODEL[id(model)] = layer_name
    return spec, model, x


def functional_applies(layer_name, rule):
    """Whether the functional form can express this split (written out here, not asked of splitnet).

    It cannot where the bias would be held apart from every kernel piece
    (frozen with no frozen rows and some units training; training while every
    row is frozen; a bias without the units axis), for an Embedding with
    mask_zero (its mask), and for a ReversibleEmbedding (its reverse call).
    """
    if layer_name in ("embedding", "reversible-tied", "reversible-untied"):
        return False
    has_bias = LAYERS[layer_name].kernel == "kernel" and layer_name != "einsum-gemma"
    units, rows = rule.get("units"), rule.get("rows")
    if units == "all" or not has_bias:
        return True  # nothing trains (one frozen piece), or no bias to hold
    if layer_name == "einsum-shared-bias":  # a bias without the heads axis is held alone
        return rows == "all" and bool(rule.get("bias"))
    if rule.get("bias") and rows is None:
        return False  # the bias of the training units is frozen and held alone
    return rows != "all" or bool(rule.get("bias"))


def split_in(model, rule, form):
    split = splitnet.split_model(model, {L: rule}, form=form)
    layer = split.get_layer(L)
    if form == "auto" and functional_applies(LAYERS_BY_MODEL[id(model)], rule):
        assert functional.is_split(layer), "auto: the functional form applies"
        assert type(layer).__name__ == "Functional"
    else:
        assert kinds.split_kind_of(layer) is kinds.kind_of(model.get_layer(L))
    return split


LAYERS_BY_MODEL = {}


@pytest.mark.parametrize("form", ["in_place", "auto"])
@pytest.mark.parametrize("layer_name, rule", pairs())
def test_split_is_exact_and_merges_back(layer_name, rule, form):
    spec, model, x = built(layer_name)
    original = model.get_layer(L)
    split = split_in(model, rule, form)
    # Same function.
    np.testing.assert_allclose(split(x), model(x), rtol=1e-5, atol=1e-5)
    # Masks, independently computed.
    masks = splitnet.frozen_masks(split)[L]
    want = expected_masks(spec, original, rule)
    assert set(masks) == set(want)
    for name in want:
        np.testing.assert_array_equal(masks[name], want[name], err_msg=name)
    # The pieces hold exactly the original weights, and merge gives the original layer.
    for got, weight in zip(splitnet.merged_weights(split)[L], original.weights):
        np.testing.assert_array_equal(got, np.asarray(weight))
    merged = splitnet.merge_model(split).get_layer(L)
    assert type(merged) is type(original)
    assert merged.get_config() == original.get_config()
    for a, b in zip(merged.weights, original.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The trainable pieces hold exactly the entries not frozen.
    trainable = sum(int(np.prod(w.shape)) for w in split.trainable_weights)
    assert trainable == sum(int((~m).sum()) for m in want.values())


TRAINING_RULES = {k: RULES[k] for k in ("both-negative-open", "rows-bias", "units")}


@pytest.mark.parametrize("optimizer, form", [("adamw", "in_place"), ("sgd", "in_place"), ("adamw", "auto")])
@pytest.mark.parametrize("layer_name, rule", pairs(TRAINING_RULES))
def test_frozen_entries_stay_bit_identical_under_weight_decay(layer_name, rule, optimizer, form):
    spec, model, x = built(layer_name)
    split = split_in(model, rule, form)
    before = splitnet.merged_weights(split)[L]
    masks = splitnet.frozen_masks(split)[L]
    y = np.random.default_rng(1).normal(size=np.shape(model(x))).astype("float32")
    if optimizer == "adamw":
        opt, slots = keras.optimizers.AdamW(0.05, weight_decay=0.5), 2
    else:
        opt, slots = keras.optimizers.SGD(0.05, momentum=0.9, weight_decay=0.5), 1
    split.compile(optimizer=opt, loss="mse")
    split.fit(x, y, epochs=3, batch_size=3, verbose=0)
    after = splitnet.merged_weights(split)[L]
    for name, old, new in zip(masks, before, after):
        frozen = masks[name]
        np.testing.assert_array_equal(new[frozen], old[frozen], err_msg=name)
        if (~frozen).any():
            assert (new != old)[~frozen].mean() > 0.5, name
    # Optimizer state for the trainable entries only.
    trainable = sum(int(np.prod(w.shape)) for w in split.trainable_weights)
    state = sum(int(np.prod(v.shape)) for v in split.optimizer.variables if len(v.shape))
    assert state == slots * trainable
    assert trainable == sum(int((~m).sum()) for m in masks.values())


@pytest.mark.parametrize("layer_name", list(LAYERS))
def test_keras_file_round_trip_in_safe_mode(layer_name, tmp_path):
    spec, model, x = built(layer_name)
    rule = {"rows": [1], "units": [0]}
    split = splitnet.split_model(model, {L: rule})
    split.compile(optimizer=keras.optimizers.AdamW(0.01, weight_decay=0.1), loss="mse")
    split.fit(x, np.asarray(split(x)) + 0.1, epochs=1, verbose=0)
    split.save(tmp_path / "split.keras")
    for loaded in (splitnet.load_model(tmp_path / "split.keras", safe_mode=True), keras.saving.load_model(tmp_path / "split.keras", safe_mode=True)):
        assert kinds.is_split(loaded.get_layer(L))
        np.testing.assert_array_equal(loaded(x), split(x))
        for name, mask in splitnet.frozen_masks(split)[L].items():
            np.testing.assert_array_equal(splitnet.frozen_masks(loaded)[L][name], mask)
    merged = splitnet.merge_model(split)
    merged.save(tmp_path / "merged.keras")
    plain = keras.saving.load_model(tmp_path / "merged.keras", safe_mode=True)
    assert type(plain.get_layer(L)) is type(model.get_layer(L))
    np.testing.assert_allclose(plain(x), split(x), rtol=1e-5, atol=1e-6)


REFUSALS = [
    ("conv2d", {"units": [0]}, lambda: keras.layers.Conv2D(4, 3, groups=2, name=L), "groups=2; splitnet splits convolutions with groups=1"),
    ("embedding", {"rows": [0], "bias": True}, None, "freeze.L.bias: layer 'L' has no bias (an embedding)"),
    ("embedding", {"rows": [12]}, None, "freeze.L.rows[0]: 12 is out of range, layer 'L' has 12 token ids"),
    ("einsum-query", {"units": [0], "axis": "e"}, None, None),  # allowed: the head_dim axis
    ("einsum-query", {"units": [0], "axis": "c"}, None, "freeze.L.axis: axis 'c' is summed over in 'abc,cde->abde', so it names rows; give rows"),
    ("einsum-query", {"rows": [0], "axis": "z"}, None, "freeze.L.axis: axis 'z' is not a kernel axis of 'abc,cde->abde' (kernel 'cde')"),
    ("einsum-query", {"units": [4]}, None, "freeze.L.units[0]: 4 is out of range, layer 'L' has 4 units (axis 'd')"),
    ("conv2d", {"units": [0], "axis": "d"}, None, "freeze.L.axis: layer 'L' is a Conv2D; axis: applies to EinsumDense layers"),
]


@pytest.mark.parametrize("layer_name, rule, make, message", REFUSALS)
def test_refusals_say_where_and_what(layer_name, rule, make, message):
    spec = LAYERS[layer_name]
    if make is not None:
        spec = dataclasses.replace(spec, make=make)
    model = spec.model()
    model(spec.data())
    if message is None:
        layer = splitnet.split_model(model, {L: rule}).get_layer(L)
        assert kinds.any_kind_of(layer).plan_of(layer).unit_axis == 2  # 'e' in kernel 'cde'
        return
    with pytest.raises(splitnet.SpecError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        splitnet.split_model(model, {L: rule})


def test_channels_first_is_refused():
    layer = keras.layers.Conv2D(4, 3, data_format="channels_first", name=L)
    inputs = keras.Input((3, 8, 8))
    model = keras.Model(inputs, layer(inputs))
    with pytest.raises(splitnet.SpecError, match="data_format='channels_first'; splitnet splits channels_last"):
        splitnet.split_model(model, {L: {"units": [0]}})


# -- attention heads --------------------------------------------------------------


def attention_model(heads=4, key_dim=3):
    inputs = keras.Input((5, 8))
    attention = keras.layers.MultiHeadAttention(heads, key_dim, name="attn")
    return keras.Model(inputs, attention(inputs, inputs))


def test_heads_freeze_the_same_heads_in_all_four_projections():
    model = attention_model()
    x = np.random.default_rng(0).normal(size=(4, 5, 8)).astype("float32")
    model(x)
    perturb(model)
    split = splitnet.split_model(model, {"attn": {"heads": [1, 3]}})
    np.testing.assert_allclose(split(x), model(x), rtol=1e-5, atol=1e-5)
    masks = splitnet.frozen_masks(split)
    for name in ("query", "key", "value"):  # kernel (hidden, heads, key_dim), bias (heads, key_dim)
        np.testing.assert_array_equal(masks[f"attn/{name}"]["kernel"], along((8, 4, 3), 1, [1, 3]))
        np.testing.assert_array_equal(masks[f"attn/{name}"]["bias"], along((4, 3), 0, [1, 3]))
    # attention_output: kernel (heads, key_dim, hidden); its bias is not per head and trains.
    np.testing.assert_array_equal(masks["attn/attention_output"]["kernel"], along((4, 3, 8), 0, [1, 3]))
    assert not masks["attn/attention_output"]["bias"].any()
    split.compile(optimizer=keras.optimizers.AdamW(0.05, weight_decay=0.5), loss="mse")
    before = splitnet.merged_weights(split)
    split.fit(x, np.asarray(model(x)) + 1.0, epochs=2, batch_size=2, verbose=0)
    after = splitnet.merged_weights(split)
    for key, layer_masks in masks.items():
        for (name, mask), old, new in zip(layer_masks.items(), before[key], after[key]):
            np.testing.assert_array_equal(new[mask], old[mask], err_msg=f"{key}.{name}")
            assert (new != old)[~mask].all(), f"{key}.{name}"
    merged = splitnet.merge_model(split)
    assert type(merged.get_layer("attn")) is keras.layers.MultiHeadAttention
    assert merged.get_layer("attn").get_config() == model.get_layer("attn").get_config()


def test_heads_rules_are_refused_where_they_do_not_apply():
    model = attention_model()
    model(np.zeros((1, 5, 8), "float32"))
    with pytest.raises(splitnet.SpecError, match=r"freeze.attn.heads\[0\]: 4 is out of range, layer 'attn' has 4 heads"):
        splitnet.split_model(model, {"attn": {"heads": [4]}})
    with pytest.raises(splitnet.SpecError, match="layer 'attn/query' is named twice \\(also by the heads: rule of 'attn'\\)"):
        splitnet.split_model(model, {"attn": {"heads": [0]}, "attn/query": {"units": [1]}})
    split = splitnet.split_model(model, {"attn": {"heads": [0], "bias": False}})  # false is the default
    with pytest.raises(splitnet.SpecError, match="freeze.attn: layer 'attn' is already split; merge the model first"):
        splitnet.split_model(split, {"attn": {"heads": [1]}})
    with pytest.raises(splitnet.SpecError, match="freeze.attn.units: heads: freezes the same heads"):
        splitnet.split_model(model, {"attn": {"heads": [0], "units": [1]}})
    with pytest.raises(splitnet.SpecError, match="freeze.attn/query.heads: layer 'attn/query' \\(EinsumDense\\) has no EinsumDense 'query'"):
        splitnet.split_model(model, {"attn/query": {"heads": [0]}})


# -- properties over shapes and index sets ---------------------------------------------


@st.composite
def subsets(draw, size):
    chosen = draw(st.sets(st.integers(0, size - 1), max_size=size))
    return sorted(chosen)


@st.composite
def kind_cases(draw):
    kind = draw(st.sampled_from(["conv", "einsum", "embedding"]))
    rows, units = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    frozen_rows, frozen_units = draw(subsets(rows)), draw(subsets(units))
    if not frozen_rows and not frozen_units:
        frozen_units = [0]
    return kind, rows, units, frozen_rows, frozen_units, draw(st.integers(0, 2**16))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind_cases())
def test_properties_over_shapes_and_index_sets(case):
    kind, rows, units, frozen_rows, frozen_units, seed = case
    if kind == "conv":
        spec = Layer(lambda: keras.layers.Conv2D(units, 2, padding="same", name=L), (3, 3, rows))
    elif kind == "einsum":
        spec = Layer(
            lambda: keras.layers.EinsumDense("abc,cde->abde", (2, units, 2), bias_axes="de", name=L), (2, rows),
            row_axis=0, unit_axis=1,
        )
    else:
        spec = Layer(lambda: keras.layers.ReversibleEmbedding(rows, units, name=L), (4,), "embeddings", 0, 1, None, rows, True)
    model = spec.model()
    x = spec.data(n=3, seed=seed)
    model(x)
    perturb(model, seed)
    rule = {}
    if frozen_rows:
        rule["rows"] = frozen_rows
    if frozen_units:
        rule["units"] = frozen_units
    split = splitnet.split_model(model, {L: rule})
    np.testing.assert_allclose(split(x), model(x), rtol=1e-5, atol=1e-4)
    want = expected_masks(spec, model.get_layer(L), rule)
    for name, mask in splitnet.frozen_masks(split)[L].items():
        np.testing.assert_array_equal(mask, want[name])
    for got, weight in zip(splitnet.merged_weights(split)[L], model.get_layer(L).weights):
        np.testing.assert_array_equal(got, np.asarray(weight))


# -- one model with every kind: train, export, reload without splitnet ----------------

CALL = """
import sys
sys.modules["splitnet"] = None
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], loaded.serve(tf.constant(x)).numpy())
"""


def every_kind():
    """A tiny language model: tied token embedding, a causal convolution, attention, the tied head."""
    inputs = keras.Input((6,), dtype="int32", name="tokens")
    embed = keras.layers.ReversibleEmbedding(20, 8, name="embed")
    x = embed(inputs)
    x = keras.layers.Conv1D(8, 3, padding="causal", activation="relu", name="conv")(x)
    x = x + keras.layers.MultiHeadAttention(2, 4, name="attn")(x, x, use_causal_mask=True)
    x = keras.layers.Dense(8, name="mix")(x)
    return keras.Model(inputs, embed(x, reverse=True), name="tiny_lm")


def test_every_kind_in_one_model_trains_and_exports(tmp_path):
    model = every_kind()
    x = np.random.default_rng(0).integers(0, 20, size=(8, 6)).astype("int32")
    model(x)
    perturb(model)
    freeze = {"embed": {"rows": "0:16"}, "conv": {"units": "0:4"}, "attn": {"heads": [0]}, "mix": {"rows": [1, 2]}}
    split = splitnet.split_model(model, freeze)
    np.testing.assert_allclose(split(x), model(x), rtol=1e-4, atol=1e-4)
    y = np.roll(x, -1, axis=1)
    split.compile(optimizer=keras.optimizers.AdamW(0.01, weight_decay=0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = snapshot(split)
    split.fit(x, y, epochs=2, batch_size=4, verbose=0)
    check = compare(before, snapshot(split))
    assert check.changed == 0 and check.frozen > 0 and check.moved > 0
    merged, diff = splitnet.export_saved_model(split, tmp_path / "export")
    assert diff <= 1e-5
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        [sys.executable, "-c", CALL, str(tmp_path / "export"), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), split(x), rtol=1e-5, atol=1e-5)
    assert [type(layer).__name__ for layer in merged.layers] == [type(layer).__name__ for layer in model.layers]


@pytest.mark.parametrize("layer_name", list(LAYERS))
def test_gradients_match_the_plain_layer(layer_name):
    """The trainable pieces get exactly the plain layer's gradient entries; the input its gradient."""
    import tensorflow as tf

    spec, model, x = built(layer_name)
    split = splitnet.split_model(model, {L: {"units": [0, 2], "rows": [1]}}, form="in_place")  # its pieces' variables
    x = tf.constant(x)
    weights = np.random.default_rng(3).normal(size=np.shape(model(x))).astype("float32")

    def grads(m, variables):
        with tf.GradientTape() as tape:
            if not spec.ids:
                tape.watch(x)
            loss = tf.reduce_sum(m(x) * weights)
        return tape.gradient(loss, ([] if spec.ids else [x]) + variables)

    plain_layer = model.get_layer(L)
    plain = grads(model, list(plain_layer.weights))
    pieces = split.get_layer(L).piece_variables()
    trainable = [v for _, _, variables in pieces for v in variables if v.trainable]
    split_grads = grads(split, trainable)
    if not spec.ids:
        np.testing.assert_allclose(split_grads[0], plain[0], rtol=1e-4, atol=1e-4)
        plain, split_grads = plain[1:], split_grads[1:]
    plain_kernel = np.asarray(tf.convert_to_tensor(plain[0]))
    got = iter(split_grads)
    for kernel_mask, bias_mask, variables in pieces:
        masks = ((bias_mask, plain[-1]),) if not kernel_mask.any() else ((kernel_mask, plain_kernel), (bias_mask, plain[-1]))
        for variable, (mask, full) in zip(variables, masks):  # a bias held on its own: no kernel
            if variable.trainable:
                grad = np.asarray(tf.convert_to_tensor(next(got)))
                np.testing.assert_allclose(grad.ravel(), np.asarray(tf.convert_to_tensor(full))[mask], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layer_name", ["conv2d", "einsum-query", "embedding", "reversible-tied", "reversible-untied"])
def test_mixed_precision(layer_name):
    """Float16 compute with float32 variables: the pieces compute as the plain layer and stay exact."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        spec, model, x = built(layer_name)
        split = splitnet.split_model(model, {L: {"units": [0], "rows": [1, 2]}})
        assert split(x).dtype == model(x).dtype
        np.testing.assert_allclose(np.asarray(split(x), "float32"), np.asarray(model(x), "float32"), rtol=2e-2, atol=2e-2)
        before, masks = splitnet.merged_weights(split)[L], splitnet.frozen_masks(split)[L]
        split.compile(optimizer=keras.optimizers.AdamW(0.01, weight_decay=0.1), loss="mse")
        split.fit(x, np.asarray(model(x), "float32") + 1.0, epochs=2, batch_size=3, verbose=0)
        for mask, old, new in zip(masks.values(), before, splitnet.merged_weights(split)[L]):
            assert old.dtype == np.float32
            np.testing.assert_array_equal(new[mask], old[mask])
            assert (new != old)[~mask].any()
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("how", ["self", "cross-with-mask", "causal", "query-mask", "scores"])
def test_heads_go_through_attention_in_their_groups(how):
    """A `heads:` rule computes each head group's attention apart: same outputs and gradients."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    attention = keras.layers.MultiHeadAttention(4, 3, value_dim=2, name="attn")
    query_in, value_in = keras.Input((5, 8)), keras.Input((6, 8))
    if how == "self":
        model = keras.Model(query_in, attention(query_in, query_in))
    elif how == "cross-with-mask":
        mask_in = keras.Input((5, 6), dtype="bool")
        model = keras.Model([query_in, value_in, mask_in], attention(query_in, value_in, attention_mask=mask_in))
    elif how == "causal":
        model = keras.Model(query_in, attention(query_in, query_in, use_causal_mask=True))
    elif how == "query-mask":
        ids = keras.Input((5,), dtype="int32")
        x = keras.layers.Embedding(9, 8, mask_zero=True)(ids)
        model = keras.Model(ids, attention(x, x))
    else:
        out, scores = attention(query_in, query_in, return_attention_scores=True)
        model = keras.Model(query_in, [out, scores])
    inputs = {
        "self": [rng.normal(size=(3, 5, 8))],
        "causal": [rng.normal(size=(3, 5, 8))],
        "scores": [rng.normal(size=(3, 5, 8))],
        "cross-with-mask": [rng.normal(size=(3, 5, 8)), rng.normal(size=(3, 6, 8)), rng.random((3, 5, 6)) > 0.3],
        "query-mask": [np.array([[1, 2, 0, 0, 3], [4, 5, 6, 7, 8], [0, 1, 0, 1, 0]])],
    }[how]
    inputs = [tf.constant(a.astype("float32") if a.dtype == np.float64 else a) for a in inputs]
    model(inputs)
    perturb(model)
    split = splitnet.split_model(model, {"attn": {"heads": [0, 2]}})
    layer = split.get_layer("attn")
    assert "call" in vars(layer)  # computed per head group
    floats = [x for x in inputs if x.dtype == tf.float32]

    def outputs_and_grads(m):
        with tf.GradientTape() as tape:
            tape.watch(floats)
            out = m(inputs)
            out = out[0] if isinstance(out, list) else out
            loss = tf.reduce_sum(out * np.linspace(-1, 1, int(np.prod(out.shape))).reshape(out.shape).astype("float32"))
        return out, tape.gradient(loss, floats)

    want, want_grads = outputs_and_grads(model)
    got, got_grads = outputs_and_grads(split)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(got_grads, want_grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
