"""Tells whether the code being traced will be compiled by XLA."""

from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.ops import control_flow_util


def in_xla_context():
    """True inside a `jit_compile=True` function (or a graph nested in one).

    Custom ops cannot run there ("Detected unsupported operations"), so each
    dispatch function checks this first.
    """
    return control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())
