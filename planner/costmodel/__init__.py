"""Cost models: the interface, the analytic roofline and the profiled fits."""

from __future__ import annotations

from planner.costmodel.analytic import AnalyticCostModel
from planner.costmodel.base import CostModel, CostModelError
from planner.domain import Instance

COST_MODELS = ("auto", "analytic", "profiled")


def cost_model_for(instance: Instance, kind: str = "auto",
                   pcie_gen: int | None = None) -> CostModel:
    """The cost model an instance is solved with.

    ``auto`` uses the profiles the instance lists where they cover a (model,
    device) pair and the analytic model elsewhere; ``analytic`` ignores profiles.
    ``pcie_gen`` (what if) puts every GPU of the analytic model on that generation.
    """
    if kind == "analytic" or (kind == "auto" and not instance.profiles):
        return AnalyticCostModel.for_instance(instance, pcie_gen)
    from planner.costmodel.profiled import profiled_for_instance

    # a GPU type without reference data is fine where the profiles cover it
    analytic = AnalyticCostModel.for_instance(instance, pcie_gen, strict=False)
    return profiled_for_instance(instance, fallback=analytic)


__all__ = ["COST_MODELS", "AnalyticCostModel", "CostModel", "CostModelError", "cost_model_for"]
