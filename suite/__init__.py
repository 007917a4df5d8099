"""recnorm-suite: normalization in recurrent networks.

Importing the package puts the OpenMP thread settings into the environment before anything
imports torch (suite.core.perf, module doc): idle OpenMP threads then sleep instead of spinning.
"""

from suite.core import perf as _perf

_perf.set_thread_env()
