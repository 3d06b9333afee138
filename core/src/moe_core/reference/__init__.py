"""The embedded reference backend: plain PyTorch, every spec, CPU and GPU.

It is registered like any plugin (entry point ``reference``), ranks last, and is the
correctness oracle for every other backend.
"""
