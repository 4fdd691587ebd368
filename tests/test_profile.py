"""`python -m fastcustom profile`: a real trace on disk, summarized by xprof, naming our code."""

import glob
import os

import pytest

from fastcustom import cli
from fastcustom import path_info, profile

needs_profiler = pytest.mark.skipif(
    bool(profile.missing_packages()),
    reason=f"profiling packages not installed: {', '.join(profile.missing_packages())}")


def _profile(logdir, capsys, *flags):
    assert cli.main(["profile", "--logdir", str(logdir), "--steps", "3", *flags]) == 0
    printed = capsys.readouterr().out
    traces = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
    assert f"Trace: {traces[0]}" in printed
    assert f"tensorboard --logdir {logdir}" in printed
    return traces[0], printed


@needs_profiler
def test_jit_model_trace_names_its_xla_module_and_fusions(tmp_path, capsys):
    trace, printed = _profile(tmp_path, capsys)
    summary = profile.summarize(trace)
    modules = [module for module, _ in summary.xla_modules]
    assert any("one_step_on_data" in module for module in modules), modules
    assert summary.xla_ops and all(us > 0 for *_, us in summary.xla_ops)
    assert any("fusion" in op for op, *_ in summary.xla_ops)
    assert summary.xla_ops[0][0] in printed


@needs_profiler
def test_plain_model_trace_names_the_fused_op_or_our_xla_function(tmp_path, capsys):
    trace, printed = _profile(tmp_path, capsys, "--no-jit")
    summary = profile.summarize(trace)
    if path_info()["path"] == "fused-op":
        # training records the loss under a tape: the one-pass loss-and-gradient op
        fused = ("HuberPerSample", "HuberMeanWithGrad")
        op_types = [op_type for op_type, *_ in summary.custom_ops + summary.tf_ops]
        assert any(op_type.endswith(fused) for op_type in op_types), op_types
        assert any(name in printed for name in fused)
    else:
        modules = [module for module, _ in summary.xla_modules]
        assert any("huber_per_sample_tf" in module for module in modules), modules
    assert any("MatMul" in op_type for op_type, *_ in summary.tf_ops)


def test_missing_packages_give_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(profile, "missing_packages", lambda: ["tensorboard-plugin-profile"])
    with pytest.raises(SystemExit) as stopped:
        cli.main(["profile", "--logdir", "unused"])
    assert stopped.value.code == 2
    assert "pip install tensorboard-plugin-profile" in capsys.readouterr().err
