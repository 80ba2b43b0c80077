"""Datasets (real data, condensed sets) and the files they live in. Plain Python and PyTorch, no Ray."""
