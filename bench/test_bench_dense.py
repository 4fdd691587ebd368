"""MyDense benchmarks: `selu(x @ kernel + bias)` forward, and forward + gradients; matmul ceiling.

Every implementation gets the same fresh random float32 x, kernel, bias (and
upstream gradient). Forward + gradient returns d/dx, d/dkernel, d/dbias for a
random upstream gradient. Work per call, for the roofline: 2·B·I·O FLOPs
forward, 6·B·I·O with the gradients (bias and selu not counted).
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastcustom
from fastcustom import reference
from fastcustom.bench import case_info, ceiling_info
from fastcustom.bench.cases import SIZES
from fastcustom.ops.dense import dense_forward_tf
from fastcustom.baselines import notes

# (batch, inputs, units)
SHAPES = {"small": (32, 8, 30), "medium": (1024, 256, 256), "large": (8192, 1024, 1024)}


@functools.lru_cache(maxsize=None)
def _arrays(size):
    rng = np.random.default_rng(40960 + SIZES.index(size))
    batch, fan_in, units = SHAPES[size]
    return {"x": rng.standard_normal((batch, fan_in), np.float32),
            "kernel": (rng.standard_normal((fan_in, units)) / np.sqrt(fan_in)).astype(np.float32),
            "bias": rng.standard_normal(units, np.float32),
            "upstream": rng.standard_normal((batch, units), np.float32)}


class Inputs:
    """One size's arrays as NumPy, or as TF tensors and variables on the current device."""

    def __init__(self, size, device):
        self.size, self.device = size, device
        self.np = _arrays(size)

    def tf(self):
        return tf.identity(self.np["x"]), tf.identity(self.np["upstream"])

    def tf_weights(self):
        return tf.Variable(self.np["kernel"]), tf.Variable(self.np["bias"])

    def layer(self, new_layer):
        """A built layer holding this size's kernel and bias."""
        layer = new_layer(self.np["kernel"].shape[1])
        layer.build(self.np["x"].shape)
        layer.kernel.assign(self.np["kernel"])
        layer.bias.assign(self.np["bias"])
        return layer

    def torch(self):
        torch, where = self.device.torch()
        linear = torch.nn.Linear(*self.np["kernel"].shape).to(where)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(self.np["kernel"].T.copy()))
            linear.bias.copy_(torch.from_numpy(self.np["bias"]))
        as_torch = functools.partial(torch.as_tensor, device=where)
        return torch, linear, as_torch(self.np["x"]), as_torch(self.np["upstream"])


LAYERS = {
    "notes (eager)": lambda units: notes.MyDense(units, activation="selu"),
    "keras built-in": lambda units: keras.layers.Dense(units, activation="selu"),
    "fastcustom": lambda units: fastcustom.MyDense(units, activation="selu"),
}


def _dense_selu(x, kernel, bias):
    return dense_forward_tf(x, kernel, bias, tf.nn.selu)


def _dense_selu_grads(x, kernel, bias, upstream):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = _dense_selu(x, kernel, bias)
    return tape.gradient(y, [x, kernel, bias], output_gradients=upstream)


# --- forward --------------------------------------------------------------------
def _forward_layer(name):
    def make(inputs):
        layer = inputs.layer(LAYERS[name])
        x, _ = inputs.tf()
        return (lambda: layer(x)), "tf"
    return make


def _forward_compiled(jit_compile):
    def make(inputs):
        forward = tf.function(_dense_selu, jit_compile=jit_compile)
        kernel, bias = inputs.tf_weights()
        x, _ = inputs.tf()
        return (lambda: forward(x, kernel, bias)), "tf"
    return make


def _forward_numpy(inputs):
    inputs.device.require_host()
    if inputs.size == "large":
        pytest.skip("the float64 reference is not cheap at this size")
    a = inputs.np
    return (lambda: reference.dense(a["x"], a["kernel"], a["bias"], "selu")), "numpy"


def _forward_torch(inputs):
    torch, linear, x, _ = inputs.torch()

    def call():
        with torch.no_grad():
            return torch.nn.functional.selu(linear(x))
    return call, "torch"


# Each kernel has its table: the report's implementation name -> a builder of that
# implementation's call. The tables, and the parametrized tests that run them, are parallel
# by design (one row per way of computing the kernel), not code to share.
FORWARD = {
    "notes (eager)": _forward_layer("notes (eager)"),
    "keras built-in": _forward_layer("keras built-in"),
    "tf.function": _forward_compiled(jit_compile=False),
    "tf.function + XLA": _forward_compiled(jit_compile=True),
    "fastcustom": _forward_layer("fastcustom"),
    "numpy float64": _forward_numpy,
    "torch": _forward_torch,
}


# --- forward + gradients ------------------------------------------------------
def _grads_layer(name):
    def make(inputs):
        layer = inputs.layer(LAYERS[name])
        x, upstream = inputs.tf()

        def call():
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
            return tape.gradient(y, [x, layer.kernel, layer.bias], output_gradients=upstream)
        return call, "tf"
    return make


def _grads_compiled(jit_compile):
    def make(inputs):
        step = tf.function(_dense_selu_grads, jit_compile=jit_compile)
        kernel, bias = inputs.tf_weights()
        x, upstream = inputs.tf()
        return (lambda: step(x, kernel, bias, upstream)), "tf"
    return make


def _grads_torch(inputs):
    torch, linear, x, upstream = inputs.torch()
    x = x.clone().requires_grad_(True)

    def call():
        y = torch.nn.functional.selu(linear(x))
        return torch.autograd.grad(y, [x, linear.weight, linear.bias], grad_outputs=upstream)
    return call, "torch"


FORWARD_GRADIENT = {
    "notes (eager)": _grads_layer("notes (eager)"),
    "keras built-in": _grads_layer("keras built-in"),
    "tf.function": _grads_compiled(jit_compile=False),
    "tf.function + XLA": _grads_compiled(jit_compile=True),
    "fastcustom": _grads_layer("fastcustom"),
    "torch": _grads_torch,
}


def _case(kernel, size, implementation, device, flops_per_mac):
    batch, fan_in, units = SHAPES[size]
    info = case_info(kernel, size, f"{batch}x{fan_in} -> {units}", implementation,
                     device.name, work=flops_per_mac * batch * fan_in * units, unit="FLOP",
                     elements=batch * fan_in)
    return Inputs(size, device), info


@pytest.mark.parametrize("implementation", list(FORWARD))
@pytest.mark.parametrize("size", SIZES)
def test_mydense_forward(measure, device, size, implementation):
    inputs, info = _case("MyDense forward", size, implementation, device, flops_per_mac=2)
    measure(lambda: FORWARD[implementation](inputs), info)


@pytest.mark.parametrize("implementation", list(FORWARD_GRADIENT))
@pytest.mark.parametrize("size", SIZES)
def test_mydense_forward_gradient(measure, device, size, implementation):
    inputs, info = _case("MyDense forward + gradient", size, implementation, device,
                         flops_per_mac=6)
    measure(lambda: FORWARD_GRADIENT[implementation](inputs), info)


# --- ceiling: a plain large matmul ---------------------------------------------
@tf.function
def _matmul(a, b):
    return tf.matmul(a, b)


def test_matmul_peak(measure, device):
    inputs = Inputs("large", device)
    batch, fan_in, units = SHAPES["large"]

    def make():
        x, _ = inputs.tf()
        kernel = tf.identity(inputs.np["kernel"])
        return (lambda: _matmul(x, kernel)), "tf"

    measure(make, ceiling_info("FLOP", "tf.matmul (tf.function)", device.name,
                               work=2 * batch * fan_in * units,
                               shape=f"{batch}x{fan_in} @ {fan_in}x{units}"))
