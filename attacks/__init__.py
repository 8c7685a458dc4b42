"""Built-in attacks, one module each; `pyproject.toml` declares them as `lockbench.attacks` entry points."""
