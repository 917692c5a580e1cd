"""Evaluation as a library, under the thin `cnf evaluate`, `cnf score` and `cnf sweep` stages.

- ``split``       ``evaluate_split``: a model over one split's batches, scored by the task's ``Scorer``;
                  bits/dim over the real pixels only, or over random crops (``CropProtocol``).
- ``experiment``  ``evaluate_experiment`` (an experiment's eval split and extra splits), ``dataset_folder``,
                  ``train_run_id``, ``scalar_metrics``, ``eval_figures``.
- ``sweep``       ``sweep_experiment`` (metrics per sampling temperature, sweep split and extra splits),
                  ``select_temperature``, ``sweep_entry`` (params' ``sweeps`` section), ``temperature_grid``.
- ``external``    ``score_predictions``: prediction files made elsewhere, or a built-in method (bicubic, the
                  second observer), through the same ``Scorer`` the model's predictions go through.

Each task's protocol lives with the task (``pipelines/tasks/``); nothing here branches on a task's name.
"""
