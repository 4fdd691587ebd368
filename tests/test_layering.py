"""The package's layers: `import fastcustom` and the NumPy reference import no TensorFlow or
Keras; every public name resolves lazily to its module; using one registers them all."""

import json

import pytest

import fastcustom

REFERENCE_WITHOUT_TENSORFLOW = """
import json, sys
import fastcustom, fastcustom.reference as reference
values = [float(reference.huber([[0.0, 3.0]], [[1.0, 0.0]], threshold=1.0)[0]),
          float(reference.huber_grad_pred([[0.0]], [[2.0]], [1.0])[0, 0]),
          reference.l1([1.0, -2.0], 0.5), float(reference.softplus(0.0)),
          float(reference.dense([[1.0, 2.0]], [[1.0], [1.0]])[0, 0])]
metric = reference.StreamingHuberMean()
metric.update([[0.0, 3.0]], [[1.0, 0.0]])
values.append(metric.result())
print(json.dumps({"version": fastcustom.__version__, "values": values,
                  "imported": sorted(m for m in ("tensorflow", "keras") if m in sys.modules)}))
"""

REGISTERED_AFTER = """
import json, sys
{imports}
import keras
names = ["fastcustom>HuberLoss", "fastcustom>HuberMetric", "fastcustom>MyDense"]
print(json.dumps([keras.saving.get_registered_object(name) is not None for name in names]))
"""


def last_json_line(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_fastcustom_and_its_reference_import_without_tensorflow_or_keras(run_python):
    report = last_json_line(run_python("-c", REFERENCE_WITHOUT_TENSORFLOW))
    assert report["imported"] == []
    assert report["version"] == fastcustom.__version__
    # h(1) = 1/2, h(3) = 3 - 1/2 (row mean 1.5); gradient clip(2, -1, 1) / 1; 0.5 * 3; log 2; 3
    assert report["values"][:5] == [1.5, 1.0, 1.5, 0.6931471805599453, 3.0]
    assert report["values"][5] == 1.5


def test_every_public_name_resolves_and_is_listed():
    expected_homes = {"HuberLoss": "fastcustom.losses", "HuberMetric": "fastcustom.metrics",
                      "MyDense": "fastcustom.layers.dense", "fit": "fastcustom.training.methods",
                      "softplus": "fastcustom.activations"}
    for name in fastcustom.__all__:
        assert getattr(fastcustom, name) is not None, name
    for name, module in expected_homes.items():
        assert getattr(fastcustom, name).__module__ == module
    assert set(fastcustom.__all__) <= set(dir(fastcustom))
    assert fastcustom.path_info()["path"] in ("fused-op", "xla")
    assert fastcustom.training.loop.compiled_loops  # a submodule, reached as an attribute


def test_an_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchComponent'"):
        fastcustom.NoSuchComponent


def test_using_one_component_registers_all_for_loading(run_python):
    used = last_json_line(run_python("-c", REGISTERED_AFTER.format(
        imports="import fastcustom; fastcustom.softplus")))
    keras_first = last_json_line(run_python("-c", REGISTERED_AFTER.format(
        imports="import keras, fastcustom")))
    assert used == keras_first == [True, True, True]
