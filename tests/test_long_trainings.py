"""The figures in the README, as tests. Each trains a spec on its whole corpus (minutes to half an
hour here), so they are marked slow: `pytest --runslow tests/test_long_trainings.py`."""
from pathlib import Path

import pytest

from nnspec import open_session
from nnspec.train.loop import Trainer

SPECS = Path(__file__).resolve().parent.parent / "specs"


def train(spec: str):
    s = open_session(SPECS / spec)
    return Trainer(s.model, s.data, s.settings, quiet=True).fit()


@pytest.mark.slow
def test_feature_tagger_passes_95_percent_on_ewt_test():
    assert train("pos_bilstm_features.nn").test["accuracy"] >= 0.95


@pytest.mark.slow
def test_character_lstm_reaches_1_60_nats_per_character():
    assert train("char_lstm.nn").best["dev_loss"] <= 1.60


@pytest.mark.slow
def test_bag_of_words_sentiment_passes_75_percent():
    assert train("sentiment_bow.nn").test["accuracy"] >= 0.75


@pytest.mark.slow
def test_the_recurrent_language_model_beats_the_feed_forward_one():
    assert train("rnn_lm.nn").test["perplexity"] < train("ffn_lm.nn").test["perplexity"]


@pytest.mark.slow
def test_sentiment_bilstm_passes_77_5_percent_in_10_fold_cross_validation():
    accuracies = []
    for fold in range(10):
        s = open_session(SPECS / "sentiment_bilstm.nn", fold=(10, fold))
        accuracies.append(Trainer(s.model, s.data, s.settings, quiet=True).fit().test["accuracy"])
    assert sum(accuracies) / 10 >= 0.775
