"""Triton step kernels for the normalized LSTM recurrences on CUDA (`loop.run_layer`, `kernels`)."""
