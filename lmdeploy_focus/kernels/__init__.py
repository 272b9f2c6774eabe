"""Triton kernels (CUDA) of delayed cache and FOCUS, each tested against the torch implementations in kernels/default."""
