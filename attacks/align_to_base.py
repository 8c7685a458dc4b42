"""Align a re-parameterised release back to the public base, then merge (DESIGN §4, "undoing a
re-parameterisation"; family `aligning`).

Function-preserving defenses (PaRaMS-style permutations and reciprocal head scales, Merge-Lock-style
invertible attention transforms) move the release far from the base without changing what it computes.
The attacker owns the base, and a fine-tuned expert stays close to it, so the base is an anchor: among
all re-parameterisations of the release, pick the one nearest to the base. Per block:

1. MLP units: match the release's hidden units to the base's by weight similarity (each unit's in-rows
   and out-column, each piece normalised so that scales do not matter, cosine) with the Hungarian
   assignment, and permute them back. Attention heads (key/value groups) are matched the same way on
   features every within-head transform leaves unchanged (the query–key and value–output products).
2. Reciprocal scales: per MLP unit (Llama's up/down pair, the only homogeneous one) and per head
   (query/key, value/output), the factor that restores the base's norm ratio between the two sides.
3. Invertible mixing: per key/value group, the transform A minimising the distance to the base of both
   sides at once (query A·W_q and key A⁻ᵀ·W_k; value A·W_v and output W_o·A⁻¹) — a least-squares problem
   linear in A (a Sylvester equation), restricted on Llama to the RoPE-commuting family (a complex scalar
   per rotary pair), since any other A would change the function. With `unmix: auto` a solved A is applied
   only where it brings that group closer to the base by `unmix_gain`, so that an unmixed release does not
   trade part of its fine-tuning update for a transform it never had.

Every edit is applied as a pair that keeps the function exactly, so the aligned release computes what the
release computes. It is then merged with the public experts through mergekit as `per_member` does (the
release pinned at weight 1.0, the others' weight searched on the attacker's validation split).
Architectures: Llama- and GPT-2-style transformers, full-weight releases only.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from peft import PeftModel
from pydantic import Field, field_validator
from scipy.optimize import linear_sum_assignment
from transformers import PreTrainedModel

from attacks.common import (
    RELEASE,
    MergeInputs,
    Objective,
    SeedFreeMerge,
    full_weights,
    member_weights,
    merge_knobs,
    objective_examples,
    validation_scorer,
    weighted_method,
)
from bench.config import StrictModel
from bench.plugins import Attack, AttackNotApplicable, AttackOutput, PublicView, register_attack
from bench.toolkit.merging import method_spec, sparsifies
from bench.zoo.layout import FAMILIES, Block, InMap, OutMap, blocks

Unmix = Literal["auto", "always", "never"]


class AlignConfig(StrictModel):
    """What the alignment undoes; each step keeps the release's function."""

    permute_mlp: bool = Field(True, description="Hungarian matching of MLP hidden units to the base's")
    permute_heads: bool = Field(True, description="Hungarian matching of key/value head groups to the base's")
    rescale: bool = Field(True, description="undo per-unit and per-head reciprocal scales by norm matching")
    unmix: Unmix = Field("auto", description="undo invertible query-key / value-output transforms by least "
                         "squares: where it helps by `unmix_gain` (auto), always, or never")
    unmix_gain: float = Field(2.0, gt=1, description="auto: apply a solved transform only if it divides the "
                              "group's distance to the base by at least this")


class AlignToBaseConfig(AlignConfig):
    method: str = Field("task_arithmetic", description="mergekit method with a per-member weight")
    weights: list[float] = Field(default_factory=lambda: [0.5, 1.0], min_length=1,
                                 description="candidate weights of the other members (the release stays at 1.0)")
    density: float = Field(1.0, gt=0, le=1, description="for sparsifying methods")
    objective: Objective = Field("all", description="maximise the mean over the protected and members' tasks")

    @field_validator("method")
    @classmethod
    def _weighted_method(cls, method: str) -> str:
        return weighted_method(method)


# ----------------------------------------------------------------------------- small linear algebra


def _unit_rows(matrix: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm (zero rows stay zero), so a similarity ignores per-row scales."""
    return matrix / matrix.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _augmented(out_map: OutMap, start: int, stop: int) -> torch.Tensor:
    """Rows of an output map with their bias as a last column: a transform acts on both alike."""
    rows, bias = out_map.get(start, stop)
    return rows if bias is None else torch.cat([rows, bias[:, None]], 1)


def _assignment(similarity: torch.Tensor) -> torch.Tensor:
    """perm with new unit j = release unit perm[j], matched to base unit j (maximum total similarity)."""
    release_units, base_units = linear_sum_assignment(similarity.detach().numpy(), maximize=True)
    perm = torch.empty(len(base_units), dtype=torch.long)
    perm[torch.as_tensor(base_units)] = torch.as_tensor(release_units)
    return perm


def reciprocal_factors(out_r: torch.Tensor, out_b: torch.Tensor, in_r: torch.Tensor, in_b: torch.Tensor
                       ) -> torch.Tensor:
    """Per row, the factor a of a reciprocal pair (out-rows × a, in-rows ÷ a) that the release carries.

    The base's norm ratio between the two sides is what a fine-tuned expert keeps (it moves little), so
    a² = (‖out_r‖·‖in_b‖) / (‖out_b‖·‖in_r‖); the sign is the one that makes both sides point the base's way.
    """
    norms = [t.norm(dim=1).clamp_min(1e-12) for t in (out_r, out_b, in_r, in_b)]
    magnitude = torch.sqrt(norms[0] * norms[3] / (norms[1] * norms[2]))
    agreement = (out_r * out_b).sum(1) / (norms[0] * norms[1]) + (in_r * in_b).sum(1) / (norms[2] * norms[3])
    return torch.where(agreement < 0, -magnitude, magnitude)


def solve_full(x: torch.Tensor, y: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """argmin_A ‖A·x − y‖²/‖y‖² + ‖p·A − q‖²/‖q‖² over all square A, via its Sylvester normal equation
    A·S + T·A = C (S, T symmetric, so both diagonalise and the solve is elementwise)."""
    s1, s2 = float(y.pow(2).sum()) or 1.0, float(q.pow(2).sum()) or 1.0
    lam, u = torch.linalg.eigh(x @ x.T / s1)
    mu, v = torch.linalg.eigh(p.T @ p / s2)
    c = y @ x.T / s1 + p.T @ q / s2
    denominator = (mu[:, None] + lam[None, :]).clamp_min(1e-12 * float(lam.max() + mu.max()))
    return v @ ((v.T @ c @ u) / denominator) @ u.T


def solve_rope(x: torch.Tensor, y: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The same objective over RoPE-commuting A only (rotate-half layout: a complex scalar z per rotary
    pair (i, i + d/2)), where it separates into one complex least-squares scalar per pair:
    rows of A·x are z·ξ, columns of p·A are z̄·π."""
    half = x.shape[0] // 2
    s1, s2 = float(y.pow(2).sum()) or 1.0, float(q.pow(2).sum()) or 1.0
    xi, eta = torch.complex(x[:half], x[half:]), torch.complex(y[:half], y[half:])
    pi, kappa = torch.complex(p[:, :half], p[:, half:]), torch.complex(q[:, :half], q[:, half:])
    numerator = (xi.conj() * eta).sum(1) / s1 + (pi * kappa.conj()).sum(0) / s2
    denominator = (xi.abs() ** 2).sum(1) / s1 + (pi.abs() ** 2).sum(0) / s2
    z = numerator / denominator.clamp_min(1e-300)
    a = torch.zeros(2 * half, 2 * half, dtype=torch.float64)
    index = torch.arange(half)
    a[index, index], a[index, index + half] = z.real, -z.imag
    a[index + half, index], a[index + half, index + half] = z.imag, z.real
    return a


def _objective(a: torch.Tensor, x: torch.Tensor, y: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> float:
    s1, s2 = float(y.pow(2).sum()) or 1.0, float(q.pow(2).sum()) or 1.0
    return float((a @ x - y).pow(2).sum()) / s1 + float((p @ a - q).pow(2).sum()) / s2


# ----------------------------------------------------------------------------- the alignment steps


def _heads_of(block: Block, group: int) -> list[int]:
    return [head for head in range(block.heads) if block.group(head) == group]


def _unit_similarity(block: Block, base: Block) -> torch.Tensor:
    """(release unit, base unit) similarity: the cosine of the units' concatenated in-rows and out-column,
    each piece normalised first so that no scale matters. A gated MLP's up row and down column may carry a
    reciprocal factor of either sign, so their part counts by its magnitude."""
    size = block.intermediate

    def pieces(of: Block) -> list[torch.Tensor]:
        rows = [*(_augmented(out_map, 0, size) for out_map in of.mlp_in), of.mlp_out.get(0, size).T]
        return [_unit_rows(piece) for piece in rows]

    cosines = [mine @ theirs.T for mine, theirs in zip(pieces(block), pieces(base), strict=True)]
    if len(block.mlp_in) == 2:  # gate | up, down: the last two share one factor
        return (cosines[0] + (cosines[1] + cosines[2]).abs()) / 3
    return sum(cosines) / len(cosines)


def align_mlp(block: Block, base: Block, permute: bool, rescale: bool) -> dict[str, int]:
    """Permute the hidden units back to the base's order, then undo Llama's up/down reciprocal scales."""
    size = block.intermediate
    moved = 0
    if permute:
        perm = _assignment(_unit_similarity(block, base))
        moved = int((perm != torch.arange(size)).sum())
        if moved:
            for out_map in block.mlp_in:
                out_map.permute(perm)
            block.mlp_out.permute(perm)
    scaled = 0
    if rescale and len(block.mlp_in) == 2:  # gated MLP: the up projection enters act(gate)·up linearly
        up, up_base = block.mlp_in[1], base.mlp_in[1]
        factors = reciprocal_factors(_augmented(up, 0, size), _augmented(up_base, 0, size),
                                     block.mlp_out.get(0, size).T, base.mlp_out.get(0, size).T)
        rows, bias = up.get(0, size)
        up.set(0, size, rows / factors[:, None], bias / factors if bias is not None else None)
        block.mlp_out.set(0, size, block.mlp_out.get(0, size) * factors[None, :])
        scaled = size
    return {"mlp_units_moved": moved, "mlp_units_rescaled": scaled}


def _qk_similarity(block: Block, base: Block, hr: int, hb: int, gr: int, gb: int) -> float:
    """Cosine between the two heads' query–key products [W_q|b_q]ᵀ[W_k|b_k], computed through head-sized
    Gram matrices (tr(kᵀq qᵀk) = Σ (q q'ᵀ) ⊙ (k k'ᵀ)) instead of model-sized products."""
    d = block.head_dim
    q_r, q_b = _augmented(block.q, hr * d, hr * d + d), _augmented(base.q, hb * d, hb * d + d)
    k_r, k_b = _augmented(block.k, gr * d, gr * d + d), _augmented(base.k, gb * d, gb * d + d)
    inner = float(((q_r @ q_b.T) * (k_r @ k_b.T)).sum())
    norm_r = float(((q_r @ q_r.T) * (k_r @ k_r.T)).sum()) ** 0.5
    norm_b = float(((q_b @ q_b.T) * (k_b @ k_b.T)).sum()) ** 0.5
    return inner / max(norm_r * norm_b, 1e-300)


def _vo_similarity(block: Block, base: Block, hr: int, hb: int, gr: int, gb: int) -> float:
    """Cosine between the two heads' value–output products W_o·[W_v|b_v], through head-sized Grams."""
    d = block.head_dim
    o_r, o_b = block.o.get(hr * d, hr * d + d), base.o.get(hb * d, hb * d + d)
    v_r, v_b = _augmented(block.v, gr * d, gr * d + d), _augmented(base.v, gb * d, gb * d + d)
    inner = float(((o_r.T @ o_b) * (v_r @ v_b.T)).sum())
    norm_r = float(((o_r.T @ o_r) * (v_r @ v_r.T)).sum()) ** 0.5
    norm_b = float(((o_b.T @ o_b) * (v_b @ v_b.T)).sum()) ** 0.5
    return inner / max(norm_r * norm_b, 1e-300)


def _permute_head_rows(out_map: OutMap, heads: list[int], d: int) -> None:
    """New head j of the map = old head heads[j] (rows and bias)."""
    rows = torch.cat([torch.arange(h * d, h * d + d) for h in heads])
    block, bias = out_map.get(0, len(heads) * d)
    out_map.set(0, len(heads) * d, block[rows], bias[rows] if bias is not None else None)


def _permute_head_columns(in_map: InMap, heads: list[int], d: int) -> None:
    columns = torch.cat([torch.arange(h * d, h * d + d) for h in heads])
    in_map.set(0, len(heads) * d, in_map.get(0, len(heads) * d)[:, columns])


def align_heads(block: Block, base: Block) -> int:
    """Permute key/value groups (and the query heads that read them) to the base's order."""
    groups, per_group = block.kv_heads, block.heads // block.kv_heads
    similarity = torch.zeros(groups, groups, dtype=torch.float64)
    for gr in range(groups):
        for gb in range(groups):
            similarity[gr, gb] = sum(_qk_similarity(block, base, hr, hb, gr, gb)
                                     + _vo_similarity(block, base, hr, hb, gr, gb)
                                     for hr, hb in zip(_heads_of(block, gr), _heads_of(base, gb), strict=True))
    perm = _assignment(similarity)
    moved = int((perm != torch.arange(groups)).sum())
    if moved:
        d = block.head_dim
        kv_order = perm.tolist()
        q_order = [group * per_group + i for group in kv_order for i in range(per_group)]
        _permute_head_rows(block.k, kv_order, d)
        _permute_head_rows(block.v, kv_order, d)
        _permute_head_rows(block.q, q_order, d)
        _permute_head_columns(block.o, q_order, d)
    return moved


def _group_q(block: Block, group: int) -> torch.Tensor:
    """The query rows of every head reading `group`, side by side (one transform acts on each)."""
    d = block.head_dim
    return torch.cat([_augmented(block.q, h * d, h * d + d) for h in _heads_of(block, group)], 1)


def _group_o(block: Block, group: int) -> torch.Tensor:
    d = block.head_dim
    return torch.cat([block.o.get(h * d, h * d + d) for h in _heads_of(block, group)], 0)


def _apply_qk(block: Block, group: int, a: torch.Tensor) -> None:
    d = block.head_dim
    for head in _heads_of(block, group):
        block.q.left_multiply(head * d, head * d + d, a)
    block.k.left_multiply(group * d, group * d + d, torch.linalg.inv(a).T)


def _apply_vo(block: Block, group: int, a: torch.Tensor) -> None:
    d = block.head_dim
    block.v.left_multiply(group * d, group * d + d, a)
    for head in _heads_of(block, group):
        block.o.right_multiply(head * d, head * d + d, torch.linalg.inv(a))


def rescale_heads(block: Block, base: Block) -> int:
    """Undo per-head reciprocal scales: queries ×α / keys ÷α and values ×β / outputs ÷β."""
    d = block.head_dim
    eye = torch.eye(d, dtype=torch.float64)
    for group in range(block.kv_heads):
        k_r, k_b = _augmented(block.k, group * d, group * d + d), _augmented(base.k, group * d, group * d + d)
        alpha = reciprocal_factors(_group_q(block, group).reshape(1, -1), _group_q(base, group).reshape(1, -1),
                                   k_r.reshape(1, -1), k_b.reshape(1, -1))[0]
        _apply_qk(block, group, eye / alpha)
        v_r, v_b = _augmented(block.v, group * d, group * d + d), _augmented(base.v, group * d, group * d + d)
        beta = reciprocal_factors(v_r.reshape(1, -1), v_b.reshape(1, -1), _group_o(block, group).reshape(1, -1),
                                  _group_o(base, group).reshape(1, -1))[0]
        _apply_vo(block, group, eye / beta)
    return block.kv_heads


def unmix_heads(block: Block, base: Block, mode: Unmix, gain: float) -> int:
    """Solve each group's query–key and value–output transforms against the base; apply those that help."""
    if mode == "never":
        return 0
    d, applied = block.head_dim, 0
    for group in range(block.kv_heads):
        rows = slice(group * d, group * d + d)
        k_r, k_b = _augmented(block.k, rows.start, rows.stop), _augmented(base.k, rows.start, rows.stop)
        qk = (_group_q(block, group), _group_q(base, group), k_b.T, k_r.T)
        v_r, v_b = _augmented(block.v, rows.start, rows.stop), _augmented(base.v, rows.start, rows.stop)
        vo = (v_r, v_b, _group_o(base, group), _group_o(block, group))
        for problem, solver, apply in ((qk, solve_rope if block.rope else solve_full, _apply_qk),
                                       (vo, solve_full, _apply_vo)):
            a = solver(*problem)
            before, after = _objective(torch.eye(d, dtype=torch.float64), *problem), _objective(a, *problem)
            if mode == "always" or (before > 0 and after * gain**2 < before):
                apply(block, group, a)
                applied += 1
    return applied


def align(release: PreTrainedModel, base: PreTrainedModel, config: AlignConfig) -> tuple[PreTrainedModel, dict]:
    """A re-parameterised copy of `release`, as close to `base` as its symmetries allow; and what moved."""
    aligned = copy.deepcopy(release).eval()
    report = {"mlp_units_moved": 0, "mlp_units_rescaled": 0, "head_groups_moved": 0, "head_groups_rescaled": 0,
              "transforms_unmixed": 0}
    try:
        pairs = list(zip(blocks(aligned), blocks(base), strict=True))
    except ValueError as error:
        raise AttackNotApplicable(f"align_to_base: {error}") from error
    with torch.no_grad():
        for block, anchor in pairs:
            _align_block(block, anchor, config, report)
    return aligned, report


def _align_block(block: Block, anchor: Block, config: AlignConfig, report: dict[str, int]) -> None:
    """The steps in order: permutations first (their features ignore scales), then scales, then mixing."""
    for key, value in align_mlp(block, anchor, config.permute_mlp, config.rescale).items():
        report[key] += value
    if config.permute_heads:
        report["head_groups_moved"] += align_heads(block, anchor)
    if config.rescale:
        report["head_groups_rescaled"] += rescale_heads(block, anchor)
    report["transforms_unmixed"] += unmix_heads(block, anchor, config.unmix, config.unmix_gain)


def relative_update(state: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> float:
    """‖θ − θ_base‖_F / ‖θ_base‖_F over the shared floating-point tensors: the size of the update."""
    shared = [name for name, t in state.items() if t.is_floating_point() and name in base]
    difference = sum(float((state[n].double() - base[n].double()).pow(2).sum()) for n in shared)
    size = sum(float(base[n].double().pow(2).sum()) for n in shared)
    return (difference / max(size, 1e-300)) ** 0.5


def check_applicable(view: PublicView) -> None:
    if view.release_format != "full" or isinstance(view.release, PeftModel):
        raise AttackNotApplicable("align_to_base needs a full-weight release: an adapter shares the base's "
                                  "coordinates, so there is no re-parameterisation to undo")
    family = view.release.config.model_type
    if family not in FAMILIES:
        raise AttackNotApplicable(f"align_to_base knows the block layout of {sorted(FAMILIES)}, not {family!r}")


@register_attack(track="merge", family="aligning")
class AlignToBase(SeedFreeMerge, Attack[AlignToBaseConfig]):
    name = "align_to_base"
    description = ("aligns a re-parameterised release back to the public base (Hungarian unit matching, "
                   "norm matching, least-squares unmixing of attention), then merges it pinned at weight 1.0")

    def run(self, view: PublicView) -> AttackOutput:
        config = self.config
        check_applicable(view)
        inputs = MergeInputs.from_view(view)
        before = relative_update(inputs.members[RELEASE], inputs.base)
        aligned, report = align(view.release, view.base, config)
        inputs.members[RELEASE] = full_weights(aligned)
        after = relative_update(inputs.members[RELEASE], inputs.base)
        layout = inputs.layout(config.method)
        evaluate = validation_scorer(view, config.objective)
        names = {parameter.name for parameter in method_spec(config.method).parameters}

        def parameters(other: float) -> dict[str, Any]:
            chosen: dict[str, Any] = {"weight": member_weights(list(inputs.members), 1.0, other)}
            if "normalize" in names:
                chosen["normalize"] = False  # normalising would re-scale the pinned release
            if sparsifies(config.method):
                chosen["density"] = config.density
            return chosen

        trace: list[dict[str, Any]] = []
        best: tuple[float, Any, float] = (-1.0, None, config.weights[0])
        for weight in dict.fromkeys(config.weights):
            model = inputs.merge(config.method, parameters(weight), layout)
            value = evaluate(model)
            trace.append({"weight": weight, "val": value})
            if value > best[0]:
                best = (value, model, weight)
        value, model, weight = best
        knobs = merge_knobs(config.method, parameters(weight), layout, view.seed, objective=config.objective,
                            val_score=value, evaluations=len(trace), trace=trace,
                            align_distance_before=before, align_distance_after=after, unmix=config.unmix, **report)
        return AttackOutput(models={1.0: model}, knobs=knobs, examples=objective_examples(view, config.objective))
