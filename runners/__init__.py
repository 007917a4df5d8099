"""Studies on Ray Tune, throughput workloads and diagnostic experiments (layer 2)."""
