"""Kernels and their dispatch: the fused custom-op library and the XLA paths."""
