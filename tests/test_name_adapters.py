"""Tags teach the offline region scorer which ImageNet classes a name means (detector.name_adapters)."""

import torch

from detector.checkpoint import load_checkpoint, save_checkpoint
from detector.name_adapters import NameAdapters
from train.tag_features import CachedTagImage, adapter_loss


def _unit(n, d=8, seed=0):
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_adapters_apply_to_their_names_in_any_vocabulary_and_to_no_other():
    names = _unit(3)
    adapters = NameAdapters(8, classes=5)
    assert adapters.offsets(names) is None, "empty: changes nothing"
    rows = adapters.extend(names[:2])
    assert rows == [0, 1] and adapters.extend(names[1:]) == [1, 2], "known names keep their row"
    with torch.no_grad():
        adapters.deltas[1] = torch.arange(5.0)
    vocabulary = torch.stack([names[1], _unit(1, seed=9)[0]])  # the tagged name in another vocabulary
    offsets = adapters.offsets(vocabulary)
    assert torch.equal(offsets[0], torch.arange(5.0)) and torch.equal(offsets[1], torch.zeros(5))


def test_adapters_survive_a_checkpoint_and_old_checkpoints_load_without_them(tmp_path, tiny_model):
    emb = _unit(2, d=tiny_model.config.embed_dim)
    tiny_model.name_adapters.extend(emb)
    with torch.no_grad():
        tiny_model.name_adapters.deltas += 1.5
    save_checkpoint(tiny_model, tmp_path / "with")
    loaded = load_checkpoint(tmp_path / "with")
    assert torch.equal(loaded.name_adapters.deltas, tiny_model.name_adapters.deltas)
    assert loaded.name_adapters.rows(emb) == [0, 1]
    from safetensors.torch import load_file, save_file

    state = {k: v for k, v in load_file(str(tmp_path / "with" / "model.safetensors")).items()
             if not k.startswith("name_adapters.")}
    (tmp_path / "old").mkdir()
    save_file(state, str(tmp_path / "old" / "model.safetensors"), metadata={"format": "pt", "config": tiny_model.config.to_json()})
    old = load_checkpoint(tmp_path / "old")
    assert len(old.name_adapters) == 0 and old.name_adapters.offsets(emb) is None


def test_the_mapping_learns_from_tags_which_classes_a_name_means():
    """Two names, five 'ImageNet classes': images of name 0 put their mass on class 3, which the
    text match does not connect to it; training on tags moves class 3 into name 0's mapping and
    keeps it out of name 1's."""
    model = torch.nn.Module()
    model.name_adapters = NameAdapters(4, classes=5)
    rows = model.name_adapters.extend(_unit(2, d=4))
    base = torch.full((2, 5), -4.0)
    base[1, 1] = 4.0  # name 1 already means class 1
    regions_0 = torch.tensor([[0.05, 0.05, 0.05, 0.8, 0.05]] * 3)  # candidates (image box last) look like class 3
    regions_1 = torch.tensor([[0.05, 0.8, 0.05, 0.05, 0.05]] * 3)
    batch = [CachedTagImage(torch.zeros(3, 4), torch.zeros(3, 1, 1, 1), [0], [], (10, 10), regions=regions_0, others=[1]),
             CachedTagImage(torch.zeros(3, 4), torch.zeros(3, 1, 1, 1), [1], [0], (10, 10), regions=regions_1)]
    opt = torch.optim.Adam([model.name_adapters.deltas], lr=0.1)
    first = adapter_loss(model, batch, base, rows).item()
    for _ in range(100):
        loss = adapter_loss(model, batch, base, rows)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 4
    match = torch.sigmoid(base + model.name_adapters.deltas)
    assert match[0, 3] > 0.8 and match[1, 3] < 0.1 and match[1, 1] > 0.9
