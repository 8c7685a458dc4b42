"""Built-in attacks; importing the package registers them."""

from attacks import (  # noqa: F401
    adapter_weighted,
    adaptive_coefficient,
    align_to_base,
    distill_merge,
    full_finetune,
    lora_finetune,
    merge_heal,
    mergekit_methods,
    per_member,
    regmean,
)
