"""Real architectures, random weights: split, train, merge, save, resume and export.

keras.applications CNNs, a keras.io-style Transformer block, and keras-hub
backbones and a text classifier, built small. Layers are named by their
path, inside graphs and inside subclassed layers alike. For each model:

* the split model computes the same function (before any training);
* a few `fit` steps with AdamW(weight_decay) keep every frozen entry
  bit-identical and move the trainable ones; the optimizer holds state for
  the trainable entries only;
* `merge_model` gives back the original architecture: class, layer paths,
  classes and configs, input names;
* `splitnet.load_model` brings back the split model with its optimizer
  state, and training resumes;
* the SavedModel export reloads in a process that cannot import splitnet and
  is called with the original input names.
"""

import json
import os
import subprocess
import sys

import keras
import keras_hub  # in the test extra
import numpy as np
import pytest

import splitnet
from splitnet import tree

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "dog", "ran", "a", "big"]
SEQ = 8


def nudge(model, seed=0, scale=0.05):
    """Move every float weight off its initial value, keeping activations tame."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if "float" in str(w.dtype):
            w.assign(np.asarray(w) + rng.normal(0.0, scale, size=w.shape).astype(w.dtype))
    return model


@keras.saving.register_keras_serializable(package="zoo")
class TransformerBlock(keras.layers.Layer):
    """As in keras.io's "Text classification with Transformer", with a
    `get_config` that, like many, leaves out the base config (so the name):
    Keras renames such a layer when it loads it."""

    def __init__(self, embed_dim, num_heads, ff_dim, **kwargs):
        super().__init__(**kwargs)
        self.args = {"embed_dim": embed_dim, "num_heads": num_heads, "ff_dim": ff_dim}
        self.att = keras.layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.ffn = keras.Sequential([keras.layers.Dense(ff_dim, activation="relu"), keras.layers.Dense(embed_dim)])
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-6)
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-6)

    def call(self, inputs):
        out1 = self.norm1(inputs + self.att(inputs, inputs))
        return self.norm2(out1 + self.ffn(out1))

    def get_config(self):
        return dict(self.args)


def keras_io_transformer():
    inputs = keras.Input((SEQ,), dtype="int32")  # unnamed, as in the example
    x = keras.layers.Embedding(len(VOCAB), 16)(inputs)
    block = TransformerBlock(16, 2, 32)
    x = block(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="classes")(x)
    model = keras.Model(inputs, outputs, name="text_classifier")
    ffn = block.ffn.layers
    return model, {
        model.layers[1].name: {"rows": "0:10"},  # the unnamed Embedding: old tokens frozen
        f"{block.name}/{block.att.name}": {"heads": [1]},  # a MultiHeadAttention's heads
        f"{block.name}/{block.ffn.name}/{ffn[0].name}": {"units": "0:16"},
        f"{block.name}/{block.ffn.name}/{ffn[1].name}": {"rows": [0, 5, 9]},
        "classes": {"units": [0]},
    }


def convnext_tiny():
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=4)
    return model, {
        "convnext_tiny_stage_0_block_0_pointwise_conv_1": {"units": "0:96"},
        "convnext_tiny_stage_0_block_0_pointwise_conv_2": {"rows": "0:96"},
        "convnext_tiny_head_dense": {"units": [0, 1]},
    }


def mobilenet_v2():
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=4, alpha=0.35)
    return model, {
        "Conv1": {"units": "0:8"},  # filters
        "block_1_project": {"rows": [0, 3, 5], "units": "-2:"},  # input channels and filters
        "Conv_1": {"units": "all"},
        "predictions": {"units": [0, 2]},
    }


def bert_backbone():
    model = keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCAB), num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=SEQ,
        name="bert_backbone",
    )
    return model, {
        "token_embedding": {"rows": "0:10"},
        "segment_embedding": {"units": [0]},  # an Embedding's dimensions
        "transformer_layer_0/self_attention_layer": {"heads": [0]},
        "transformer_layer_0/feedforward_intermediate_dense": {"units": "0:16"},
        "transformer_layer_1/feedforward_output_dense": {"rows": "8:", "bias": True},
        "pooled_dense": {"units": "all"},
    }


def gpt2_backbone():
    model = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(VOCAB), num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=SEQ
    )
    return model, {
        "token_embedding": {"rows": "0:12"},  # tied: the output layer's old tokens too
        "transformer_layer_0/self_attention/query": {"units": [1]},
        "transformer_layer_0/self_attention/attention_output": {"rows": [1]},
        "transformer_layer_0/feedforward_intermediate_dense": {"units": [0, 3, 4, 9, 30]},
    }


def gemma_backbone():
    model = keras_hub.models.GemmaBackbone(
        vocabulary_size=len(VOCAB), num_layers=1, num_query_heads=2, num_key_value_heads=2, hidden_dim=16,
        intermediate_dim=32, head_dim=8,
    )
    return model, {
        "token_embedding": {"rows": "0:12"},
        "decoder_block_0/attention": {"heads": [1]},
        "decoder_block_0/ffw_gating": {"rows": "0:8", "axis": "d"},  # "btd,df->btf"
    }


def bert_classifier():
    backbone, _ = bert_backbone()
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        keras_hub.models.BertTokenizer(vocabulary=VOCAB), sequence_length=SEQ
    )
    model = keras_hub.models.BertTextClassifier(backbone, num_classes=3, preprocessor=preprocessor)
    return model, {
        "bert_backbone/transformer_layer_0/feedforward_intermediate_dense": {"units": "0:16"},
        "logits": {"units": [0]},
    }


# The models whose freeze rules name a layer that a parent layer's Python code calls.
INSIDE_SUBCLASSED_LAYERS = {"keras_io_transformer", "bert_backbone", "gpt2_backbone", "gemma_backbone", "bert_classifier"}

ZOO = {
    "keras_io_transformer": keras_io_transformer,
    "convnext_tiny": convnext_tiny,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v2_in_place": mobilenet_v2,
    "bert_backbone": bert_backbone,
    "gpt2_backbone": gpt2_backbone,
    "gemma_backbone": gemma_backbone,
    "bert_classifier": bert_classifier,
}


def inputs_for(model, n=8, seed=1):
    """A batch in the model's own input structure (raw strings for a task with a preprocessor)."""
    rng = np.random.default_rng(seed)
    if getattr(model, "preprocessor", None) is not None:
        words = VOCAB[5:]
        return [" ".join(rng.choice(words, size=rng.integers(2, 6))) for _ in range(n)]

    def make(tensor):
        shape = (n,) + tuple(SEQ if d is None else d for d in tensor.shape[1:])
        name = tensor.name
        if "float" in str(tensor.dtype):
            return rng.normal(size=shape).astype("float32")
        if "mask" in name:
            return np.ones(shape, dtype=str(tensor.dtype))
        if "segment" in name:
            return np.zeros(shape, dtype=str(tensor.dtype))
        return rng.integers(0, len(VOCAB), size=shape).astype(str(tensor.dtype))

    return keras.tree.map_structure(make, model.input)


def targets_for(model, outputs, seed=2):
    rng = np.random.default_rng(seed)
    if getattr(model, "preprocessor", None) is not None:  # a classifier of raw strings, on logits
        return rng.integers(0, outputs.shape[-1], size=len(outputs))
    if isinstance(outputs, dict) or outputs.shape[-1] > 4:
        return keras.tree.map_structure(lambda o: rng.normal(size=np.shape(o)).astype("float32"), outputs)
    return rng.integers(0, outputs.shape[-1], size=len(outputs))


def loss_for(model, outputs):
    if getattr(model, "preprocessor", None) is not None:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if isinstance(outputs, dict) or outputs.shape[-1] > 4:
        return "mse"
    return "sparse_categorical_crossentropy"


def flat(outputs):
    return [np.asarray(o) for o in keras.tree.flatten(outputs)]


def predict(model, x):
    if getattr(model, "preprocessor", None) is not None:
        return model.predict(x, verbose=0)
    return model(x, training=False)


def assert_close(a, b, rtol=1e-4, atol=1e-5):
    for got, want in zip(flat(a), flat(b)):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def input_names(model):
    """The names a caller uses: the InputLayers' (an unnamed `keras.Input` gets `input_layer...`)."""
    return sorted(layer.name for layer in model.layers if isinstance(layer, keras.layers.InputLayer))


def layer_table(model):
    """Every layer's path, class and config: what 'the same architecture' means.

    Configs are compared as JSON, as Keras saves them (a shape saved as a
    tuple comes back a list).
    """
    return [(key, type(layer).__name__, config_of(layer)) for key, layer in tree.walk(model)]


def config_of(layer):
    try:
        return json.loads(json.dumps(layer.get_config()))
    except NotImplementedError:
        # keras-hub's Gemma RMSNormalization, rebuilt from its config (by
        # Keras' loading as by a copy), cannot give its config again.
        return None


def same_layers(a, b):
    """Same paths and classes, and the same configs wherever both can give one."""
    return len(a) == len(b) and all(
        x[:2] == y[:2] and (x[2] is None or y[2] is None or x[2] == y[2]) for x, y in zip(a, b)
    )


@pytest.fixture(scope="module", params=list(ZOO), ids=list(ZOO))
def trained(request, tmp_path_factory):
    """(name, original, freeze, split-before-training weights, trained split model, x, y, folder)."""
    keras.utils.set_random_seed(0)
    model, freeze = ZOO[request.param]()
    x = inputs_for(model)
    predict(model, x)  # build everything
    nudge(model)
    # keras.applications models are split in the functional form by default (their layers
    # sit in a graph); one of them also in place, as keras-hub models always are.
    split = splitnet.split_model(model, freeze, form="in_place" if request.param.endswith("_in_place") else "auto")
    assert type(split) is type(model)
    assert_close(predict(split, x), predict(model, x))  # same function, before training
    before = splitnet.merged_weights(split)
    outputs = predict(model, x)
    y = targets_for(model, outputs)
    split.compile(optimizer=keras.optimizers.AdamW(0.01, weight_decay=0.1), loss=loss_for(model, outputs))
    split.fit(x, y, epochs=2, batch_size=4, verbose=0)
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, model, freeze, before, split, x, y, folder


def test_frozen_entries_stay_bit_identical_and_the_rest_trains(trained):
    _, model, freeze, before, split, _, _, _ = trained
    masks = splitnet.frozen_masks(split)
    named = {f"{key}/query" if "heads" in rule else key for key, rule in freeze.items()}  # heads: on the projections
    assert named <= set(masks)
    after = splitnet.merged_weights(split)
    for key in masks:
        for (name, mask), old, new in zip(masks[key].items(), before[key], after[key]):
            np.testing.assert_array_equal(new[mask], old[mask])  # bit-identical
            if name != "bias" and (~mask).any():
                assert (new != old)[~mask].mean() > 0.9  # weight decay moves (almost) every trainable entry
    # The original model was not touched.
    for key, weights in splitnet.merged_weights(model).items():
        for old, now in zip(before[key] if key not in freeze else weights, weights):
            np.testing.assert_array_equal(old, now)


def test_optimizer_state_is_the_trainable_fraction(trained):
    _, model, _, _, split, _, _, _ = trained
    trainable = sum(int(np.prod(w.shape)) for w in split.trainable_weights)
    slots = sum(int(np.prod(v.shape)) for v in split.optimizer.variables if len(v.shape))
    assert slots == 2 * trainable  # AdamW: m and v per trainable entry, nothing for frozen ones
    frozen = sum(int(m.sum()) for masks in splitnet.frozen_masks(split).values() for m in masks.values())
    full = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == full - frozen


def test_merge_gives_the_original_architecture(trained):
    _, model, _, _, split, x, _, _ = trained
    merged = splitnet.merge_model(split)
    assert type(merged) is type(model)
    assert same_layers(layer_table(merged), layer_table(model))
    assert input_names(merged) == input_names(model)
    assert not any(splitnet.kinds.is_split(layer) for _, layer in tree.walk(merged))
    assert_close(predict(merged, x), predict(split, x), rtol=1e-5, atol=1e-6)
    for key, weights in splitnet.merged_weights(split).items():
        for got, want in zip(splitnet.merged_weights(merged)[key], weights):
            np.testing.assert_array_equal(got, want)
    if hasattr(model, "backbone"):  # a keras-hub task keeps its parts
        assert type(merged.backbone) is type(model.backbone)
        assert type(merged.preprocessor) is type(model.preprocessor)


def test_save_load_and_resume(trained):
    name, _, _, _, split, x, y, folder = trained
    path = folder / "split.keras"
    split.save(path)
    if name in INSIDE_SUBCLASSED_LAYERS:
        # Keras' own loader rebuilds those layers plain: it must refuse, not train them unsplit.
        with pytest.raises(ValueError, match=r"expected \d variables, but received \d"):
            keras.saving.load_model(path)
    else:
        assert splitnet.kinds.is_split(keras.saving.load_model(path).get_layer(next(iter(trained[2]))))
    loaded = splitnet.load_model(path)
    assert type(loaded) is type(split)
    masks, loaded_masks = splitnet.frozen_masks(split), splitnet.frozen_masks(loaded)
    assert set(masks) == set(loaded_masks)
    for key in masks:
        for kind in masks[key]:
            np.testing.assert_array_equal(loaded_masks[key][kind], masks[key][kind])
    weights = splitnet.merged_weights(loaded)
    for key, values in splitnet.merged_weights(split).items():
        for got, want in zip(weights[key], values):
            np.testing.assert_array_equal(got, want)
    assert int(loaded.optimizer.iterations) == int(split.optimizer.iterations)
    assert type(loaded.optimizer) is type(split.optimizer)
    for a, b in zip(loaded.optimizer.variables, split.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Training resumes: one more epoch on the loaded model keeps the frozen entries.
    loaded.fit(x, y, epochs=1, batch_size=4, verbose=0)
    after = splitnet.merged_weights(loaded)
    for key, layer_masks in masks.items():
        mask = next(iter(layer_masks.values()))
        np.testing.assert_array_equal(after[key][0][mask], weights[key][0][mask])


# Runs in a fresh interpreter where `import splitnet` fails.
CALL_BY_NAME = """
import sys
sys.modules["splitnet"] = None
import numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
inputs = dict(np.load(sys.argv[2]))
signature = loaded.signatures["serving_default"]
outputs = signature(**{name: tf.constant(value) for name, value in inputs.items()})
np.savez(sys.argv[3], **{name: value.numpy() for name, value in outputs.items()})
"""


def test_export_is_called_by_the_original_input_names(trained):
    name, model, _, _, split, x, _, folder = trained
    if getattr(model, "preprocessor", None) is not None:
        # A keras-hub task's graph starts after its preprocessor (which the
        # export does not include): feed it the preprocessed batch.
        features = model.preprocessor(x)
        x = {k: np.asarray(v).astype(keras.backend.standardize_dtype(model.input[k].dtype)) for k, v in features.items()}
    merged, diff = splitnet.export_saved_model(split, folder / "export")
    assert diff <= 1e-5
    if isinstance(x, dict):
        named = dict(x)
    else:
        (name,) = input_names(model)
        named = {name: x}
    np.savez(folder / "x.npz", **named)
    result = subprocess.run(
        [sys.executable, "-c", CALL_BY_NAME, str(folder / "export"), str(folder / "x.npz"), str(folder / "y.npz")],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        cwd=folder,  # not the repository: splitnet's source is not importable either
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = np.load(folder / "y.npz")
    want = flat(merged(x, training=False))
    assert len(got.files) == len(want)
    assert_close(sorted((got[k] for k in got.files), key=lambda a: a.shape), sorted(want, key=lambda a: a.shape), 1e-5, 1e-5)
