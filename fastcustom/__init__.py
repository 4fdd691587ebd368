"""fastcustom: the custom Keras components people write by hand, fast and serializable.

Every object is a registered Keras 3 object (TensorFlow backend) that saves and
loads with its full config; the Huber kernels run as a fused custom op when it
is built, else as XLA-compiled graphs. `fastcustom.reference` holds the NumPy
float64 truth they are tested against; `path_info()` says which path is active.

`import fastcustom` is lazy (PEP 562): it imports neither TensorFlow nor Keras.
The first use of a public name imports every component module, which registers
all of them with Keras's serialization; so does `import fastcustom` when Keras is
already imported. The accelerated loop (`fastcustom.training`: `accelerate`, `fit`,
`evaluate`, `predict`) registers nothing and is imported only when one of those is
first used. `fastcustom.reference` stays NumPy only.
"""

import importlib
import importlib.util
import sys

from fastcustom import xla_cache

__version__ = "0.1.0"

# TensorFlow's persistent XLA cache when FASTCUSTOM_XLA_CACHE asks for it, set before
# TensorFlow first reads its XLA flags; see fastcustom/xla_cache.py.
xla_cache.enable()

# Each public name and the module that defines it (for path_info: the name there).
_HOMES = {
    "softplus": "fastcustom.activations",
    "PositiveWeights": "fastcustom.constraints",
    "GlorotNormalInitializer": "fastcustom.initializers",
    "AddGaussianNoise": "fastcustom.layers",
    "Exponential": "fastcustom.layers",
    "MyDense": "fastcustom.layers",
    "MyMultiLayer": "fastcustom.layers",
    "HuberFunction": "fastcustom.losses",
    "HuberLoss": "fastcustom.losses",
    "create_huber": "fastcustom.losses",
    "huber": "fastcustom.losses",
    "HuberMetric": "fastcustom.metrics",
    "ReconstructingRegressor": "fastcustom.models",
    "path_info": ("fastcustom.ops.library", "status"),
    "use_path": "fastcustom.ops.path",
    "L1Regularizer": "fastcustom.regularizers",
}
# The accelerated loop: no Keras objects to register, imported on first use.
_LOOP = {name: "fastcustom.training" for name in ("accelerate", "evaluate", "fit", "predict")}

__all__ = sorted({**_HOMES, **_LOOP})


def _keras_backend():
    import keras
    return keras.backend.backend()


def _register_components():
    """Import every module that registers Keras objects (once; Python caches modules);
    a clear error when Keras runs on another backend than TensorFlow."""
    backend = _keras_backend()
    if backend != "tensorflow":
        raise RuntimeError(
            f"fastcustom runs on Keras's TensorFlow backend, and Keras is using {backend!r}. "
            "Select TensorFlow before Keras is imported: KERAS_BACKEND=tensorflow in the "
            'environment, or "backend": "tensorflow" in ~/.keras/keras.json.')
    for home in set(_HOMES.values()):
        importlib.import_module(home if isinstance(home, str) else home[0])


def __getattr__(name):
    if name in _HOMES or name in _LOOP:
        _register_components()
        home = _HOMES.get(name) or _LOOP[name]
        module, attribute = (home, name) if isinstance(home, str) else home
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule, e.g. training
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


if "keras" in sys.modules and _keras_backend() == "tensorflow":
    _register_components()   # Keras (and TensorFlow) already paid for: register now
