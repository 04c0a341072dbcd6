import torch
import torch.nn.functional as F

from detector.classifier import ZeroShotClassifier
from detector.embedding_cache import EmbeddingCache, VocabularyEmbedder
from detector.text_encoders import build_text_encoder


def test_minilm_gives_real_semantic_embeddings():
    enc = build_text_encoder("minilm")
    e = enc.encode(["a cat", "a kitten", "a truck"])
    assert e.shape == (3, 384)
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_tiny_clip_is_the_open_clip_path_and_deterministic():
    from open_clip.model import CLIP

    a = build_text_encoder("tiny_clip", {"dim": 32})
    assert isinstance(a.model, CLIP)
    fresh = type(a)(dim=32)  # a second, independently built tower gives identical vectors
    x, y = a.encode(["a red circle", "a blue star"]), fresh.encode(["a red circle", "a blue star"])
    assert x.shape == (2, 32) and torch.allclose(x, y)
    assert not torch.allclose(x[0], x[1])


class CountingEncoder:
    def __init__(self, inner):
        self.inner, self.key, self.dim, self.calls = inner, inner.key, inner.dim, 0

    def encode(self, texts):
        self.calls += len(texts)
        return self.inner.encode(texts)


def test_thousand_names_embed_once_then_come_from_cache(tmp_path):
    enc = CountingEncoder(build_text_encoder("tiny_clip", {"dim": 64}))
    names = [f"object number {i}" for i in range(1000)]
    embedder = VocabularyEmbedder(enc, "a {}", EmbeddingCache(tmp_path / "cache.sqlite"))
    got_names, first = embedder(names)
    assert got_names == names and first.shape == (1000, 64) and enc.calls == 1000
    _, second = embedder(list(reversed(names)))
    assert enc.calls == 1000  # nothing re-encoded
    assert torch.equal(second, first.flip(0))
    # A new process (new cache object, same file) also reads them from disk.
    fresh = VocabularyEmbedder(enc, "a {}", EmbeddingCache(tmp_path / "cache.sqlite"))
    _, third = fresh(names[:10] + ["a brand new name"])
    assert enc.calls == 1001 and torch.equal(third[:10], first[:10])


def test_prompt_is_part_of_the_cache_key(tmp_path):
    enc = CountingEncoder(build_text_encoder("tiny_clip", {"dim": 64}))
    cache = EmbeddingCache(tmp_path / "c.sqlite")
    _, a = VocabularyEmbedder(enc, "a {}", cache)(["dog"])
    _, b = VocabularyEmbedder(enc, "a photo of a {}", cache)(["dog"])
    assert enc.calls == 2 and not torch.allclose(a, b)


def test_zero_shot_classifier_matches_detic_formula(unit_embeddings):
    clf = ZeroShotClassifier(in_features=16, embed_dim=64, temperature=50.0, prior_prob=0.01)
    x = torch.randn(5, 16)
    emb = unit_embeddings(3) * 3.0  # un-normalised input is normalised by the classifier
    logits = clf(x, emb)
    z = F.normalize(clf.linear(x), dim=-1)
    w = F.normalize(emb, dim=-1)
    expected = 50.0 * torch.cat([z @ w.t(), torch.zeros(5, 1)], dim=1) + clf.bias
    assert logits.shape == (5, 4)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(clf.bias, torch.tensor(-4.59512), atol=1e-4)  # -log(0.99/0.01)


def test_vocabulary_swap_changes_classes_not_weights(tiny_predictor, small_image):
    model = tiny_predictor.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = tiny_predictor.predict(small_image, "cat, dog", score_threshold=0.0)[0]
    b = tiny_predictor.predict(small_image, "car, tree, bus, person", score_threshold=0.0)[0]
    assert set(a.data["class_name"]) <= {"cat", "dog"}
    assert set(b.data["class_name"]) <= {"car", "tree", "bus", "person"} and len(b)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_hashed_control_encoder_has_no_structure_and_is_stable():
    enc = build_text_encoder("hashed", {"dim": 64})
    a = enc.encode(["a red star", "a red circle", "a red star"])
    assert torch.allclose(a[0], a[2]) and torch.allclose(a.norm(dim=-1), torch.ones(3))
    assert abs(float(a[0] @ a[1])) < 0.5  # shared words do not make vectors similar
