"""Fixed-schedule baselines (the seed's iterative 10% L1 pruning + KD)."""
