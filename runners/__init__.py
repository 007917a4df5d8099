"""Studies on Ray Tune, throughput workloads and diagnostic experiments (layer 2)."""

import suite.core.perf  # noqa: F401 -- the suite's OpenMP settings precede any torch import (suite.core.perf)
