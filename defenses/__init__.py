"""Built-in defenses; importing the package registers them."""

from defenses import anti_finetune, merge_lock, none, params, pmp, trap2  # noqa: F401
