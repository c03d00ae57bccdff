"""nasproxy.search.config: the stacked path's options and the settings a search refuses."""

from __future__ import annotations

import pytest

from nasproxy import cli, search
from nasproxy.errors import NasproxyError
from nasproxy.search import FAST_DEFAULTS, FastChoice, SearchConfig


def test_fast_options_take_the_device_defaults_and_the_cli_flags(monkeypatch, inputs, tmp_path):
    assert FastChoice().resolve("cpu") == FAST_DEFAULTS["cpu"]
    cuda = FastChoice(bf16=True).resolve("cuda")
    assert cuda.bf16 and cuda.cuda_graphs == FAST_DEFAULTS["cuda"].cuda_graphs
    assert not FastChoice(cuda_graphs=True).resolve("cpu").cuda_graphs  # graphs need CUDA
    with pytest.raises(NasproxyError, match="rng must be one of exact, shared"):
        FastChoice(rng="bogus")
    with pytest.raises(NasproxyError, match="fuse must be one of auto, on, off"):
        SearchConfig(name="x", whole=True, fuse="maybe")
    with pytest.raises(NasproxyError, match="max_stack must be at least 1"):
        SearchConfig(name="x", whole=True, max_stack=0)

    seen = []
    monkeypatch.setattr(
        search, "run_search", lambda cfg, progress=None: seen.append(cfg) or cfg.exp_dir
    )
    monkeypatch.setattr(cli, "_refuse_failed_units", lambda exp_dir: None)  # no sweep ran
    args = ["search", "--whole", "--name", "flags", "--results-dir", str(tmp_path)]
    assert cli.main([*args, "--fuse", "on", "--max-stack", "8", "--rng", "shared",
                     "--bf16", "--no-cuda-graphs"]) == 0  # fmt: skip
    assert cli.main(args) == 0
    on, default = seen
    assert (on.fuse, on.max_stack) == ("on", 8)
    assert on.fast == FastChoice(rng="shared", bf16=True, channels_last=None, cuda_graphs=False)
    assert (default.fuse, default.max_stack, default.fast) == ("auto", None, FastChoice())


def test_runner_choices_and_local_with_an_address_are_one_line_errors(tmp_path):

    with pytest.raises(NasproxyError, match="it takes no address"):
        SearchConfig(name="x", whole=True, runner="local", address="auto")
    with pytest.raises(NasproxyError, match="runner must be one of ray, local"):
        SearchConfig(name="x", whole=True, runner="dask")
    args = ["search", "--whole", "--name", "x", "--results-dir", str(tmp_path)]
    assert cli.main([*args, "--runner", "local", "--address", "auto"]) == 2
    assert not (tmp_path / "x").exists()
