"""AtrousConv2D: same outputs and gradients as keras.layers.Conv2D, used where dilation is."""

import numpy as np
import pytest


def _grads(layer, x):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * tf.cos(y))  # a non-trivial output gradient
    return [y] + tape.gradient(loss, [x] + layer.trainable_weights)


@pytest.mark.parametrize(
    "rate, kernel, shape",
    [
        (2, 3, (2, 9, 13, 5)),
        ((6, 3), 3, (1, 8, 16, 4)),
        (18, 3, (1, 16, 32, 3)),
        (2, 5, (2, 11, 7, 3)),
    ],
)
def test_outputs_and_gradients_equal_keras_conv2d(rate, kernel, shape):
    import keras
    import tensorflow as tf

    from hmsa_keras.models.atrous_conv2d import AtrousConv2D

    x = tf.random.stateless_normal(shape, seed=(1, 2))
    fast = AtrousConv2D(6, kernel, padding="same", dilation_rate=rate, use_bias=True)
    plain = keras.layers.Conv2D(6, kernel, padding="same", dilation_rate=rate, use_bias=True)
    fast.build(shape)
    plain.build(shape)
    plain.set_weights(fast.get_weights())
    for name, a, b in zip(
        ("output", "input grad", "kernel grad", "bias grad"), _grads(fast, x), _grads(plain, x)
    ):
        a, b = a.numpy(), b.numpy()
        scale = np.abs(b).max()
        assert scale > 0, name
        np.testing.assert_allclose(a, b, atol=2e-6 * scale, rtol=0, err_msg=name)


def test_dynamic_shapes_in_a_graph():
    """The custom gradient works with unknown height and width (tf.function, None dims)."""
    import keras
    import tensorflow as tf

    from hmsa_keras.models.atrous_conv2d import AtrousConv2D

    fast = AtrousConv2D(4, 3, padding="same", dilation_rate=4)
    plain = keras.layers.Conv2D(4, 3, padding="same", dilation_rate=4)
    fast.build((None, None, None, 3))
    plain.build((None, None, None, 3))
    plain.set_weights(fast.get_weights())
    step = {}
    for name, layer in (("fast", fast), ("plain", plain)):
        step[name] = tf.function(
            lambda x, layer=layer: _grads(layer, x),
            input_signature=[tf.TensorSpec([None, None, None, 3])],
        )
    x = tf.random.stateless_normal((1, 10, 23, 3), seed=(3, 4))
    for a, b in zip(step["fast"](x), step["plain"](x)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-6 * np.abs(b.numpy()).max())


def test_other_settings_fall_back_to_conv2d_and_config_round_trips():
    import keras
    import tensorflow as tf

    from hmsa_keras.models.atrous_conv2d import AtrousConv2D

    x = tf.random.stateless_normal((1, 12, 12, 3), seed=(5, 6))
    for kwargs in (
        dict(strides=2, padding="same"),
        dict(padding="valid", dilation_rate=2),
        dict(padding="same", dilation_rate=2, kernel_size=2),
    ):
        kwargs = {"kernel_size": 3, **kwargs}
        fast, plain = AtrousConv2D(4, **kwargs), keras.layers.Conv2D(4, **kwargs)
        fast.build(x.shape)
        plain.build(x.shape)
        plain.set_weights(fast.get_weights())
        np.testing.assert_allclose(fast(x).numpy(), plain(x).numpy(), atol=1e-6)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(fast))
    assert type(clone) is AtrousConv2D and clone.get_config() == fast.get_config()


def test_segmenter_uses_it_for_every_dilated_conv2d():
    import keras

    from hmsa_keras.models.atrous_conv2d import AtrousConv2D
    from hmsa_keras.models.segmenter import build_segmenter

    net = build_segmenter(
        5,
        trunk="resnet50",
        output_stride=16,
        aspp_channels=8,
        decoder_channels=8,
        attention_channels=8,
    )

    def convs(model):
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                yield from convs(layer)
            elif isinstance(layer, keras.layers.Conv2D) and max(layer.dilation_rate) > 1:
                yield layer

    dilated = list(convs(net))
    names = {layer.name for layer in dilated}
    assert {
        "aspp_atrous1_conv",
        "aspp_atrous3_conv",
        "conv5_block2_2_conv",
        "conv5_block3_2_conv",
    } <= names
    assert all(type(layer) is AtrousConv2D for layer in dilated), [
        type(x).__name__ for x in dilated
    ]
