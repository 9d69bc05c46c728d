"""The suite: every protocol of :data:`byol_bench.protocols.PROTOCOLS` on one checkpoint, through one launcher.

``python -m benchmarks.suite`` (``scripts/run_all_benchmarks.sh``, docs/CLUSTER.md): :mod:`.jobs` (the
(protocol, preset) runs and their records), :mod:`.launchers` (local and torchrun, the report), :mod:`.slurm`
(submitit jobs and the tables job), :mod:`.plan` (GPUs, work and GPU-hours before a run).
"""
