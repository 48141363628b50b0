"""Instruction phrases for IOSP's target extraction (:mod:`fedvla.iosp.targets`): the noun
phrases an instruction names, by a rule-based chunker or a local NER model.

Two backends, chosen by :attr:`fedvla.iosp.targets.TargetConfig.ner_model_path`:

* empty (default, offline) — a rule-based chunker, :func:`noun_phrases`. The instruction is
  lower-cased; "'s" and apostrophes are removed; hyphens, underscores and slashes become spaces;
  ``, ; : . ! ? ( )`` end a clause; other characters are dropped. Each word is then one of:

  - a **clause break** (:data:`CLAUSE_BREAKS`: conjunctions, "to", "please", modal and auxiliary
    verbs, "i/you/we", request words such as "want" or "try") — ends the current phrase; the
    next word may be a verb;
  - a **verb** (:data:`VERBS`, ~110 manipulation verbs in their base form) when it begins a
    clause (the first word or the first after a clause break, transparent words aside:
    "carefully open ..."), or any ``-ing`` form of one ("by turning the lock"). A verb word
    elsewhere is a noun: "lock" in "the door lock";
  - **transparent** (:data:`TRANSPARENT`: adverbs such as "first", "carefully", "clockwise",
    "left") — ends the phrase, leaves "a verb may come next" as it was;
  - a **stop word** (:data:`DETERMINERS` with number words, digits, :data:`PRONOUNS`,
    :data:`PREPOSITIONS`, which include the verb :data:`PARTICLES`) — ends the phrase;
  - otherwise a **content word**, appended to the current phrase.

  A phrase's trailing :data:`STATE_WORDS` are dropped: in English a state after the noun is a
  complement of the verb ("push the drawer closed", "slide the window open"). Examples:
  "put the red cup in the drawer" → "red cup", "drawer"; "pick up the blue block and place it on
  the plate" → "blue block", "plate"; "lock the door" → "door" (object of the verb "lock").
  Not understood: negation ("don't touch the cup" names the cup) and verbs used as nouns at the
  start of a clause ("lock and door" reads "lock" as a verb).
* a path — a transformers token-classification (NER) model loaded from that local directory
  only (``local_files_only``, ``HF_HUB_OFFLINE``). Every entity the model reports (any label)
  is one span; each span goes through the chunker's word rules without verb detection (an
  entity is a noun span already), giving the phrases. A model that reports no entity gives no
  target: the chunker is not used as a silent fallback.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from fedvla.config import ConfigError

# ---- word lists of the chunker ---------------------------------------------------------------

VERBS = frozenset("""
    put place set lay pick lift raise lower grab grasp grip hold take get fetch bring carry move
    push pull press slide sweep drag shove roll nudge open close shut lock unlock turn rotate twist
    spin flip tilt insert drop release stack unstack pour fill empty wipe clean scrub collect gather
    throw toss hang fold unfold plug unplug screw unscrew tighten loosen reach touch tap hit knock
    poke point go give hand pass load unload store tidy sort arrange align position stir cut wash
    avoid find locate hook pinch squeeze switch flick dump discard remove retrieve return
    transfer deliver lead follow approach cover uncover wrap unwrap shake draw
""".split())

CLAUSE_BREAKS = frozenset("""
    , ; : . ! ? and or then but so while until after before when once if because to please
    i you we can could would will shall should must may might do does did dont not never
    is are was were be been being am let lets want wants need needs try like make sure
""".split())

TRANSPARENT = frozenset("""
    now first next finally also again just carefully gently slowly quickly firmly tightly fully
    completely halfway way clockwise counterclockwise anticlockwise forward forwards backward
    backwards sideways left right upward upwards downward downwards here there slightly still
    only even really straight
""".split())

DETERMINERS = frozenset("""
    the a an this that these those its his her their my your our some any each every all both
    another other either neither no one ones two three four five six seven eight nine ten
    second third last
""".split())

PRONOUNS = frozenset("it them they itself themselves him me us something everything anything".split())

PARTICLES = frozenset("up down off out over on away back apart".split())  # "pick up the cup"

PREPOSITIONS = PARTICLES | frozenset("""
    in into inside onto upon from at of under underneath beneath above below behind beside
    besides near by with without within through across along around about toward towards
    against between among via for top bottom front side middle center centre edge end
""".split())

STOP_WORDS = DETERMINERS | PRONOUNS | PREPOSITIONS

# States (and "close" as in "put the cup close to the bowl") after a noun complement the verb.
STATE_WORDS = frozenset("open opened closed shut locked unlocked upright full empty close closer nearby".split())

CLAUSE_PUNCTUATION = ",;:.!?()"


@dataclasses.dataclass(frozen=True)
class Phrase:
    words: tuple[str, ...]
    verb: str = ""  # the clause verb when this phrase is its direct object

    @property
    def text(self) -> str:
        return " ".join(self.words)


# ---- the chunker -----------------------------------------------------------------------------

def tokenize(text: str) -> list[str]:
    text = text.lower().replace("’", "'")
    text = re.sub(r"'s\b", "", text).replace("'", "")
    text = re.sub(r"[-_/]", " ", text)
    return re.findall(rf"[a-z0-9]+|[{re.escape(CLAUSE_PUNCTUATION)}]", text)


def verb_base(word: str) -> str:
    """The verb in :data:`VERBS` that ``word`` is (base or ``-ing`` form), or ''."""
    if word in VERBS:
        return word
    if word.endswith("ing") and len(word) > 4:
        stem = word[:-3]
        for base in (stem, stem + "e", stem[:-1]):  # turning, closing, putting
            if base in VERBS:
                return base
    return ""


def singular(word: str) -> str:
    """Naive singular, good enough to compare object names: cups, boxes, dishes, cherries."""
    if len(word) <= 3 or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def noun_phrases(text: str, *, find_verbs: bool = True) -> list[Phrase]:
    """The chunker's phrases of ``text`` (module docstring); ``find_verbs`` False treats verb words
    as content words (for NER entity spans)."""
    phrases: list[Phrase] = []
    current: list[str] = []
    verb = ""  # the verb of the current clause, until its direct object has been flushed
    verb_may_follow = True

    def flush() -> None:
        nonlocal verb
        while current and current[-1] in STATE_WORDS:
            current.pop()
        if current:
            phrases.append(Phrase(tuple(current), verb))
            verb = ""
            current.clear()

    for word in tokenize(text):
        if word in CLAUSE_BREAKS or word in CLAUSE_PUNCTUATION:
            flush()
            verb, verb_may_follow = "", True
        elif find_verbs and (base := verb_base(word)) and (verb_may_follow or word.endswith("ing")):
            flush()
            verb, verb_may_follow = base, False
        elif word in TRANSPARENT:
            flush()
        elif word in STOP_WORDS or word.isdigit():
            flush()
            verb_may_follow = False
            if word in PRONOUNS or (word in PREPOSITIONS and word not in PARTICLES):
                verb = ""  # the pronoun was the verb's object; after a preposition comes its own object
        else:
            current.append(word)
            verb_may_follow = False
    flush()
    return phrases


class NerPhrases:
    """Entity spans of a local token-classification model, as phrases."""

    def __init__(self, model_path: str) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
        from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

        path = str(Path(model_path).expanduser())
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForTokenClassification.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError("ner_model_path", f"cannot load a token-classification model from {path}: {err}",
                              "a directory written by save_pretrained with its tokenizer") from err
        self.pipeline = pipeline("token-classification", model=model, tokenizer=tokenizer,
                                 aggregation_strategy="simple", device="cpu")

    def __call__(self, instruction: str) -> list[Phrase]:
        entities: list[dict[str, Any]] = self.pipeline(instruction)
        phrases: list[Phrase] = []
        for entity in entities:
            phrases.extend(noun_phrases(str(entity.get("word", "")), find_verbs=False))
        return phrases
