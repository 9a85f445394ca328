"""Conv1D, Conv2D, Conv3D: `units` are output filters, `rows` input channels.

The kernel has shape (*kernel_size, in_channels, filters): `units` select
`kernel[..., :, j]` (and `bias[j]`), `rows` select `kernel[..., i, :]`.

A Conv2D convolves with its whole kernel, assembled from the pieces each
step, and its gradient computes the weight gradient of the trainable
pieces only (`Pieces.apply_whole`): narrower convolutions run slower per
filter on CPU than one whole one. Elsewhere (Conv1D, Conv3D, dilation) each
piece is a convolution of the input channels it reads with its filters;
pieces of the same filters are summed (a convolution is linear in its input
channels), and the filter blocks are joined in the original order.
"""

from __future__ import annotations

import keras
from keras import ops

from splitnet.kinds.pieces import KernelSplitLayer, Kind, split_class


class _SplitConv(KernelSplitLayer):
    """A Conv1D/2D/3D whose chosen filters and input channels are frozen, exactly.

    Made by `splitnet.split_model` from a built convolution, in place; see
    `SplitDense` for how the pieces train, save and merge.

    Example:
        >>> import keras, splitnet
        >>> inputs = keras.Input((8, 8, 3))
        >>> model = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="c")(inputs))
        >>> layer = splitnet.split_model(model, {"c": {"units": [0]}}, form="in_place").get_layer("c")
        >>> [tuple(w.shape) for w in layer.trainable_weights]
        [(3, 3, 3, 3), (3,)]
    """

    kind_name = "Conv"

    def call(self, inputs):
        padding = self.padding
        if padding == "causal":  # as Conv1D.call does
            inputs = ops.pad(inputs, self._compute_causal_padding())
            padding = "valid"

        def convolve(x, kernel):
            return ops.conv(
                x,
                kernel,
                strides=list(self.strides),
                padding=padding,
                dilation_rate=self.dilation_rate,
                data_format=self.data_format,
            )

        if self._whole_kernel(padding):
            y = self._tables[0].apply_whole(inputs, convolve, *self._conv2d_grads(padding), -1, -1)
        else:
            y = self._tables[0].apply(inputs, convolve, -1, -1)
        return y if self.activation is None else self.activation(y)

    def _whole_kernel(self, padding):
        """Whether to convolve with the whole kernel (see `Pieces.apply_whole`).

        Narrower convolutions run slower per filter than the whole one, so a
        split Conv2D convolves with the whole kernel and computes the weight
        gradient of its trainable pieces only. TensorFlow's own gradient
        kernels are used for that, for the cases they cover exactly as the
        forward pass does: 2-D, no dilation, `same` or `valid` padding.
        """
        return self.rank == 2 and tuple(self.dilation_rate) == (1, 1) and padding in ("same", "valid") and len(self._tables[0].plan.pieces) > 1

    def _conv2d_grads(self, padding):
        import tensorflow as tf

        strides = [1, *self.strides, 1]
        pad = padding.upper()

        def input_grad(x, kernel, dy):
            return tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=kernel, out_backprop=dy, strides=strides, padding=pad
            )

        def kernel_grad(x, dy, shape):
            return tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=shape, out_backprop=dy, strides=strides, padding=pad)

        return input_grad, kernel_grad


SplitConv1D = split_class(keras.layers.Conv1D, _SplitConv, "SplitConv1D")
SplitConv2D = split_class(keras.layers.Conv2D, _SplitConv, "SplitConv2D")
SplitConv3D = split_class(keras.layers.Conv3D, _SplitConv, "SplitConv3D")


class _ConvKind(Kind):
    name = "Conv"
    splits = {keras.layers.Conv1D: SplitConv1D, keras.layers.Conv2D: SplitConv2D, keras.layers.Conv3D: SplitConv3D}
    units_key = "filters"

    def plan(self, layer, rule, where):
        """A checked `KernelPlan`: rows along the input-channel axis, units along the filter axis."""
        kind = type(layer).__name__
        if layer.data_format != "channels_last":
            raise where.error(
                rule.path,
                f"layer {rule.layer!r} is a {kind} with data_format={layer.data_format!r}; splitnet splits "
                "channels_last convolutions (TensorFlow on CPU runs only those)",
            )
        if layer.groups != 1:
            raise where.error(
                rule.path,
                f"layer {rule.layer!r} is a {kind} with groups={layer.groups}; splitnet splits convolutions "
                "with groups=1",
            )
        self.check_bias(layer.use_bias, rule, where)
        shape = tuple(int(d) for d in layer.kernel.shape)
        nouns = ("filters", "input channels")
        plan = self.resolve_plan(rule, where, shape, len(shape) - 2, len(shape) - 1, nouns, layer.use_bias)
        self.check_common(layer, rule, where)
        # A norm over every axis but the filters' is per filter.
        self.check_constraints(layer, rule, plan, where, per_unit_axes=(tuple(range(len(shape) - 1)),))
        return plan


KIND = _ConvKind()
