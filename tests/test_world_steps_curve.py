"""bench.world.steps_curve: one long training stands for every shorter one."""

import argparse

import pytest
import torch
from tiny_anima import make_tiny_setup

from anima_context import trainer
from anima_context.trainer import TrainSettings, train_tokens
from bench.world.steps_curve import recording_training_tokens, step_counts


def test_a_longer_runs_first_steps_are_the_shorter_run():
    _, denoiser, latents = make_tiny_setup()
    settings = TrainSettings(steps=6, learning_rate=0.1, num_tokens=3, init_std=0.5, seed=5, eval_every=4)
    copies = {}

    def on_step(step, _loss):
        if step + 1 in (2, 4):
            copies[step + 1] = noted["tokens"].detach().float().cpu().clone()

    original = trainer.ContextTokenPatch
    with recording_training_tokens(trainer) as noted:
        long = train_tokens(denoiser, latents, settings, on_step=on_step)
    assert trainer.ContextTokenPatch is original
    for count in (2, 4):
        short = train_tokens(denoiser, latents, TrainSettings(**{**settings.__dict__, "steps": count, "eval_every": 1}))
        assert torch.equal(copies[count], short.tokens), count
    assert not torch.equal(copies[4], long.tokens)  # the copies are of the training, not of its end
    assert not torch.equal(copies[2], copies[4])


def test_step_counts_are_sorted_and_positive():
    assert step_counts("200,50,100,50") == [50, 100, 200]
    for bad in ("", "0,50", "-3"):
        with pytest.raises(argparse.ArgumentTypeError):
            step_counts(bad)
