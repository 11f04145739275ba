"""Fused Sparseout kernels (Triton, CUDA) and their dispatch."""
