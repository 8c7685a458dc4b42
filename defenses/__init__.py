"""Built-in defenses; importing the package registers them."""

from defenses import none  # noqa: F401
