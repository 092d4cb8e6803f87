"""File I/O helpers: atomic writes, safetensors with JSON metadata."""
