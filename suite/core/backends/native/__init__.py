"""Native (C++/OpenMP) step kernels for the normalized LSTM loops: `build` compiles and loads
them, `loop` runs a layer on them. Used by `impl = "fast"` on CPU, with the pure-PyTorch loops
of `suite.core.backends.pytorch` as the fallback."""
