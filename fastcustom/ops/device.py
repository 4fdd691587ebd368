"""Where an op on a tensor runs: the one answer every dispatch point uses.

A tensor placed on a device (an eager tensor, or a graph tensor made under
`tf.device`) runs there. A graph tensor outside any device scope is unplaced:
TensorFlow's placer puts its ops on a GPU when it sees one, else on the CPU.

>>> import tensorflow as tf
>>> with tf.device("/CPU:0"):
...     runs_on_cpu(tf.constant(1.0))
True
"""

import functools

import tensorflow as tf

from fastcustom.ops import library


def runs_on_cpu(tensor):
    """Whether an op on `tensor` runs on the CPU: placed there, or unplaced (a graph
    tensor outside any device scope) while TensorFlow sees no GPU to place it on."""
    device_type = _device_type(getattr(tensor, "device", "") or "")
    if device_type:
        return device_type == "CPU"
    return not library.tensorflow_sees_a_gpu()


@functools.lru_cache(maxsize=64)
def _device_type(device):
    """"CPU", "GPU", ... or None for a device string: parsed once per string (a call's
    dispatch would otherwise parse the same one on every call)."""
    return tf.DeviceSpec.from_string(device).device_type
