"""Pooling operators: plain nn.Modules and functions, no I/O."""
