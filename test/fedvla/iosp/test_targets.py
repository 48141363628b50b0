"""IOSP step 1: target objects from an instruction — the rule-based chunker, the matching rules
with the real MiniLM model (offline), the caches, the config checks, and the NER backend wired
to a tiny random BERT token classifier saved to a temporary directory."""
import socket

import pytest

from fedvla.config import ConfigError
from fedvla.iosp.phrases import noun_phrases
from fedvla.iosp.targets import MatchRule, TargetConfig, TargetExtractor, shared_instruction_encoder

SCENE = ["door lock", "door", "drawer", "puck", "hole", "window", "table", "robot arm", "gripper", "cup", "bowl"]


def _refuse_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def extractor():
    with pytest.MonkeyPatch.context() as monkeypatch:
        _refuse_network(monkeypatch)
        yield TargetExtractor(TargetConfig())


@pytest.fixture
def fresh(extractor):
    """Empty caches (warnings are logged when a result is computed, not when it comes from the
    cache), the shared MiniLM model."""
    return TargetExtractor(TargetConfig(), encoder=extractor.encoder)


def names(matches) -> list[str]:
    return [m.name for m in matches]


@pytest.mark.parametrize(("instruction", "phrases"), [
    ("put the red cup in the drawer", ["red cup", "drawer"]),
    ("Lock the door.", ["door"]),
    ("sweep the puck into the hole", ["puck", "hole"]),
    ("open the window", ["window"]),
    ("close the drawer", ["drawer"]),
    ("pick up the blue block and place it on the plate", ["blue block", "plate"]),
    ("lock the door by turning the lock clockwise", ["door", "lock"]),  # "-ing" verb; "lock" after "the" is a noun
    ("push the drawer closed", ["drawer"]),  # trailing state dropped
    ("please carefully put two cups close to the robot's bowl", ["cups", "robot bowl"]),
    ("", []),
])
def test_chunker_phrases(instruction, phrases) -> None:
    assert [p.text for p in noun_phrases(instruction)] == phrases


def test_chunker_marks_only_direct_objects_with_their_verb() -> None:
    assert [(p.text, p.verb) for p in noun_phrases("lock the door")] == [("door", "lock")]
    assert [(p.text, p.verb) for p in noun_phrases("pick up the block and place it on the plate")] == \
        [("block", "pick"), ("plate", "")]  # "it" is place's object, "plate" the preposition's
    assert [(p.text, p.verb) for p in noun_phrases("sweep the puck into the hole")] == [("puck", "sweep"), ("hole", "")]


def test_the_issue_instructions(extractor) -> None:
    cup, drawer = extractor.targets("put the red cup in the drawer", SCENE)
    assert (cup.name, cup.phrase, cup.rule) == ("cup", "red cup", MatchRule.HEAD)
    assert (drawer.name, drawer.rule) == ("drawer", MatchRule.EXACT) and drawer.score == pytest.approx(1.0, abs=1e-4)
    assert 0.6 < cup.score < 1.0

    assert names(extractor.targets("sweep the puck into the hole", SCENE)) == ["puck", "hole"]

    door, door_lock = extractor.targets("lock the door", SCENE)
    assert (door.name, door.rule) == ("door", MatchRule.EXACT)
    assert (door_lock.name, door_lock.phrase, door_lock.rule) == ("door lock", "door lock", MatchRule.VERB_COMPOUND)


@pytest.mark.parametrize(("task", "instruction", "expected"), [
    ("door-lock-v3", "Lock the door by turning the lock clockwise.", ["door", "door lock"]),
    ("drawer-close-v3", "Push the drawer closed.", ["drawer"]),
    ("sweep-into-v3", "Sweep the puck across the table into the hole!", ["puck", "table", "hole"]),
    ("window-open-v3", "Slide the window open.", ["window"]),
])
def test_meta_world_task_instructions(extractor, task, instruction, expected) -> None:
    assert names(extractor.targets(instruction, SCENE)) == expected, task


def test_unlock_names_the_same_part_as_lock(extractor) -> None:
    matches = extractor.targets("unlock the door", ["door lock", "door", "window"])
    assert [(m.name, m.rule) for m in matches] == [("door", MatchRule.EXACT), ("door lock", MatchRule.VERB_COMPOUND)]


def test_a_verb_compound_needs_the_compound_in_the_vocabulary(extractor) -> None:
    assert names(extractor.targets("lock the door", ["door", "window", "table"])) == ["door"]


def test_head_rule_takes_the_more_specific_or_general_name(extractor) -> None:
    (lock,) = extractor.targets("turn the lock", ["door", "door lock", "window"])
    assert (lock.name, lock.rule) == ("door lock", MatchRule.HEAD)
    (cup,) = extractor.targets("grab the blue cup", ["red cup", "cup", "bowl"])
    assert (cup.name, cup.rule) == ("cup", MatchRule.HEAD)  # "red cup" contradicts "blue"
    (cups,) = extractor.targets("stack the cups", ["cup", "bowl"])
    assert (cups.name, cups.rule) == ("cup", MatchRule.EXACT)  # plural


def test_synonym_through_minilm_similarity(extractor) -> None:
    mug, plate = extractor.targets("put the mug on the plate", ["cup", "plate", "bowl", "table", "gripper"])
    assert (mug.name, mug.phrase, mug.rule) == ("cup", "mug", MatchRule.SIMILARITY)
    assert mug.score >= extractor.config.similarity_threshold
    assert (plate.name, plate.rule) == ("plate", MatchRule.EXACT)


def test_threshold_rejects_a_merely_related_object(extractor) -> None:
    # door vs window scores ~0.53: related, but not the object the instruction names
    assert extractor.targets("open the door", ["window", "table", "cup"]) == []
    loose = TargetExtractor(TargetConfig(similarity_threshold=0.5))
    assert names(loose.targets("open the door", ["window", "table", "cup"])) == ["window"]
    assert loose.encoder is extractor.encoder is shared_instruction_encoder()  # one MiniLM per process


def test_nothing_visible_named_gives_no_target_and_a_warning(fresh, core_warnings) -> None:
    assert fresh.targets("fly to the moon", SCENE) == []
    assert len(core_warnings) == 1 and "names none of the visible objects" in core_warnings[0]


@pytest.mark.parametrize("instruction", ["", "   ", "?!", "open it"])
def test_empty_instruction_or_no_phrase_gives_no_target(fresh, core_warnings, instruction) -> None:
    assert fresh.targets(instruction, SCENE) == []
    assert len(core_warnings) == 1


def test_empty_vocabulary_gives_no_target(fresh, core_warnings) -> None:
    assert fresh.targets("put the cup in the drawer", []) == []
    assert fresh.targets("put the cup in the drawer", ["", "  "]) == []
    assert len(core_warnings) == 2 and all("no visible objects" in m for m in core_warnings)


def test_vocabulary_names_are_returned_as_given(extractor) -> None:
    assert names(extractor.targets("lock the door", ["Door_Lock", "door"])) == ["door", "Door_Lock"]


def test_max_targets_keeps_the_first_mentioned() -> None:
    first_only = TargetExtractor(TargetConfig(max_targets=1))
    assert names(first_only.targets("put the red cup in the drawer", SCENE)) == ["cup"]


def test_results_and_embeddings_are_cached(fresh, monkeypatch, core_warnings) -> None:
    encoded: list[str] = []
    real_encode = fresh.encoder.model.encode

    def recording_encode(texts, **kwargs):
        encoded.extend(texts)
        return real_encode(texts, **kwargs)

    monkeypatch.setattr(fresh.encoder.model, "encode", recording_encode)
    first = fresh.targets("move the bowl next to the gripper", SCENE)
    assert names(first) == ["bowl", "gripper"]
    assert sorted(encoded) == sorted(SCENE)  # phrases and names, each text once

    encoded.clear()
    assert fresh.targets("move the bowl next to the gripper", SCENE) == first
    assert fresh.targets("fly to the moon", SCENE) == []
    assert fresh.targets("fly to the moon", SCENE) == []
    assert encoded == ["fly", "moon"]
    assert len(core_warnings) == 1  # a repeated call is a cache hit: warned once, not every control step

    encoded.clear()
    assert names(fresh.targets("push the puck toward the hole", SCENE)) == ["puck", "hole"]
    assert encoded == []  # every phrase and name was seen before
    fresh.targets("grab the mug", SCENE)
    assert encoded == ["mug"]  # only the new phrase


@pytest.mark.parametrize(("values", "field"), [
    ({"similarity_threshold": 0.0}, "similarity_threshold"),
    ({"similarity_threshold": 1.5}, "similarity_threshold"),
    ({"max_targets": 0}, "max_targets"),
    ({"max_targets": 2.5}, "max_targets"),
    ({"ner_model_path": "/nonexistent/ner-model"}, "ner_model_path"),
])
def test_config_errors_name_the_field(values, field) -> None:
    with pytest.raises(ConfigError) as err:
        TargetConfig(**values)
    assert err.value.field == field and str(err.value).startswith(field)


# ---- the NER backend, wired to a tiny random BERT token classifier ----------------------------

NER_WORDS = "put the red cup in drawer lock door sweep puck into hole".split()
NER_LABELS = {0: "O", 1: "B-OBJ", 2: "I-OBJ"}


def _save_tiny_ner_model(directory, forced_label: int) -> str:
    """A random 1-layer BERT whose classifier always outputs ``forced_label`` (zero weights, one
    large bias), with a WordPiece tokenizer on a vocabulary written here: deterministic entities."""
    import torch
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast

    directory.mkdir()
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *NER_WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, id2label=NER_LABELS,
                        label2id={v: k for k, v in NER_LABELS.items()})
    torch.manual_seed(0)
    model = BertForTokenClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.bias[forced_label] = 10.0
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture
def no_network(monkeypatch):
    _refuse_network(monkeypatch)


def test_ner_backend_loads_offline_and_matches_its_entities(tmp_path, no_network, extractor) -> None:
    path = _save_tiny_ner_model(tmp_path / "ner_every_word", forced_label=1)  # every word its own entity
    ner = TargetExtractor(TargetConfig(ner_model_path=path), encoder=extractor.encoder)
    assert ner.backend == "ner"
    # entities: put, the, red, cup, in, the, drawer; "the"/"in" are stop words, "put"/"red" match nothing
    assert [p.text for p in ner.phrases("put the red cup in the drawer")] == ["put", "red", "cup", "drawer"]
    matches = ner.targets("put the red cup in the drawer", SCENE)
    assert [(m.name, m.rule) for m in matches] == [("cup", MatchRule.EXACT), ("drawer", MatchRule.EXACT)]
    # "spatula" is [UNK] to the tiny tokenizer; the entity text comes from the instruction's offsets
    assert ner.targets("grab the spatula", SCENE) == []


def test_ner_backend_with_no_entity_gives_no_target(tmp_path, no_network, extractor, core_warnings) -> None:
    path = _save_tiny_ner_model(tmp_path / "ner_nothing", forced_label=0)  # every token "O"
    ner = TargetExtractor(TargetConfig(ner_model_path=path), encoder=extractor.encoder)
    assert ner.targets("put the red cup in the drawer", SCENE) == []
    assert len(core_warnings) == 1 and "no object phrase" in core_warnings[0] and "(ner)" in core_warnings[0]


def test_ner_directory_without_a_model_is_a_config_error(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError) as err:
        TargetExtractor(TargetConfig(ner_model_path=str(tmp_path)))
    assert err.value.field == "ner_model_path"
