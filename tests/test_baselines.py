"""The most-frequent-tag baseline that tagger accuracies are read against."""
from nnspec import open_session
from nnspec.baselines import most_frequent_tag

SPEC = """
input  w : seq of token
target y : seq of class
output p
p = softmax(V @ embed(w, 4) + c)
loss cross_entropy(p, y)
data inline {
  w = [["the", "run", "run"], ["a", "run"], ["the", "zebra"]]
  y = [["DET", "NOUN", "VERB"], ["DET", "NOUN"], ["DET", "NOUN"]]
}
"""


def test_each_word_gets_its_most_frequent_training_tag_and_unseen_words_the_commonest(tmp_path):
    path = tmp_path / "t.nn"
    path.write_text(SPEC)
    data = open_session(path).data
    # on its own training data: 'run' is NOUN twice and VERB once, so one of seven tags is wrong
    data.splits["test"] = data.splits["train"]
    assert most_frequent_tag(data, "w", "y", "test") == 6 / 7
