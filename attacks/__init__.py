"""Built-in attacks; importing the package registers them."""

from attacks import lora_finetune, task_arithmetic  # noqa: F401
