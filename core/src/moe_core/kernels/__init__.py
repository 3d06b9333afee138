"""Device-side building blocks shared by runners: routing alignment, permute, combine.

Everything here runs without host synchronisation and with shapes fixed by the token
count alone, so a layer built from these pieces can be captured in a CUDA graph.
"""
