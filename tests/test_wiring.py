"""The wiring every training command shares (ssl_vit/train/wiring.py): the same recipe length gives the same
number of steps whether pretraining or fine-tuning reads it."""
from __future__ import annotations

import pytest

from ssl_vit.config import TrainConfig
from ssl_vit.data import steps_per_epoch
from ssl_vit.errors import ConfigError
from ssl_vit.train.wiring import total_steps


def test_epochs_are_whole_epochs_of_the_stream():
    # 10 images at a global batch of 4: an epoch is ceil(10 / 4) = 3 steps (the last takes a full batch).
    assert steps_per_epoch(10, 4) == 3
    # 2 epochs = 2 × 3 = 6 steps. Fine-tuning used to compute ceil(2 × 10 / 4) = 5 for the same recipe.
    assert total_steps(TrainConfig(global_batch=4, epochs=2), 10, "data") == 6
    assert total_steps(TrainConfig(global_batch=4, epochs=0.5), 10, "data") == 2  # ceil(0.5 × 3)
    assert total_steps(TrainConfig(global_batch=4, epochs=1), 8, "data") == 2  # divisible: no rounding at all
    assert total_steps(TrainConfig(global_batch=4, total_steps=7), None, "data") == 7  # total_steps wins as given


def test_epochs_without_a_sample_count_name_the_data_and_the_fix():
    url_list = r"train.epochs needs the sample count of /d/train-\{0..9\}.tar.*train.total_steps"
    with pytest.raises(ConfigError, match=url_list):
        total_steps(TrainConfig(global_batch=4, epochs=1), None, "/d/train-{0..9}.tar")
