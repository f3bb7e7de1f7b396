"""The training engine: optimisation, schedule, checkpoints, the loop, evaluation."""
