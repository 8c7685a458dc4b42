"""Built-in procedural tasks; importing this package registers them all."""

from tasks.builtin import (  # noqa: F401 - imported for their @register_task side effect
    add,
    copy,
    count,
    dup,
    first,
    last,
    length,
    lookup,
    max,
    mod,
    mul,
    reverse,
    shift,
    sort,
    sub,
    successor,
    upper,
)
