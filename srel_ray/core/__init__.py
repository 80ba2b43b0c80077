"""The algorithm in plain PyTorch: no Ray, no storage. Every function takes tensors, iterables and configs."""
