"""Sample grids of a finished run: rows x, y, sample per temperature, y drawn by its task."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.tasks import get_task
from pipelines.tasks.base import display_input
from pipelines.training.grids import sample_grids


class Sampler:
    """Stands in for a model: a sample is ``y`` scaled by the temperature."""

    def __init__(self, y):
        self.y, self.temperatures = y, []

    def sample(self, x, temperature=1.0):
        self.temperatures.append(temperature)
        return self.y * temperature


@pytest.mark.parametrize("task_name", ["depth", "vessel", "sr"])
def test_grids_draw_y_with_the_tasks_display(tmp_path, task_name):
    task = get_task(task_name)
    g = torch.Generator().manual_seed(0)
    if task_name == "sr":
        y, x = torch.randint(0, 256, (3, 3, 8, 8), generator=g).float(), torch.rand(3, 3, 4, 4, generator=g)
    elif task_name == "vessel":
        y, x = (torch.rand(3, 1, 8, 8, generator=g) > 0.5).float(), torch.rand(3, 3, 8, 8, generator=g)
    else:
        y, x = 6.0 * torch.rand(3, 1, 8, 8, generator=g), torch.rand(3, 1, 8, 8, generator=g)
    model = Sampler(y)
    paths = sample_grids(model, {"x": x, "y": y}, task, [0.0, 0.5], tmp_path, n=2)
    assert [p.name for p in paths] == ["samples_T0.00.png", "samples_T0.50.png"] and model.temperatures == [0.0, 0.5]
    grid = np.asarray(Image.open(paths[1]))[::4, ::4]  # drawn 4x with nearest neighbours
    assert grid.shape == (3 * 8, 2 * 8, 3)
    for i in range(2):
        cols = slice(8 * i, 8 * (i + 1))
        want_y = (task.display(y[i]) * 255).round().astype(np.uint8)
        want_s = (task.display(0.5 * y[i]) * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(grid[8:16, cols], want_y)
        np.testing.assert_array_equal(grid[16:24, cols], want_s)
        if task_name != "sr":  # x on y's grid: drawn as it is
            np.testing.assert_array_equal(grid[0:8, cols], (display_input(x[i]) * 255).round().astype(np.uint8))
