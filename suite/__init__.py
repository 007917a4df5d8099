"""recnorm-suite: normalization in recurrent networks (layers and where things live: ARCHITECTURE.md)."""
