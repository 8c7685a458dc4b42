"""Built-in defenses, one module each; `pyproject.toml` declares them as `lockbench.defenses` entry points."""
