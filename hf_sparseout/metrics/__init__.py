"""Activation-sparsity metrics, the streaming SparsityMonitor, plots and the `evaluate` module."""
