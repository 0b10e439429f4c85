"""The data layer: read datasets, build vocabularies, encode, split and batch.

Reading (``read_source``) gives ``RawData``; ``split_examples`` / ``kfold`` cut
it; ``encode_data`` (or ``build_vocabs`` + ``encode_split``) turns each split
into numbers; ``iterate_batches`` / ``stream_batches`` feed a model. Every
problem in a data file is a ``DataError`` naming its file and line.
"""
from .batching import IGNORE_LABEL, Batch, collate, iterate_batches, stream_batches
from .encode import Encoded, build_vocabs, encode_data, encode_split
from .errors import DataError
from .fields import TEXT_KINDS, FieldKind, FieldSpec
from .normalize import NaiveBayesScaler, Standardizer, input_statistics_from_json
from .raw import SPLITS, RawData
from .sources import SOURCES, read_source, source_files
from .split import kfold, split_examples
from .vocab import PAD, PAD_ID, UNK, UNK_ID, Vocab, tokenize

__all__ = [
    "Batch", "DataError", "Encoded", "FieldKind", "FieldSpec", "IGNORE_LABEL", "NaiveBayesScaler", "PAD", "PAD_ID",
    "RawData", "SOURCES", "SPLITS", "Standardizer", "TEXT_KINDS", "UNK", "UNK_ID", "Vocab", "build_vocabs",
    "collate", "encode_data", "source_files", "encode_split", "input_statistics_from_json", "iterate_batches", "kfold", "read_source",
    "split_examples", "stream_batches", "tokenize",
]
