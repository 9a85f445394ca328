"""Attention computed per head group: what makes a `heads:` rule fast.

When the four projections of a Keras `MultiHeadAttention` are split along
the same heads (what a `heads:` rule does), each group of heads (trainable,
frozen) can go through the attention on its own: its queries, keys and
values come straight from the projections' pieces, its attention is
computed apart, and the output projection's row pieces read each group's
result directly. Nothing joins the groups until the output, so TensorFlow
sees that the frozen heads' path has no trainable variable and computes no
gradient through it (unless the layer's inputs need one). The function is
the same: attention is computed per head anyway.

This changes only how the layer computes (its `call`, on the instance);
its config and weights are Keras' own. It applies to Keras'
`MultiHeadAttention` itself (not subclasses, whose `call` may differ),
without a gate, and falls back to the plain `call` when attention scores
are asked for.
"""

from __future__ import annotations

import types

import keras

from splitnet import compat, tree

PROJECTIONS = ("query", "key", "value", "attention_output")


def group_heads(model):
    """Compute every suitable `MultiHeadAttention` of `model` per head group (see module doc)."""
    for _, layer in tree.walk(model):
        if type(layer) is keras.layers.MultiHeadAttention and _groups(layer) is not None:
            layer.call = types.MethodType(_grouped_call, layer)


def _projections(layer):
    found = {sub.name: sub for sub in compat.sublayers(layer)}
    return [found.get(name) for name in PROJECTIONS]


def _groups(layer):
    """The head groups if all four projections are split along the same heads alone, else None."""
    from splitnet.kinds.einsum import SplitEinsumDense

    if compat.attention_uses_gate(layer):
        return None
    projections = _projections(layer)
    if not all(isinstance(p, SplitEinsumDense) for p in projections):
        return None
    *qkv, output = (p.plan for p in projections)
    heads = qkv[0].frozen_units
    if not heads or any(p.frozen_units != heads or p.frozen_rows or p.bias_frozen or p.fully_frozen for p in qkv):
        return None
    if output.frozen_rows != heads or output.frozen_units or output.fully_frozen or len(output.row_blocks) != 2:
        return None
    if any(p.unit_axis != 1 or p.row_axis != 0 for p in qkv) or output.row_axis != 0:
        return None  # not the default heads axes of Keras' equations
    return heads


def _grouped_call(
    self,
    query,
    value,
    key=None,
    query_mask=None,
    value_mask=None,
    key_mask=None,
    attention_mask=None,
    return_attention_scores=False,
    training=None,
    use_causal_mask=False,
):
    plain = keras.layers.MultiHeadAttention.call
    if return_attention_scores or _groups(self) is None:
        return plain(
            self, query, value, key, query_mask, value_mask, key_mask, attention_mask,
            return_attention_scores, training, use_causal_mask,
        )
    if key is None:
        key = value
    # The masks, as `MultiHeadAttention.call` makes them.
    query_mask = compat.take_keras_mask(query)
    compat.take_keras_mask(value)
    compat.take_keras_mask(key)
    causal_only = (
        use_causal_mask
        and query_mask is None
        and value_mask is None
        and key_mask is None
        and attention_mask is None
        and compat.attention_sliding_window(self) is None
    )
    if causal_only:
        attention_mask = None
    else:
        attention_mask = compat.attention_mask(
            self, query, value, query_mask, value_mask, key_mask, attention_mask, use_causal_mask
        )
    extra = {"use_causal_mask": True} if causal_only else {}
    query_dense, key_dense, value_dense, output_dense = _projections(self)
    groups = zip(query_dense.head_blocks(query), key_dense.head_blocks(key), value_dense.head_blocks(value))
    outputs = [self._compute_attention(q, k, v, attention_mask, training, False, **extra)[0] for q, k, v in groups]
    output = output_dense.from_head_blocks(outputs)
    if query_mask is not None:
        compat.set_keras_mask(output, query_mask)
    return output
