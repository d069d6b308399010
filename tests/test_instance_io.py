"""Instance loading: every fault is one line naming the file and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from planner.io import InputError, load_instance, write_json_atomic
from tests.conftest import ROOT, tiny_dict


def _mutate(path: str, value: Any) -> dict[str, Any]:
    d = tiny_dict()
    keys = path.split(".")
    cur: Any = d
    for k in keys[:-1]:
        cur = cur[int(k)] if k.isdigit() else cur[k]
    last = keys[-1]
    if value is _DELETE:
        del cur[int(last) if last.isdigit() else last]
    elif last.isdigit():
        cur[int(last)] = value
    else:
        cur[last] = value
    return d


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "expected"), [
    # a required field is missing
    ("requests.0.prompt_tokens", _DELETE, "requests[0].prompt_tokens: missing required field"),
    # wrong type: a string where a number belongs
    ("requests.1.arrival_s", "soon", "requests[1].arrival_s: wrong type"),
    # zero tokens
    ("requests.2.output_tokens", 0, "requests[2].output_tokens: must be >= 1"),
    # negative tokens
    ("requests.2.prompt_tokens", -5, "requests[2].prompt_tokens: must be >= 1"),
    # negative arrival
    ("requests.3.arrival_s", -1.0, "requests[3].arrival_s: must be >= 0"),
    # a request for a model the instance does not have
    ("requests.0.model", "gpt-5", "requests[0].model: unknown model 'gpt-5'"),
    # duplicate request ids
    ("requests.1.id", "a", "duplicate request id 'a'"),
    # duplicate model ids
    ("models.1.id", "llama3-8b", "duplicate model id 'llama3-8b'"),
    # a GGUF file that does not exist
    ("models.0", {"id": "llama3-8b", "gguf": "nowhere/x.gguf"}, "models[0].gguf:"),
    # an unknown reference model
    ("models.0.reference", "nope", "models[0].reference: unknown model 'nope'"),
    # duplicate device ids across the cluster
    ("cluster.hosts.0.gpus.0.id", "box", "duplicate device id 'box'"),
    # an objective we do not know
    ("objective", "fastest", "objective:"),
])
def test_invalid_instance_fields(path: str, value: Any, expected: str,
                                 write_instance: Any) -> None:
    p = write_instance(_mutate(path, value))
    with pytest.raises(InputError) as exc:
        load_instance(p)
    assert any(line.startswith(str(p)) and expected in line for line in exc.value.lines), \
        exc.value.lines


def test_malformed_json_names_line(write_instance: Any) -> None:
    p = write_instance('{"format": "planner.instance/1",\n "name": }')
    with pytest.raises(InputError) as exc:
        load_instance(p)
    assert "malformed JSON at line 2" in exc.value.lines[0]


def test_all_faults_reported_together(write_instance: Any) -> None:
    d = tiny_dict()
    d["requests"][0]["prompt_tokens"] = 0
    d["requests"][1]["arrival_s"] = -3
    with pytest.raises(InputError) as exc:
        load_instance(write_instance(d))
    assert len(exc.value.lines) == 2


def test_shipped_instances_load() -> None:
    from planner.demo import ensure_models

    ensure_models()  # cpu-demo.json names the demo's GGUF files in the model cache
    for p in sorted((ROOT / "instances").glob("*.json")):
        inst = load_instance(p)
        assert inst.requests and inst.sha256


def test_mixed_instance_shape() -> None:
    inst = load_instance(ROOT / "instances" / "mixed.json")
    assert len(inst.models) == 6
    assert 150 <= len(inst.requests) <= 260
    assert max(r.arrival_s for r in inst.requests) <= 600
    assert len({(r.prompt_tokens, r.output_tokens) for r in inst.requests}) > 100
    gpus = [d for d in inst.cluster.devices if d.kind == "gpu"]
    assert sorted(d.type for d in gpus) == ["rtx-5000-ada"] * 2 + ["rtx-a6000"] * 2


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json_atomic(target, {"a": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": Boom()})
    assert json.loads(target.read_text()) == {"a": 1}  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left


def test_atomic_write_gives_the_mode_open_would(tmp_path: Path) -> None:
    """A new file gets 0666 less the umask (not mkstemp's private 0600); a replaced file
    keeps its mode."""
    import os
    import stat

    from planner.io import write_json_atomic

    mask = os.umask(0o022)
    os.umask(mask)
    new = write_json_atomic(tmp_path / "new.json", {"a": 1})
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~mask
    old = tmp_path / "old.json"
    old.write_text("{}")
    old.chmod(0o640)
    write_json_atomic(old, {"b": 2})
    assert stat.S_IMODE(old.stat().st_mode) == 0o640
