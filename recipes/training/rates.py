"""The drop-rate schedule a recipe asks for (``dropbp.schedule.*``), as the engine takes it."""
from __future__ import annotations

from dropbp.core.rate_schedule import RateSchedule
from dropbp.recipes.config.dropbp_section import DropScheduleSection


def rate_schedule(section: DropScheduleSection, total_steps: int, sampler: str) -> RateSchedule | None:
    """The engine's drop-rate schedule of a recipe (None when constant): linear and cosine are quantised to 4 rates
    with the pool sampler unless ``levels`` says otherwise, so the masks stay bounded."""
    if section.is_constant:
        return None
    levels = section.levels
    if levels is None and sampler == "pool" and section.kind in ("linear", "cosine"):
        levels = 4
    return RateSchedule(section.kind, total_steps=total_steps, end=section.end_rate,
                        warmup_steps=section.warmup_steps, stages=section.stages, levels=levels)
