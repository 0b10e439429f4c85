"""What a reader returns: examples per split and field, before any encoding."""
from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "dev", "test")


@dataclass
class RawData:
    """Raw examples as the files hold them.

    ``splits`` maps a split name ("train", "dev", "test", or "all" when the
    source has no split) to field name -> list of examples (numbers, lists of
    numbers, strings, lists of strings). ``origins`` maps the same split names to
    the (file, line) of each example, for error messages. A ``stream`` (language
    modelling) holds one example per split: the whole token stream.
    """

    splits: dict[str, dict[str, list]]
    origins: dict[str, list[tuple[str, int]]]
    stream: bool = False

    def size(self, split: str) -> int:
        return len(self.origins[split])
