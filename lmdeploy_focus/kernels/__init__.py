"""Triton kernels (CUDA) of delayed cache and FOCUS, each tested against lmdeploy_focus.reference."""
