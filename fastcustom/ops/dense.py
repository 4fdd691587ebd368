"""The MyDense forward pass, `activation(x @ kernel + bias)`, and its one dispatch point.

On a CPU, XLA does not beat the plain ops: for small layers a call's fixed
cost dominates and plain eager ops have the smallest, and for large ones
oneDNN's matmul outruns XLA's (bench/test_bench_dense.py measures both;
bench/RESULTS.md, "MyDense forward", has the numbers). So on a CPU the forward
pass is plain TF ops, which the enclosing graph compiles (with XLA when the
model is `jit_compile=True`); on a GPU the XLA-compiled function fuses bias and
activation into the matmul's epilogue and is used for calls outside XLA. Where
a tensor runs is decided as for the Huber kernels
(`fastcustom.ops.device.runs_on_cpu`).

>>> import tensorflow as tf
>>> dense_forward(tf.ones((2, 3)), tf.ones((3, 4)), tf.zeros(4), None).shape
TensorShape([2, 4])
"""

import tensorflow as tf

from fastcustom.ops.device import runs_on_cpu
from fastcustom.private_symbols import in_xla_context


def dense_forward_tf(x, kernel, bias, activation):
    """activation(x @ kernel + bias) over the last axis of x (rank >= 2)."""
    if x.shape.rank == 2:
        z = tf.matmul(x, kernel)
    else:
        z = tf.tensordot(x, kernel, [[x.shape.rank - 1], [0]])
    if bias is not None:
        z = tf.nn.bias_add(z, bias)
    return z if activation is None else activation(z)


_dense_forward_xla = tf.function(dense_forward_tf, jit_compile=True, reduce_retracing=True)


def dense_forward(x, kernel, bias, activation):
    """`activation(x @ kernel + bias)`: plain ops on CPU and inside XLA, XLA on GPU."""
    if in_xla_context() or runs_on_cpu(x):
        return dense_forward_tf(x, kernel, bias, activation)
    return _dense_forward_xla(x, kernel, bias, activation)
