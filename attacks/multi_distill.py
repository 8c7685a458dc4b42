"""Multi-teacher distillation (issue 29, DESIGN §4): distil the release *and* every public member together
into one fresh student on the base — the merged model is learned, not computed from weights.

Every weight-space defense (a scale trap, a re-parameterisation, a mask) protects how the release's skill is
*stored*; the attacker who wants one model with T_p and the members' skills needs only their functions. Each
teacher answers its own task's `attacker_train` prompts by greedy decoding (no labels), and the student is
trained on the sum of KL(teacher ‖ student) over the teachers, each on its own rows of every batch. No merge
coefficient is searched and nothing is read from the release but its outputs. The release-free control's
T_p teacher is the base, which teaches nothing: the control learns the members only.

The distillation itself is `distill_merge`'s (`attacks.distill_merge.distill`, `teacher_data`).
"""

from __future__ import annotations

from typing import Any

from attacks.distill_merge import (
    DistillSettings,
    distill,
    folded,
    fresh_student,
    in_eval_mode,
    mean_kl,
    teacher_data,
)
from bench.plugins import Attack, AttackOutput, PublicView, register_attack
from bench.toolkit.evaluate import as_plain_model


@register_attack(track="merge", family="data")
class MultiDistill(Attack[DistillSettings]):
    name = "multi_distill"
    description = ("distils the release and the public members together into one fresh student on the base, "
                   "each teacher on its own task's attacker prompts (no labels, no merge)")

    def run(self, view: PublicView) -> AttackOutput:
        config = self.config
        sources: dict[str, tuple[Any, list[str]]] = {view.task: (view.release, list(view.attacker_train.prompts))}
        for task, expert in view.public_experts.items():
            if task not in view.public_experts_train:
                raise ValueError(f"the view holds no attacker_train split for member task '{task}'")
            sources[task] = (expert, list(view.public_experts_train[task].prompts))
        plain = [as_plain_model(model) for model, _ in sources.values()]
        adapter = view.release_format == "adapter"
        lr = config.lora_lr if adapter else config.lr
        student = fresh_student(view.base, adapter, config.r, config.alpha, view.seed)
        with in_eval_mode(*plain):
            teachers = [(teacher, teacher_data(teacher, view.tokenizer, prompts, config))
                        for teacher, (_, prompts) in zip(plain, sources.values(), strict=True)]
            losses = distill(student, teachers, config.steps, lr, config.batch_size, config.temperature, view.seed)
            final_kl = {task: mean_kl(teacher, student, data)
                        for task, (teacher, data) in zip(sources, teachers, strict=True)}
        examples = sum(data.input_ids.shape[0] for _, data in teachers)
        # the merge knobs every merge row records (DESIGN §4): none applies, as nothing is merged by weights
        knobs = {"method": "multi_distill", "weights": None, "normalize": None, "lambda": None, "density": None,
                 "rescale": None, "student": "lora" if adapter else "full", "teachers": list(sources),
                 "distill_steps": config.steps, "distill_lr": lr, "distill_batch_size": config.batch_size,
                 "distill_temperature": config.temperature, "distill_positions": config.positions,
                 "final_kl": final_kl, "final_loss": losses[-1], "seed": view.seed}
        if adapter:
            knobs.update(distill_r=config.r, distill_alpha=config.alpha)
        return AttackOutput(models={1.0: folded(student)}, knobs=knobs, steps=config.steps, examples=examples)
