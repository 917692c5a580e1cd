"""Evaluation as a library, under the thin `cnf evaluate`, `cnf score` and `cnf sweep` stages.

- ``split``       ``evaluate_split``: a model over one split's batches, scored by the task's ``Scorer``;
                  bits/dim over the real pixels only, or over random crops (``CropProtocol``).
- ``experiment``  ``evaluate_experiment`` (an experiment's eval split and extra splits), ``dataset_folder``,
                  ``train_run_id``, ``scalar_metrics``, ``eval_figures``, ``eval_outputs`` (metrics + info),
                  ``load_experiment_model`` / ``checkpoint_mismatch`` (the checkpoint must be the experiment's).
- ``outputs``     what the stages write: ``summary_metrics`` (numbers only), ``summary_info`` (the rest),
                  ``pr_records`` (plot data), ``relative_path`` (no absolute paths in outputs).
- ``sweep``       ``sweep_experiment`` (metrics per sampling temperature, sweep split and extra splits),
                  ``select_temperature``, ``sweep_entry`` (params' ``sweeps`` section), ``temperature_grid``,
                  ``sweep_outputs`` (best values, where they were reached, curve records).
- ``external``    ``score_predictions``: prediction files made elsewhere, or a built-in method (bicubic, the
                  second observer), through the same ``Scorer`` the model's predictions go through.

Each task's protocol lives with the task (``pipelines/tasks/``); nothing here branches on a task's name.
"""
