"""`anti_finetune`: a TAR-like first-order meta-learning baseline against fine-tuning (after Tamirisa et al.,
"Tamper-Resistant Safeguards for Open-Weight LLMs", arXiv 2408.00761; SOPHON, Deng et al., S&P 2024,
is the same idea for vision).

Post-hoc, on the plainly pre-trained base of the job's seed (the one `none` releases at that seed,
re-trained per seed by the harness). Each outer step: (1) draw a proxy task; (2) simulate an
attacker who fine-tunes all weights on it for K Adam steps (functional fast weights, the model is not
copied); (3) after every simulated step, take the gradient of a tamper-resistance loss at the attacked
weights — the negative entropy of the attacked model's predictions on held-out proxy examples, which
TAR found steadier than maximising cross-entropy — and apply the average to the real weights
(first-order: ∂θ'/∂θ ≈ I); (4) add the gradient of the ordinary loss on the capability mixture, so
the release keeps its skills. Outer optimiser: the zoo's loop (AdamW, clipping, non-finite steps skipped).

The owner never sees a downstream task or any attacker split: proxy tasks are built from the owner's
own capability data — a fresh random marker prefixed to each prompt and the answer passed through a
random substitution cipher (letters to letters, digits to digits), i.e. "learn a new string mapping of a
known skill". Assumptions, stated because they decide the outcome: the defense only anticipates attackers
like its simulated one (K full-weight Adam steps at `inner_lr`); a longer attack, LoRA, or another
learning rate may simply learn through it (TAR's own evaluations report this); and a substitution
cipher is closer to some downstream tasks (a Caesar shift is one) than to others (succession).
The notes record a probe: the proxy loss a longer simulated attack (`probe_steps`) reaches on a
fresh proxy before and after the defense. Tracks: finetune. Formats: full. Architectures: any.
"""

from __future__ import annotations

import copy
import math
import random
import string

import torch
from pydantic import Field

from bench.config import StrictModel
from bench.plugins import Defense, OwnerView, Release, TaskData, register_defense
from bench.zoo.training import TokenisedBatch, TrainSettings
from defenses._training import batch_of, concat, evaluate, optimise, rows_forward, rows_loss, token_loss

MARKERS = "#$%&@~^|"


class AntiFinetuneConfig(StrictModel):
    outer_steps: int = Field(100, ge=1)
    outer_lr: float = Field(3e-4, gt=0)
    inner_steps: int = Field(8, ge=1, description="simulated attacker's steps per outer step (K)")
    inner_lr: float = Field(2e-3, gt=0, description="simulated attacker's Adam learning rate")
    batch_size: int = Field(32, ge=1)
    tr_weight: float = Field(1.0, ge=0, description="weight of the tamper-resistance gradient")
    proxies: int = Field(8, ge=1, description="proxy tasks drawn up front (one per outer step, cycling)")
    probe_steps: int = Field(50, ge=0, description="simulated-attack length for the before/after probe")


def proxy_task(capability: TaskData, rng: random.Random) -> TaskData:
    """The owner's capability examples turned into a new task: marker + prompt → cipher(answer)."""
    marker = "".join(rng.sample(MARKERS, 2)) + " "
    table = {}
    for alphabet in (string.ascii_lowercase, string.ascii_uppercase, string.digits):
        shuffled = list(alphabet)
        rng.shuffle(shuffled)
        table.update(zip(alphabet, shuffled, strict=True))
    cipher = str.maketrans(table)
    return TaskData([marker + p for p in capability.prompts], [a.translate(cipher) for a in capability.answers])


def negative_entropy(model: torch.nn.Module, batch: TokenisedBatch, rows: torch.Tensor,
                     weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean negative entropy of the next-token distribution at the answer positions."""
    logits, labels = rows_forward(model, batch, rows, weights)
    log_probs = torch.log_softmax(logits[labels != -100].float(), dim=-1)
    return (log_probs.exp() * log_probs).sum(-1).mean()


class SimulatedAttack:
    """K steps of full-weight Adam on a proxy, on functional fast weights."""

    def __init__(self, model: torch.nn.Module, lr: float):
        self.model, self.lr = model, lr
        self.weights = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
        self.m = {n: torch.zeros_like(w) for n, w in self.weights.items()}
        self.v = {n: torch.zeros_like(w) for n, w in self.weights.items()}
        self.t = 0

    def step(self, batch: TokenisedBatch, rows: torch.Tensor) -> float:
        loss = rows_loss(self.model, batch, rows, self.weights)
        grads = torch.autograd.grad(loss, list(self.weights.values()))
        self.t += 1
        with torch.no_grad():
            for (name, weight), grad in zip(self.weights.items(), grads, strict=True):
                self.m[name].mul_(0.9).add_(grad, alpha=0.1)
                self.v[name].mul_(0.999).addcmul_(grad, grad, value=0.001)
                m_hat = self.m[name] / (1 - 0.9**self.t)
                v_hat = self.v[name] / (1 - 0.999**self.t)
                weight.sub_(self.lr * m_hat / (v_hat.sqrt() + 1e-8))
        return loss.item()


@register_defense(paper="TAR-like baseline (after Tamirisa et al., arXiv 2408.00761)", tracks={"finetune"}, formats={"full"})
class AntiFinetune(Defense[AntiFinetuneConfig]):
    name = "anti_finetune"
    description = "TAR-like: first-order meta-learning against simulated fine-tuning on owner-built proxy tasks"

    def protect(self, owner: OwnerView) -> Release:
        config = self.config
        tokenizer = owner.tokenizer
        model = copy.deepcopy(owner.base)
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        capability = concat(list(owner.capability_data.values()))
        retain = batch_of(tokenizer, capability)
        rng = random.Random(owner.seed)
        proxies = [batch_of(tokenizer, proxy_task(capability, rng)) for _ in range(config.proxies)]
        probe = batch_of(tokenizer, proxy_task(capability, random.Random(f"probe:{owner.seed}")))
        generator = torch.Generator().manual_seed(owner.seed)
        named = list(model.named_parameters())
        val = {task: batch_of(tokenizer, data) for task, data in owner.capability_val.items()}
        before = {"capability_val_acc": _mean_acc(model, val), "probe_loss": self._probe(model, probe, config)}

        def objective(rows: torch.Tensor, step: int) -> float:
            proxy = proxies[step % len(proxies)]
            count = proxy.input_ids.shape[0]
            attack = SimulatedAttack(model, config.inner_lr)
            grads = [torch.zeros_like(p) for _, p in named]
            for _ in range(config.inner_steps):
                attack.step(proxy, torch.randint(0, count // 2, (config.batch_size,), generator=generator))
                held_out = torch.randint(count // 2, count, (config.batch_size,), generator=generator)
                resist = negative_entropy(model, proxy, held_out, attack.weights)
                for total, grad in zip(grads, torch.autograd.grad(resist, list(attack.weights.values())), strict=True):
                    total.add_(grad, alpha=config.tr_weight / config.inner_steps)
            loss = rows_loss(model, retain, rows)
            loss.backward()
            with torch.no_grad():
                for (_, p), grad in zip(named, grads, strict=True):
                    p.grad.add_(grad)
            return loss.item() if math.isfinite(resist.item()) else math.nan

        settings = TrainSettings(steps=config.outer_steps, lr=config.outer_lr, batch_size=config.batch_size,
                                 seed=owner.seed)
        model.train()
        stats = optimise([p for _, p in named], settings, retain.input_ids.shape[0], objective)
        model.eval()
        after = {"capability_val_acc": _mean_acc(model, val), "probe_loss": self._probe(model, probe, config)}
        notes = {"outer_steps": config.outer_steps, "inner_steps": config.inner_steps, "inner_lr": config.inner_lr,
                 "skipped_steps": stats.skipped, "final_retain_loss": stats.losses[-1],
                 **{f"before_{k}": v for k, v in before.items()}, **{f"after_{k}": v for k, v in after.items()}}
        return Release(model, notes=notes)

    @staticmethod
    def _probe(model: torch.nn.Module, probe: TokenisedBatch, config: AntiFinetuneConfig) -> float:
        """Held-out proxy loss after `probe_steps` simulated attack steps (longer than the trained-against K)."""
        if config.probe_steps == 0:
            return math.nan
        attack = SimulatedAttack(model, config.inner_lr)
        count = probe.input_ids.shape[0]
        generator = torch.Generator().manual_seed(0)
        for _ in range(config.probe_steps):
            attack.step(probe, torch.randint(0, count // 2, (config.batch_size,), generator=generator))
        held_out = torch.arange(count // 2, count)
        with torch.no_grad():
            return float(token_loss(*rows_forward(model, probe, held_out, attack.weights)))


def _mean_acc(model: torch.nn.Module, batches: dict[str, TokenisedBatch]) -> float:
    values = [evaluate(model, batch)[0] for batch in batches.values()]
    return sum(values) / max(1, len(values))
