"""The scoring run: forgetting events, the cached artifact, the backbones."""

from __future__ import annotations

import json
import platform
import shutil

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits
from torchvision.models.resnet import BasicBlock

import nasproxy.scoring as scoring
from nasproxy.data import load_dataset
from nasproxy.errors import CacheWarning, NasproxyError
from nasproxy.models_resnet import CifarResNet18
from nasproxy.provenance import cpu_model
from nasproxy.proxies.base import top_per_class
from nasproxy.proxies.forgetting import forgetting_scores
from nasproxy.scoring import ForgettingTracker, ScoringConfig, load_artifact, scoring_run
from nasproxy.train import normalize

TINY = ScoringConfig(
    backbone="w8-d3-relu-instancenorm-avgpooling", backbone_epochs=2, backbone_seed=0
)


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    with threadpool_limits(limits=1):
        yield


class _Recorder:
    """Wraps ``scoring.fit``: counts calls and keeps every (indices, correct) it observes."""

    def __init__(self, real):
        self.real, self.calls, self.seen = real, 0, []

    def __call__(self, model, data, indices, cfg, observer=None):
        self.calls += 1

        def spy(idx, correct):
            self.seen.append((idx.cpu().numpy().copy(), correct.cpu().numpy().copy()))
            observer(idx, correct)

        return self.real(model, data, indices, cfg, spy)


@pytest.fixture(scope="module")
def run(digits, tmp_path_factory):
    """One tiny scoring run on digits, with the observations fit() made during it."""
    cache = tmp_path_factory.mktemp("scoring")
    recorder = _Recorder(scoring.fit)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scoring, "fit", recorder)
        artifact = scoring_run(digits, TINY, cache, device="cpu")
    return artifact, recorder, cache


def _brute_force_events(n: int, observations) -> tuple[np.ndarray, np.ndarray]:
    """Forgetting events by walking each example's presentation history in Python."""
    history: list[list[bool]] = [[] for _ in range(n)]
    for idx, correct in observations:
        for i, c in zip(idx.tolist(), correct.tolist(), strict=True):
            history[i].append(bool(c))
    events = np.array(
        [sum(a and not b for a, b in zip(h[:-1], h[1:], strict=True)) for h in history]
    )
    learned = np.array([any(h) for h in history])
    return events, learned


def test_forgetting_counts_follow_hand_written_sequences():
    # Per epoch, whether each of 5 examples is classified correctly.
    outcomes = np.array(
        [
            [False, True, False, True, False],
            [False, True, True, False, True],
            [False, True, True, True, False],
            [False, True, False, False, True],
        ]
    )
    tracker = ForgettingTracker(5)
    rng = np.random.default_rng(0)
    for epoch in outcomes:
        order = rng.permutation(5)
        for batch in (order[:2], order[2:]):  # two batches in a shuffled order
            idx = torch.as_tensor(batch)
            tracker(idx, torch.as_tensor(epoch[batch]))
    # 0: never learned; 1: never forgotten; 2: F T T F -> 1; 3: T F T F -> 2; 4: F T F T -> 1
    assert tracker.events.tolist() == [0, 0, 1, 2, 1]
    assert tracker.ever_learned.tolist() == [False, True, True, True, True]
    scores = forgetting_scores(tracker.events.numpy(), tracker.ever_learned.numpy())
    labels = np.zeros(5, dtype=np.int64)
    assert top_per_class(scores, labels, 1, seed=0).tolist() == [0]  # never learned first
    assert top_per_class(scores, labels, 2, seed=0).tolist() == [0, 3]


def test_artifact_counts_match_a_recount_of_the_training_run(run, digits):
    artifact, recorder, _ = run
    n = len(digits.y_train)
    events, learned = _brute_force_events(n, recorder.seen)
    assert len(recorder.seen) > 0
    np.testing.assert_array_equal(artifact.forgetting_events, events)
    np.testing.assert_array_equal(artifact.ever_learned, learned)
    # every example is presented once per epoch (the trainer drops a trailing batch of one)
    counts = np.bincount(np.concatenate([i for i, _ in recorder.seen]), minlength=n)
    assert counts.max() == TINY.backbone_epochs and counts.min() >= TINY.backbone_epochs - 1


def test_artifact_is_reused_without_retraining(run, digits, monkeypatch):
    artifact, recorder, cache = run
    assert recorder.calls == 1
    mtimes = {p.name: p.stat().st_mtime_ns for p in artifact.path.iterdir()}

    def no_training(*args, **kwargs):
        raise AssertionError("the scoring run was trained again")

    monkeypatch.setattr(scoring, "fit", no_training)
    again = scoring_run(digits, TINY, cache, device="cpu")
    assert again.hash == artifact.hash and again.path == artifact.path
    np.testing.assert_array_equal(again.features, artifact.features)
    assert {p.name: p.stat().st_mtime_ns for p in artifact.path.iterdir()} == mtimes
    # another seed is another run
    with pytest.raises(AssertionError, match="trained again"):
        scoring_run(
            digits,
            ScoringConfig(TINY.backbone, TINY.backbone_epochs, backbone_seed=1),
            cache,
            "cpu",
        )


def test_artifact_contents(run, digits):
    artifact, _, _ = run
    n, c = len(digits.y_train), digits.num_classes
    assert artifact.features.shape == (n, 8 * 4 * 4) and artifact.features.dtype == np.float32
    assert artifact.probs.shape == (n, c)
    np.testing.assert_allclose(artifact.probs.sum(axis=1), 1.0, rtol=1e-5)
    assert artifact.head_weight.shape == (c, 128) and artifact.head_bias.shape == (c,)
    meta = json.loads((artifact.path / "meta.json").read_text())
    assert meta["key"]["fingerprint"] == digits.fingerprint
    assert meta["key"]["backbone"] == TINY.backbone and meta["hash"] == artifact.hash
    assert len(meta["history"]) == TINY.backbone_epochs


def test_checkpoint_reproduces_the_cached_features(run, digits, monkeypatch):
    artifact, _, _ = run
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = artifact.load_backbone(digits, "cpu")
    assert calls and all(kw.get("weights_only") is True for kw in calls)
    with torch.no_grad():
        x = normalize(digits.x_train[:64], digits)
        feats = model.embed(x)
        probs = torch.softmax(model(x), dim=1)
    np.testing.assert_allclose(feats.numpy(), artifact.features[:64], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probs.numpy(), artifact.probs[:64], rtol=1e-4, atol=1e-6)


def test_scoring_run_is_deterministic_for_a_seed(run, digits, tmp_path):
    artifact, _, _ = run
    other = scoring_run(digits, TINY, tmp_path, device="cpu")
    assert other.path != artifact.path
    np.testing.assert_array_equal(other.features, artifact.features)
    np.testing.assert_array_equal(other.forgetting_events, artifact.forgetting_events)


def test_corrupt_or_foreign_artifact_is_refused(run, digits, tmp_path):
    artifact, _, _ = run
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in artifact.path.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    other = load_dataset("digits", data_root=tmp_path, val_fraction=0.2)
    with pytest.raises(NasproxyError, match="fingerprint"):
        load_artifact(copy, other)
    with open(copy / "arrays.npz", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(NasproxyError, match="hash"):
        load_artifact(copy, digits)


def test_the_cache_key_keeps_its_names(digits):
    """The settings' keys (``backbone_epochs``, ...) are not the cache key's: a scoring run
    cached before they were settings is found again (the folder of this run as made then)."""
    cfg = ScoringConfig(
        backbone="w8-d3-relu-instancenorm-avgpooling", backbone_epochs=3, backbone_seed=2,
        backbone_lr=0.05,
    )  # fmt: skip
    want = "c7d056297a5aaae8-w8-d3-relu-instancenorm-avgpooling-e3-s2-b7767270f66a"
    assert scoring.artifact_dir("/c", digits, cfg).name == want


def test_bad_backbone_is_refused():
    with pytest.raises(NasproxyError):
        ScoringConfig(backbone="resnet50")
    with pytest.raises(NasproxyError):
        ScoringConfig(backbone_epochs=0)


def test_cifar_resnet18_shape():
    torch.manual_seed(0)
    model = CifarResNet18(3, 10).eval()
    first = model.features[0]
    assert isinstance(first, torch.nn.Conv2d) and first.kernel_size == (3, 3)
    assert first.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert sum(isinstance(m, BasicBlock) for m in model.modules()) == 8
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.embed(x)
        assert feats.shape == (2, 512)
        torch.testing.assert_close(model(x), model.classifier(feats))
    # about 11.2 M parameters, as for He et al.'s ResNet-18 on CIFAR
    assert 11.1e6 < sum(p.numel() for p in model.parameters()) < 11.3e6


@pytest.mark.parametrize(
    "name, damage",
    [
        ("arrays.npz", "truncated"),
        ("model.pt", "flipped"),
        ("meta.json", "garbage"),
        ("meta.json", "gone"),
    ],
)
def test_damaged_scoring_cache_is_retrained_with_a_warning(run, digits, tmp_path, name, damage):
    artifact, _, _ = run
    cache = tmp_path / "cache"
    path = scoring.artifact_dir(cache, digits, TINY)
    path.parent.mkdir(parents=True)
    shutil.copytree(artifact.path, path)
    target = path / name
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "flipped":
        blob = bytearray(target.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        target.write_bytes(bytes(blob))
    elif damage == "garbage":
        target.write_text("[1, 2")
    else:
        target.unlink()
    with pytest.warns(CacheWarning, match="training it again"):
        again = scoring_run(digits, TINY, cache, device="cpu")
    # retrained from the seed: the same network, features and forgetting counts
    assert again.path == path and again.hash == artifact.hash
    np.testing.assert_array_equal(again.features, artifact.features)
    np.testing.assert_array_equal(again.forgetting_events, artifact.forgetting_events)
    assert sorted(p.name for p in cache.joinpath("scoring").iterdir()) == [path.name]


def test_the_cached_scoring_run_gets_the_modes_the_umask_gives(digits, tmp_path):
    """Its folder is made private by mkdtemp and renamed into place: it must not stay so."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        artifact = scoring_run(digits, TINY, tmp_path, device="cpu")
    finally:
        os.umask(old)
    assert stat.S_IMODE(artifact.path.stat().st_mode) == 0o755
    files = [p for p in artifact.path.iterdir() if p.is_file()]
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}


@pytest.fixture
def torch_threads_restored():
    """Tests that set torch's thread count leave it as they found it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_scoring_bytes_do_not_depend_on_torchs_thread_count(
    run, digits, tmp_path, torch_threads_restored
):
    """Trained with torch at 1 and at 2 threads, the run is the same bytes (it is pinned to
    one thread, which its record says) and torch's setting is left as it was; with the pin
    off (threads=None) the record says the count that trained it."""
    artifact, _, _ = run
    hashes = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        again = scoring_run(digits, TINY, tmp_path / f"t{threads}", device="cpu")
        assert torch.get_num_threads() == threads
        assert again.meta["platform"]["threads"] == scoring.SCORING_THREADS == 1
        hashes.append(again.hash)
    assert hashes == [artifact.hash, artifact.hash]


def test_an_unpinned_scoring_run_records_torchs_thread_count(
    digits, tmp_path, torch_threads_restored
):
    torch.set_num_threads(2)
    artifact = scoring_run(digits, TINY, tmp_path, device="cpu", threads=None)
    meta = json.loads((artifact.path / "meta.json").read_text())
    where = meta["platform"]
    assert where["threads"] == 2 and where["device"] == "cpu"
    assert where["machine"] == platform.machine() and where["torch"] == torch.__version__
    assert where["cpu_model"] == cpu_model()
    with pytest.raises(NasproxyError, match="at least 1"):
        scoring_run(digits, TINY, tmp_path / "zero", device="cpu", threads=0)


def test_a_run_cached_without_a_platform_record_is_reused(run, digits, tmp_path, monkeypatch):
    """A run cached by an earlier version (no ``platform`` in meta.json) still reads back."""
    artifact, _, _ = run
    path = scoring.artifact_dir(tmp_path, digits, TINY)
    path.parent.mkdir(parents=True)
    shutil.copytree(artifact.path, path)
    meta = json.loads((path / "meta.json").read_text())
    del meta["platform"]
    (path / "meta.json").write_text(json.dumps(meta))
    monkeypatch.setattr(scoring, "fit", None)  # reused, not trained again
    again = scoring_run(digits, TINY, tmp_path, device="cpu")
    assert again.hash == artifact.hash and "platform" not in again.meta


def test_a_cell_is_a_scoring_backbone(digits) -> None:
    """A NAS-Bench-201 cell, by either name, scores as a ConvNet does: 64-d features."""
    text = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|"
    for name in ("c3-no.c3-sk.c3.ap", text):
        assert ScoringConfig(backbone=name).backbone == name
        model = scoring.build_backbone(name, digits)
        features = model.embed(torch.zeros(2, digits.in_channels, 32, 32))
        assert features.shape == (2, 64) and model.classifier.in_features == 64
    with pytest.raises(NasproxyError, match="backbone"):
        ScoringConfig(backbone="c3-no.c9-sk.c3.ap")
