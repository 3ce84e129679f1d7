"""Keras side of galmorph.workflows.explain: what a network's convolutions see, as numpy arrays.

Mirrors galmorph/backends/torch/explain.py function for function. Convolutions are counted
in network order (0 = the first, -1 = the last); outputs are taken after the ReLU, NHWC. In
a zoo network a convolution's own output is taken, and -1 is the last stage's feature map
before pooling (Grad-CAM's usual layer), as on the PyTorch side.
The Grad-CAM arithmetic itself is neutral (galmorph.workflows.explain.grad_cam).
"""

from __future__ import annotations

import keras
import numpy as np

from galmorph.backends.keras.model import logged_network
from galmorph.core.errors import GalmorphError


def _conv(model: keras.Model, layer_index: int):
    """The output tensor of convolution `layer_index`; in a zoo network (one with galmorph's
    "pool" layer) -1 is the last stage's feature map before pooling."""
    names = {layer.name for layer in model.layers}
    if layer_index == -1 and "pool" in names:
        return model.get_layer("pool").input
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    try:
        return convs[layer_index].output
    except IndexError:
        raise GalmorphError(f"{model.name} has {len(convs)} convolutions; layer_index {layer_index} is out of range") from None


def feature_maps(model: keras.Model, x: np.ndarray, layer_index: int = 0) -> np.ndarray:
    """float32 (B, h, w, filters): the output of convolution `layer_index` for images x (B, H, W, C)."""
    sub = keras.Model(model.input, _conv(model, layer_index))
    return np.asarray(keras.ops.convert_to_numpy(sub(x, training=False)), dtype=np.float32)


def conv_gradients(model: keras.Model, x: np.ndarray, class_index, layer_index: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(activations, gradients), float32 (B, h, w, filters): convolution `layer_index`'s output
    and the gradient of each image's `class_index` logit (before the softmax) with respect to it."""
    import tensorflow as tf

    out = model.get_layer("probabilities")
    sub = keras.Model(model.input, [_conv(model, layer_index), out.input])
    index = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (x.shape[0],))
    x = tf.convert_to_tensor(np.asarray(x, dtype=np.float32))
    with tf.GradientTape() as tape:
        act, hidden = sub(x, training=False)
        logits = tf.matmul(tf.cast(hidden, tf.float32), tf.cast(out.kernel, tf.float32)) + tf.cast(out.bias, tf.float32)
        score = tf.reduce_sum(tf.gather(logits, index, batch_dims=1))
    grads = tape.gradient(score, act)
    return np.asarray(act, dtype=np.float32), np.asarray(grads, dtype=np.float32)


def load_logged_model(uri: str) -> keras.Model:
    """The keras.Model a galmorph run logged (its `model_uri` tag) (model.logged_network)."""
    return logged_network(uri)
