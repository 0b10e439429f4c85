"""The lemmatizer's reference point: a form-and-tag dictionary from the training file (bench/lemma_baseline.py)."""
from bench.lemma_baseline import LemmaDictionary, evaluate

TRAIN = [("Dogs", "NOUN", "dog"), ("dogs", "NOUN", "dog"), ("saw", "VERB", "see"), ("saw", "NOUN", "saw"),
         ("saw", "VERB", "see"), ("Running", "VERB", "run")]


def test_the_form_and_its_tag_choose_the_most_frequent_lemma():
    lemmas = LemmaDictionary(TRAIN)
    assert lemmas.lemma("saw", "VERB") == "see"
    assert lemmas.lemma("saw", "NOUN") == "saw"


def test_fallbacks_lower_case_form_then_form_under_any_tag():
    lemmas = LemmaDictionary(TRAIN)
    assert lemmas.lemma("DOGS", "NOUN") == "dog"      # lower-cased form with the same tag
    assert lemmas.lemma("Running", "NOUN") == "run"   # the form under another tag


def test_unseen_words_keep_proper_nouns_and_lower_case_the_rest():
    lemmas = LemmaDictionary(TRAIN)
    assert lemmas.lemma("Falluja", "PROPN") == "Falluja"
    assert lemmas.lemma("Morphed", "VERB") == "morphed"
    assert not lemmas.seen("Morphed") and lemmas.seen("saw")


def test_on_ewt_test_it_is_the_documented_figure():
    result = evaluate("test")
    assert result["words"] == 25_094
    assert round(100 * result["accuracy"], 2) == 97.10
    assert result["unseen_words"] == 2_292
