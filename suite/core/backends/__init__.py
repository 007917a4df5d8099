"""Recurrence backends: the ways one LSTM layer's time loop is computed (PyTorch loop, native CPU kernels)."""
