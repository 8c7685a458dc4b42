"""The owner's secret (DESIGN §2): what re-parameterisation defenses draw their keys from.

The secret is what the owner holds and the attacker does not: no attack view carries it, and a defense
writes nothing of it into its release. It is derived from the preset's zoo seed and the job's key, so a
run is reproducible from its configuration alone: two empty storage roots, two machines, give the same
releases (an earlier design drew one random secret per storage root, which made PaRaMS- and
Merge-Lock-style numbers differ between otherwise bit-identical runs). Each job (defense, format, model,
task, seed) gets its own key, so seeds vary the keys as they vary every other release.

The secret is a stand-in for a real owner's private randomness: the benchmark enforces its information
boundary through the views (bench.plugins.threat_model), not through cryptography.
"""

from __future__ import annotations

import hashlib


def owner_secret(preset_seed: int, job_key: str) -> int:
    """One job's secret: 63 bits of SHA-256 over the preset's seed and the job's key."""
    digest = hashlib.sha256(f"lockbench-owner-secret:{preset_seed}:{job_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
