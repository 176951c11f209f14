"""Scaling out on Ray: many trials at once and one evaluation across processes or machines.

sweep        `iwae sweep`: a grid of runs as Ray tasks, resumable, with a per-trial evaluation
grid         a sweep's grid file parsed into trials (the file format) and their RunConfigs
trial        one trial: train, resume or skip it into its model folder, then evaluate it (a Ray task)
sweep_table  the table over a sweep's trials, by configuration across seeds, with paired differences
sharded      `iwae eval --workers`: the test log-likelihood split over processes, the same numbers as one
cluster      connecting to Ray: a local Ray on this machine, or a cluster (a client address)
distributed  data-parallel training under torchrun (DDP): each process trains on its own shard
"""
