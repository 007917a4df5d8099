"""Native (C++/OpenMP) kernels for the normalized LSTM loops, a recurrence backend (see
`suite.core.backends`): `build` compiles and loads them, `loop` runs a layer on them. First
choice on CPU; where they do not build, `suite.core.backends.choose` takes the PyTorch loop."""
