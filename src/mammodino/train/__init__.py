"""Meta-architecture, schedules, optimiser groups, the loop, checkpoints, distributed."""
