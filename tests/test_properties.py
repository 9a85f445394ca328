"""Property-based tests: random shapes, activations and freeze sets.

For any of them: split computes the same function as unsplit, merge after
split gives back bit-identical weights, AdamW steps keep every frozen entry
bit-identical, and `frozen_masks` agrees with the freeze set.
"""

import keras
import numpy as np
import tensorflow as tf
from conftest import perturb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import splitnet
from splitnet.plan import runs


@st.composite
def index_sets(draw, size):
    """(expression for the spec, the set it means) or None; mixes ints, ranges, negatives, `all`."""
    if draw(st.integers(0, 3)) == 0:
        return None
    chosen = draw(st.sets(st.integers(0, size - 1), min_size=1, max_size=size))
    if len(chosen) == size and draw(st.booleans()):
        return "all", chosen
    items = []
    for start, stop in runs(sorted(chosen)):
        negative = draw(st.booleans())
        if stop - start == 1 and draw(st.booleans()):
            items.append(start - size if negative else start)
        else:
            a, b = (start - size, stop - size) if negative else (start, stop)
            # A stop at the end has no negative form ("-2:0" would be empty): leave it open.
            b_text = "" if stop == size and (negative or draw(st.booleans())) else str(b)
            a_text = "" if start == 0 and draw(st.booleans()) else str(a)
            items.append(f"{a_text}:{b_text}")
    order = draw(st.permutations(items))
    return (order if len(order) > 1 or draw(st.booleans()) else order[0]), chosen


@st.composite
def cases(draw):
    in_dim, units = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    steps = draw(st.sampled_from([None, 3]))  # rank 2 or 3 inputs
    activation = draw(st.sampled_from(["linear", "relu", "tanh", "softmax"]))
    use_bias = draw(st.booleans())
    unit_set = draw(index_sets(units))
    row_set = draw(index_sets(in_dim))
    bias = draw(st.booleans()) if use_bias else False
    if unit_set is None and row_set is None and not bias:
        bias, use_bias = True, True
    rule = {}
    if unit_set:
        rule["units"] = unit_set[0]
    if row_set:
        rule["rows"] = row_set[0]
    if bias:
        rule["bias"] = True
    return {
        "in_dim": in_dim,
        "units": units,
        "steps": steps,
        "activation": activation,
        "use_bias": use_bias,
        "rule": rule,
        "frozen_units": set() if unit_set is None else unit_set[1],
        "frozen_rows": set() if row_set is None else row_set[1],
        "seed": draw(st.integers(0, 2**16)),
    }


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_split_merge_train_properties(case):
    shape = (case["in_dim"],) if case["steps"] is None else (case["steps"], case["in_dim"])
    inputs = keras.Input(shape)
    layer = keras.layers.Dense(case["units"], activation=case["activation"], use_bias=case["use_bias"], name="d")
    model = perturb(keras.Model(inputs, layer(inputs)), seed=case["seed"])
    original = [w.copy() for w in layer.get_weights()]
    split = splitnet.split_model(model, {"d": case["rule"]})

    # frozen_masks agrees with the freeze set (computed here, not by the plan).
    kernel = np.zeros((case["in_dim"], case["units"]), bool)
    kernel[sorted(case["frozen_rows"]), :] = True
    kernel[:, sorted(case["frozen_units"])] = True
    masks = splitnet.frozen_masks(split)["d"]
    np.testing.assert_array_equal(masks["kernel"], kernel)
    if case["use_bias"]:
        bias = np.full(case["units"], bool(case["rule"].get("bias")))
        bias[sorted(case["frozen_units"])] = True
        np.testing.assert_array_equal(masks["bias"], bias)

    # Same function; merge gives back the original weights, bit for bit.
    rng = np.random.default_rng(case["seed"])
    x = rng.normal(size=(5,) + shape).astype("float32")
    np.testing.assert_allclose(np.asarray(split(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)
    for got, want in zip(splitnet.merge_model(split).get_layer("d").get_weights(), original):
        np.testing.assert_array_equal(got, want)

    # A few AdamW steps (weight decay on) keep every frozen entry bit-identical.
    variables = split.trainable_variables
    if not variables:
        return
    optimizer = keras.optimizers.AdamW(learning_rate=0.05, weight_decay=0.1)
    y = rng.normal(size=(5,) + shape[:-1] + (case["units"],)).astype("float32")
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(split(x, training=True) - y))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    after = splitnet.merged_weights(split)["d"]
    frozen = [masks["kernel"], masks["bias"]]
    for old, new, mask in zip(original, after, frozen):
        np.testing.assert_array_equal(new.view(np.uint32)[mask], old.view(np.uint32)[mask])
    assert (after[0] != original[0])[~masks["kernel"]].all()  # weight decay moves every trainable entry
