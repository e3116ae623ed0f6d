"""Structured pruning of ResNet50: prunable layers, channel plans, backends (NNI, Torch-Pruning), measurement."""
