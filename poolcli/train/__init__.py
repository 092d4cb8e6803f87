"""Training: the fine-tune loop and its losses."""
