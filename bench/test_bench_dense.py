"""MyDense benchmarks: `selu(x @ kernel + bias)` forward, and forward + gradients; the matmul
roof; and fastcustom against its peers, interleaved.

Every implementation gets the same fresh random float32 x, kernel, bias (and
upstream gradient). Forward + gradient returns d/dx, d/dkernel, d/dbias for a
random upstream gradient. Work per call, for the roofline: 2·B·I·O FLOPs
forward, 6·B·I·O with the gradients (bias and selu not counted). The roof is the
fastest of several plain large matmuls (TensorFlow's, XLA's, NumPy's, PyTorch's, JAX's):
a layer that beats one of them has found a faster matmul, not broken a roof.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

import fastcustom
from fastcustom import reference
from fastcustom.bench import case_info, ceiling_info
from fastcustom.bench.cases import FASTCUSTOM, SIZES
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

    def jax(self):
        """jax and this size's x, kernel, bias, upstream on the device."""
        jax, _, where = self.device.jax()
        return jax, *(jax.device_put(self.np[name], where)
                      for name in ("x", "kernel", "bias", "upstream"))


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


def _forward_jax(inputs):
    jax, x, kernel, bias, _ = inputs.jax()
    forward = jax.jit(lambda x, kernel, bias: jax.nn.selu(x @ kernel + bias))
    return (lambda: forward(x, kernel, bias).block_until_ready()), "jax"


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
    "jax": _forward_jax,
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


def _grads_jax(inputs):
    jax, x, kernel, bias, upstream = inputs.jax()

    @jax.jit
    def grads(x, kernel, bias, upstream):
        _, pullback = jax.vjp(lambda x, kernel, bias: jax.nn.selu(x @ kernel + bias),
                              x, kernel, bias)
        return pullback(upstream)
    return (lambda: jax.block_until_ready(grads(x, kernel, bias, upstream))), "jax"


FORWARD_GRADIENT = {
    "notes (eager)": _grads_layer("notes (eager)"),
    "keras built-in": _grads_layer("keras built-in"),
    "tf.function": _grads_compiled(jit_compile=False),
    "tf.function + XLA": _grads_compiled(jit_compile=True),
    "fastcustom": _grads_layer("fastcustom"),
    "torch": _grads_torch,
    "jax": _grads_jax,
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


# --- roof: the fastest plain large matmul ------------------------------------------
def _matmul_tf(jit_compile):
    def make(inputs):
        matmul = tf.function(tf.matmul, jit_compile=jit_compile)
        x, _ = inputs.tf()
        kernel = tf.identity(inputs.np["kernel"])
        return (lambda: matmul(x, kernel)), "tf"
    return make


def _matmul_numpy(inputs):
    inputs.device.require_host()
    x, kernel = inputs.np["x"], inputs.np["kernel"]
    out = np.empty((x.shape[0], kernel.shape[1]), np.float32)
    return (lambda: np.matmul(x, kernel, out=out)), "numpy"


def _matmul_torch(inputs):
    torch, linear, x, _ = inputs.torch()
    kernel = linear.weight.detach().T.contiguous()

    def call():
        with torch.no_grad():
            return torch.mm(x, kernel)
    return call, "torch"


def _matmul_jax(inputs):
    jax, x, kernel, _, _ = inputs.jax()
    matmul = jax.jit(jax.numpy.matmul)
    return (lambda: matmul(x, kernel).block_until_ready()), "jax"


MATMULS = {"tf.matmul (tf.function)": _matmul_tf(jit_compile=False),
           "tf.matmul (XLA)": _matmul_tf(jit_compile=True),
           "numpy matmul (float32)": _matmul_numpy,
           "torch.mm": _matmul_torch,
           "jax.numpy.matmul (jit)": _matmul_jax}


@pytest.mark.parametrize("implementation", list(MATMULS))
def test_matmul_peak(measure, device, implementation):
    inputs = Inputs("large", device)
    batch, fan_in, units = SHAPES["large"]
    measure(lambda: MATMULS[implementation](inputs),
            ceiling_info("FLOP", implementation, device.name, roof="matmul",
                         work=2 * batch * fan_in * units,
                         shape=f"{batch}x{fan_in} @ {fan_in}x{units}"))


# --- fastcustom against its peers, timed in turn ----------------------------------
PEERS = {"notes": "notes (eager)", "keras": "keras built-in", "xla": "tf.function + XLA",
         "torch": "torch", "jax": "jax"}
HEADLINE = {"MyDense forward": (FORWARD, 2), "MyDense forward + gradient": (FORWARD_GRADIENT, 6)}
# The matmuls timed in the interleaved loop: TensorFlow's own, and NumPy's (OpenBLAS), the
# fastest on the 2-core AMD EPYC this suite was written on.
IN_LOOP_ROOFS = ("tf.matmul (tf.function)", "numpy matmul (float32)")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kernel", list(HEADLINE))
def test_mydense_interleaved(device, interleave, kernel, size):
    table, flops_per_mac = HEADLINE[kernel]
    inputs, info = _case(kernel, size, FASTCUSTOM, device, flops_per_mac)
    makers = {name: functools.partial(table[name], inputs)
              for name in (FASTCUSTOM, *PEERS.values())}
    roofs = []
    if size == "large":
        batch, fan_in, units = SHAPES["large"]
        roofs = [(name, functools.partial(MATMULS[name], inputs), 2 * batch * fan_in * units)
                 for name in IN_LOOP_ROOFS if device.name == "cpu" or "numpy" not in name]
    interleave(kernel, size, info["shape"], makers, PEERS, work=info["work"], unit="FLOP",
               roofs=roofs)
