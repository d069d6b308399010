"""The fuzz suite's long run: thousands of generated inputs through `planner validate`,
`planner solve --time-limit 1` and `planner execute --dry-run`.

Inputs and property are those of tests/fuzzing.py (the CI share, tests/test_fuzz.py,
runs a fixed 25 of each kind): exit code 0 or 2, no traceback, no internal error, no
partial output file. Faults are counted, not raised, so a run always finishes and
reports; it exits 1 if it saw any.

    .venv/bin/python benchmarks/fuzz.py                        # 5,000 inputs, seed 0
    .venv/bin/python benchmarks/fuzz.py --inputs 1000 --seed 3 --out /tmp/fuzz.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.fuzzing

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from tests import fuzzing
from tests.fuzzing import Stats

SHARES = {"schema instances": 0.4, "mutated instances": 0.3, "mutated plans": 0.3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=5000, help="inputs in all (split by kind)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/fuzz.json"))
    args = ap.parse_args()

    out = args.out.resolve()
    kinds: dict[str, Stats] = {k: Stats() for k in SHARES}
    walls: dict[str, float] = {}

    def configured(n: int):  # type: ignore[no-untyped-def]
        return settings(max_examples=n, deadline=None, database=None,
                        suppress_health_check=list(HealthCheck))

    n = {k: round(args.inputs * share) for k, share in SHARES.items()}

    @seed(args.seed)
    @configured(n["schema instances"])
    @given(fuzzing.instances())
    def schema(instance: dict[str, object]) -> None:
        fuzzing.check_instance(kinds["schema instances"], fuzzing.instance_json(instance))

    @seed(args.seed)
    @configured(n["mutated instances"])
    @given(st.sampled_from(["tiny", "cpu"]), st.data())
    def mutated_instances(name: str, data: st.DataObject) -> None:
        raw = data.draw(fuzzing.mutations(fuzzing.seeds()[name][0]))
        fuzzing.check_instance(kinds["mutated instances"], raw)

    @seed(args.seed)
    @configured(n["mutated plans"])
    @given(st.sampled_from(["tiny", "cpu"]), st.data())
    def mutated_plans(name: str, data: st.DataObject) -> None:
        instance, plan = fuzzing.seeds()[name]
        fuzzing.check_plan_file(kinds["mutated plans"], data.draw(fuzzing.mutations(plan)),
                                instance)

    fuzzing.seeds()
    for kind, fn in zip(SHARES, (schema, mutated_instances, mutated_plans), strict=True):
        t0 = time.perf_counter()
        fn()
        walls[kind] = round(time.perf_counter() - t0, 1)
        print(f"{kind}: {kinds[kind].line()} in {walls[kind]} s", flush=True)

    total = Stats()
    for s in kinds.values():
        total.inputs += s.inputs
        total.runs += s.runs
        total.exit_codes.update(s.exit_codes)
        total.by_command.update(s.by_command)
        total.tracebacks += s.tracebacks
        total.internal_errors += s.internal_errors
        total.partial_files += s.partial_files
        total.problems += s.problems
    print(f"total: {total.line()}")
    for p in total.problems[:20]:
        print(f"  {p}")
    summary = {
        "seed": args.seed, "inputs": total.inputs, "command_runs": total.runs,
        "exit_codes": {str(k): v for k, v in sorted(total.exit_codes.items())},
        "runs_by_command": dict(sorted(total.by_command.items())),
        "tracebacks": total.tracebacks, "internal_errors": total.internal_errors,
        "partial_files": total.partial_files, "problems": total.problems[:100],
        "by_kind": {k: {"inputs": s.inputs, "runs": s.runs, "wall_s": walls[k],
                        "exit_codes": {str(c): v for c, v in sorted(s.exit_codes.items())}}
                    for k, s in kinds.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{out}: written")
    return 1 if total.problems else 0


if __name__ == "__main__":
    sys.exit(main())
