"""The Tiny Recursive Model (TRM) in Flax, numerically matching the official PyTorch code."""
