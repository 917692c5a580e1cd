"""Training with Ray Train: the driver (``cnf train``'s library) and what runs on each worker.

- ``driver``: ``train_experiment``, one function per step (dataset, resume, MLflow, fit, artifacts, summary)
- ``resume``: fingerprints of config, data and code; whether a stored run is resumed; discarding it
- ``cluster``: joining ``$RAY_ADDRESS`` (token auth for local clusters) or starting a private Ray
- ``worker``: ``TrainJob`` and ``train_loop_per_worker``, over ``train_step``, ``TrainMeter``, ``train_loader``
- ``checkpointing``: ``TrainState`` and the ``Checkpointer`` (write, restore, report and commit to Ray)
- ``grids``: sample grids of a finished run
- ``faults``: test-only fault injection (a worker that exits once)
"""
