"""`lockbench submit --attack`: check a third-party attack, validate it on `none`, run it against the preset's
defenses and file whether it breaks them.

Why three steps. A benchmark of defenses is only as strong as its strongest attack (DESIGN §4), so a new
attack is worth filing when it raises some defense's attack success. It is worth *comparing* only where it
works against the unprotected release: an attack that is weak on `none` (DESIGN §6) has a normalised
success that is noise, so it is validated on `none` first, before any defense spends compute on it.

Registration. For its own run the attack is registered as `NAME@<hash of its source and config>` (labelled
`NAME` in the CSVs), so its cached cells are keyed by its code, exactly as defense submissions are; Ray
workers register it through :func:`worker_setup`. It is also registered under its plain `NAME`, so a
preset can name it: in other processes, `LOCKBENCH_PLUGINS=bench.commands.submit_attack` with
`LOCKBENCH_ATTACKS=path/to/attack.py[,more]` registers it in the driver and every worker (importing this
module registers the attacks listed there), after which it joins every attacker's pick.
"""

from bench.commands.submit_attack.command import AttackRequest, submit_attack_command
from bench.commands.submit_attack.load import (
    ATTACKS_ENV,
    BREAK_MARGIN,
    WORKER_ENV,
    AttackSubmission,
    load_attack,
    load_checked,
    prepare_attack,
    register_attack_submission,
    register_listed_attacks,
    register_listed_on_import,
    register_plain,
    worker_setup,
)
from bench.commands.submit_attack.report import (
    AttackReport,
    AttackResult,
    attack_metadata,
    broken,
    compare,
    published_board,
    render_attack_readme,
    run_attack_submission,
)
from bench.commands.submit_attack.runs import attack_preset, none_verdicts, refusal, run_preset, validation_preset

register_listed_on_import()  # `LOCKBENCH_PLUGINS=bench.commands.submit_attack` registers $LOCKBENCH_ATTACKS here

__all__ = [
    "ATTACKS_ENV", "BREAK_MARGIN", "WORKER_ENV", "AttackReport", "AttackRequest", "AttackResult", "AttackSubmission",
    "attack_metadata", "attack_preset", "broken", "compare",
    "load_attack", "load_checked", "none_verdicts", "prepare_attack", "published_board", "refusal",
    "register_attack_submission", "register_listed_attacks", "register_listed_on_import", "register_plain",
    "render_attack_readme", "run_attack_submission", "run_preset", "submit_attack_command", "validation_preset",
    "worker_setup",
]
