"""What a recipe's ``dropbp`` section asks of the technique: its drop-rate schedule as the engine takes it, and the
whole :class:`~dropbp.core.TechniqueSpec` that :func:`~dropbp.core.build_technique` puts on the model."""
from __future__ import annotations

import dataclasses

from dropbp.core.assembly import AllocationSpec, TechniqueSpec, engine_keywords
from dropbp.core.rate_schedule import RateSchedule
from dropbp.recipes.config.dropbp_section import DropBPSection, DropScheduleSection

#: Section fields resolved before they reach the engine (the sampler by device, the schedule by the run's steps).
_RESOLVED = frozenset({"sampler", "schedule"})


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


def technique_spec(section: DropBPSection, *, sampler: str, total_steps: int, seq_len: int, options: object = None,
                   ranks: int = 1) -> TechniqueSpec:
    """The technique ``section`` asks for in a run of ``total_steps`` steps of ``seq_len`` tokens: ``sampler`` is
    the section's sampler resolved for the device (``auto``: pool on Gaudi); ``options`` the technique's own. Every
    field of the section that names an engine keyword reaches the engine as it is, so a new engine knob needs only
    its field. With several ``ranks`` the allocation is uniform (sensitivities are measured on one process)."""
    engine = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)
              if f.name in engine_keywords() and f.name not in _RESOLVED}
    engine.update(sampler=sampler, seq_len=seq_len, schedule=rate_schedule(section.schedule, total_steps, sampler))
    allocation = AllocationSpec(mode=section.allocation_mode if ranks == 1 else "uniform",
                                allocate_at=section.allocate_at, sensitivity=section.sensitivity,
                                allocator=section.allocator, every=section.reallocate_every)
    return TechniqueSpec(section.technique, section.drop_rate, options, engine, allocation)
