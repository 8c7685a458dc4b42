"""Built-in procedural tasks, one generator per module; `pyproject.toml` declares them as `lockbench.tasks`
entry points."""
