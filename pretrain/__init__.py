"""BYOL pretraining (PROTOCOLS.md A.2, B §1): ``python -m pretrain --preset NAME [key=value ...]``.

Modules: ``config`` (the config and its resolved values), ``model`` (networks and loss), ``augment`` (the two
view pipelines), ``data`` (sampler and loaders), ``lars`` (the optimizer), ``schedules`` (per-step lr and EMA
momentum), ``knn`` (the kNN monitor) and ``train`` (``run(cfg)``, the loop, checkpoints, the record).
"""
