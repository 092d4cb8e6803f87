"""Models: build from a spec, load weights safely, the checkpoint format, site discovery and surgery."""
