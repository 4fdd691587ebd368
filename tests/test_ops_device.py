"""Where a tensor runs (`fastcustom.ops.device.runs_on_cpu`), and that every dispatch point
asks it: MyDense's forward pass and the Huber kernels choose their CPU path for the same
tensors.

A placed tensor runs where it is placed; an unplaced graph tensor runs where TensorFlow's
placer puts it: on a GPU when TensorFlow sees one. Whether it sees one is monkeypatched
(`library.tensorflow_sees_a_gpu`), so both cases run on a machine without a GPU.
"""

import numpy as np
import pytest
import tensorflow as tf

from fastcustom.ops import dense, huber, library
from fastcustom.ops.device import runs_on_cpu


def graph_tensor(device=None):
    """A float32 graph tensor, placed on `device` or unplaced, and whether it runs on the CPU."""
    @tf.function
    def make():
        if device is None:
            return runs_on_cpu(tf.identity(tf.ones([2, 3])))
        with tf.device(device):
            return runs_on_cpu(tf.identity(tf.ones([2, 3])))

    return bool(make())


def test_an_eager_tensor_runs_where_it_was_placed():
    with tf.device("/CPU:0"):
        assert runs_on_cpu(tf.constant([1.0]))


@pytest.mark.parametrize("sees_gpu", [False, True], ids=["no-gpu", "gpu-visible"])
def test_a_placed_graph_tensor_runs_where_it_was_placed(monkeypatch, sees_gpu):
    monkeypatch.setattr(library, "tensorflow_sees_a_gpu", lambda: sees_gpu)
    assert graph_tensor("/CPU:0") is True
    assert graph_tensor("/GPU:0") is False  # placed there; TF would move it if no GPU exists


@pytest.mark.parametrize("sees_gpu", [False, True], ids=["no-gpu", "gpu-visible"])
def test_an_unplaced_graph_tensor_runs_on_the_gpu_tensorflow_sees(monkeypatch, sees_gpu):
    monkeypatch.setattr(library, "tensorflow_sees_a_gpu", lambda: sees_gpu)
    assert graph_tensor() is (not sees_gpu)


def traced_op_types(fn, *args):
    """The op types in the graph that tracing `fn(*args)` builds (not inside nested calls)."""
    return {op.type for op in tf.function(fn).get_concrete_function(*args).graph.get_operations()}


@pytest.mark.skipif(library.huber_ops() is None,
                    reason=f"fused Huber ops unavailable: {library.status()['reason']}")
@pytest.mark.parametrize("placement", [None, "/CPU:0"], ids=["unplaced", "on-cpu"])
@pytest.mark.parametrize("sees_gpu", [False, True], ids=["no-gpu", "gpu-visible"])
def test_my_dense_and_huber_take_their_cpu_path_for_the_same_tensors(monkeypatch, rng,
                                                                     placement, sees_gpu):
    # A library without GPU kernels: the fused op serves exactly the tensors that run on the
    # CPU; MyDense's forward is plain ops there and the XLA-compiled function elsewhere.
    monkeypatch.setattr(library, "tensorflow_sees_a_gpu", lambda: sees_gpu)
    real_status = library.status()
    monkeypatch.setattr(library, "status", lambda: dict(real_status, gpu=False))
    x = tf.constant(rng.normal(size=(4, 3)).astype("float32"))
    kernel = tf.constant(rng.normal(size=(3, 5)).astype("float32"))
    bias = tf.constant(rng.normal(size=5).astype("float32"))

    def both(x, kernel, bias):
        with tf.device(placement):
            x, kernel, bias = tf.identity(x), tf.identity(kernel), tf.identity(bias)
            y = dense.dense_forward(x, kernel, bias, tf.nn.selu)
            return y, huber.huber_per_sample(y, tf.zeros_like(y))

    types = traced_op_types(both, x, kernel, bias)
    on_cpu = placement is not None or not sees_gpu
    assert ("MatMul" in types) is on_cpu                               # plain ops, not XLA
    assert any(t.startswith("FastCustom>") for t in types) is on_cpu  # the fused op
    # Whichever path each took, the values are the same (TF runs the "GPU" path on the CPU).
    y, per_sample = tf.function(both)(x, kernel, bias)
    np.testing.assert_allclose(y.numpy(), dense.dense_forward_tf(x, kernel, bias, tf.nn.selu),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(per_sample.numpy(), huber.huber_per_sample_tf(
        y, tf.zeros_like(y), 1.0).numpy(), rtol=1e-6)
