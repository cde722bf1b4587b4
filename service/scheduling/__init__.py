"""Compute budgets: what a decoded image costs and when it runs.

Batching (`batcher`), the single inference thread's queue (`device_queue`), the model call with its
tiling and precision (`engine`, `tiling`) and the fault classification (`faults`). Images arrive here
already decoded and within the intake limits; these modules decide cost, order and grouping.
"""
