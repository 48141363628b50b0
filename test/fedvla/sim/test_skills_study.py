"""The skill study (issue 25): LoRA adapters merge into the trunk exactly, and the smoke scale runs
every method end to end with its report, the base untouched."""
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[3]


def test_lora_adapters_merged_into_the_trunk_give_the_adapted_policy_s_chunks() -> None:
    from fedvla.data.synthetic import SquareReachDataset
    from fedvla.model.checkpoint import seeded_policy
    from fedvla.model.config import PolicyConfig
    from fedvla.sim.skills_study import adapter_state, add_lora, lora_targets, merged_policy

    config = PolicyConfig.from_yaml(REPO / "config" / "model" / "tiny.yaml", image_size=32, language_dim=8)
    data = SquareReachDataset(config, 8)
    adapted, base = seeded_policy(config, 0), seeded_policy(config, 0)
    for policy in (adapted, base):
        policy.normalizer.fit(data.actions, data.proprio)
    targets = lora_targets(adapted)
    assert targets and not any("router" in t or "attention" in t for t in targets)
    add_lora(adapted, targets, rank=2, alpha=4.0, seed=0)
    assert all(p.requires_grad == ("lora_" in n) for n, p in adapted.named_parameters())
    with torch.no_grad():
        for name, tensor in adapted.named_parameters():
            if "lora_B" in name:
                tensor.normal_(std=0.3)  # (peft starts B at zero: the adapter would add nothing)
    assert len(adapter_state(adapted)) == 2 * len(targets)
    batch = torch.utils.data.default_collate([data[i] for i in range(4)])
    adapted.eval()
    with torch.enable_grad():  # the experts one call each, through their adapters
        expected = adapted(batch).detach()
    merged = merged_policy(adapted, base)
    with torch.no_grad():  # grouped inference on the merged weights
        torch.testing.assert_close(merged(batch), expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(seeded_policy(config, 0)(batch), expected)


@pytest.mark.timeout(1200)  # Meta-World demonstrations, a base, five methods and their closed loops
def test_the_smoke_skill_study_runs_every_method_and_leaves_the_base_untouched(tmp_path) -> None:
    from fedvla.sim.skills_study import METHODS, SkillsStudy, load_skills_scale
    from fedvla.skills.library import state_dict_hash
    from fedvla.model.checkpoint import load_checkpoint

    scale = load_skills_scale(REPO / "config", "smoke")
    study = SkillsStudy(REPO / "config", scale, tmp_path, show_progress=False)
    study.ensure_data()
    study.ensure_base()
    before = state_dict_hash(load_checkpoint(study.base_checkpoint).state_dict())
    report = study.run(command="test")
    assert state_dict_hash(load_checkpoint(study.base_checkpoint).state_dict()) == before
    text = report.read_text()
    for method in METHODS:
        result = json.loads((tmp_path / "methods" / method / "result.json").read_text())
        assert set(result["evaluation"]) == set(scale.tasks)
        assert result["method"]["label"] in text
    skills = json.loads((tmp_path / "methods" / "skills_federated" / "result.json").read_text())["costs"]
    full = json.loads((tmp_path / "methods" / "full_ft_federated" / "result.json").read_text())["costs"]
    assert 0 < skills["upload_bytes_per_round"] < full["upload_bytes_per_round"]
    assert skills["trainable_parameters"] < full["trainable_parameters"]
    local = json.loads((tmp_path / "methods" / "skills_local" / "result.json").read_text())["evaluation"]
    assert local["drawer-close-v3"]["variants"] == 2  # one per robot's own skill set
    for name in ("success.png", "cost.png", "run.json"):
        assert (tmp_path / name).is_file()
    assert "## Claims" in text and "at this scale" in text
    # the encrypted aggregation measured at the study's skill size, and its claim judged
    aggregation = json.loads((tmp_path / "aggregation.json").read_text())
    assert [f["method"] for f in aggregation] == ["CKKS (TenSEAL)", "SecAgg masks"]
    assert aggregation[0]["parameters"] == skills["trainable_parameters"] and aggregation[0]["max_error"] < 1e-5
    assert "## Encrypted aggregation" in text and "HE aggregation is practical at this size" in text
