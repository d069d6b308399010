"""Prices: the price table (per GPU-hour and host-hour) and the cost of a cluster."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from planner.io import InputError, read_json


@dataclass(frozen=True)
class Prices:
    gpus: dict[str, float]  # GPU type -> price per GPU-hour
    host: float  # price per host-hour, beyond its GPUs
    currency: str
    where: str

    def cluster_cost(self, counts: dict[str, int], n_hosts: int) -> float:
        return round(sum(self.gpus[t] * n for t, n in counts.items())
                     + self.host * n_hosts, 6)


def _price(v: Any, where: str) -> float:
    p = v.get("per_hour") if isinstance(v, dict) else v
    if isinstance(p, bool) or not isinstance(p, (int, float)) or p < 0:
        raise InputError([f"{where}: expected a price per hour >= 0 (a number, or an "
                          "object with \"per_hour\")"])
    return float(p)


def load_prices(path: str | Path | None) -> Prices:
    """A price table: ``{"gpus": {TYPE: PRICE | {"per_hour": PRICE, ...}}, "host": ...}``.

    Without a path, the example table shipped in ``planner/data/prices.json``.
    """
    if path is None:
        text = resources.files("planner.data").joinpath("prices.json").read_text("utf-8")
        data, where = json.loads(text), "planner/data/prices.json"
    else:
        data, _ = read_json(path)
        where = str(path)
    if not isinstance(data, dict) or not isinstance(data.get("gpus"), dict):
        raise InputError([f"{where}: gpus: missing required field (an object: GPU type -> "
                          "price per hour)"])
    if "host" not in data:
        raise InputError([f"{where}: host: missing required field (price per host-hour; "
                          "0 when GPU prices include their host)"])
    gpus = {str(k): _price(v, f"{where}: gpus.{k}") for k, v in data["gpus"].items()
            if not str(k).startswith("_")}
    return Prices(gpus, _price(data["host"], f"{where}: host"),
                  str(data.get("currency", "USD")), where)
