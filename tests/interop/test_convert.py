"""scripts/convert.py and `convert` (wav2vec2/interop/load.py): every route between this project,
fairseq and transformers gives back a model that computes what the source computes, and
what cannot be converted says why."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from wav2vec2.data import Dictionary  # noqa: E402
from wav2vec2.interop.load import convert, load_model  # noqa: E402
from wav2vec2.interop.loaded import LoadedModel  # noqa: E402
from wav2vec2.model.ctc import Wav2Vec2Ctc  # noqa: E402
from wav2vec2.model.wav2vec2 import Wav2Vec2Model  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DICTIONARY = Dictionary.from_symbols(["|", "E", "T", "A", "O"])


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (not the init's zeros and ones), so a dropped or swapped
    tensor changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture
def ours(compose_preset, tmp_path: Path) -> dict[str, Path]:
    """A pretraining and a CTC checkpoint of this project (tiny, normalize=True)."""
    paths = {}
    for task, preset in (("pretrain", "tiny"), ("ctc", "ctc_tiny")):
        cfg = compose_preset(preset, [f"data.manifest_dir={tmp_path}", f"run_dir={tmp_path}", "data.normalize=true"])
        torch.manual_seed(0)
        if task == "ctc":
            model = Wav2Vec2Ctc(cfg.model, vocab_size=len(DICTIONARY))
            extra = {"task_state": {"dictionary": DICTIONARY.symbols[4:]}}
        else:
            model, extra = Wav2Vec2Model(cfg.model), {}
        _perturb(model, seed=1)
        paths[task] = tmp_path / f"{task}.pt"
        torch.save({"task": task, "config": dataclasses.asdict(cfg), "model": model.state_dict(), **extra},
                   paths[task])
    return paths


def _outputs(model: LoadedModel) -> torch.Tensor:
    """CTC logits, or a pretraining model's encoder output, on 1.5 s of noise."""
    wav = torch.randn(2, 24000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        if model.kind == "ctc":
            return model.build()(wav).logits
        return model.build().encode(wav).x


@pytest.mark.parametrize("task", ["ctc", "pretrain"])
def test_every_route_computes_what_the_source_computes(ours, task, tmp_path: Path) -> None:
    """ours -> fairseq -> transformers -> fairseq, and ours -> transformers -> fairseq: the
    outputs at every stop equal the source's, and normalize travels along."""
    source = load_model(ours[task])
    expected = _outputs(source)
    fs = convert(ours[task], tmp_path / "fs" / "model.pt", to="fairseq")
    dictionary = tmp_path / "fs" / "dict.ltr.txt" if task == "ctc" else None
    hf = convert(fs, tmp_path / "hf", to="hf", dictionary=dictionary)
    fs2 = convert(hf, tmp_path / "fs2" / "model.pt", to="fairseq")
    hf2 = convert(ours[task], tmp_path / "hf2", to="hf")
    for path in (fs, hf, fs2, hf2):
        model = load_model(path, dictionary=path.parent / "dict.ltr.txt" if path.suffix == ".pt" else None)
        assert model.kind == source.kind, path
        assert model.normalize is True, path
        torch.testing.assert_close(_outputs(model), expected, rtol=0, atol=1e-6, msg=str(path))
        if task == "ctc":
            assert model.dictionary == DICTIONARY, path
        else:
            for key, value in source.weights.items():  # quantizer and heads too
                assert torch.equal(model.weights[key], value), (path, key)


def test_what_cannot_be_converted_says_why(ours, tmp_path: Path) -> None:
    fs = convert(ours["ctc"], tmp_path / "fs" / "ctc.pt", to="fairseq")
    with pytest.raises(ValueError, match=r"dict\.ltr\.txt.*--dictionary"):
        convert(fs, tmp_path / "hf", to="hf")
    with pytest.raises(ValueError, match="to must be one of"):
        convert(ours["ctc"], tmp_path / "x", to="onnx")
    with pytest.raises(FileNotFoundError, match="no model at"):
        convert(tmp_path / "missing.pt", tmp_path / "y", to="hf")
    # An encoder without its quantizer cannot be a fairseq/transformers pretraining model.
    state = torch.load(ours["pretrain"], weights_only=False)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith(("quantizer.", "project_q.",
                                                                                    "final_proj."))}
    torch.save(state, tmp_path / "encoder_only.pt")
    with pytest.raises(ValueError, match="no quantizer, project_q and final_proj .only the encoder"):
        convert(tmp_path / "encoder_only.pt", tmp_path / "z.pt", to="fairseq")
    with pytest.raises(ValueError, match="no quantizer, project_q and final_proj .only the encoder"):
        convert(tmp_path / "encoder_only.pt", tmp_path / "hf", to="hf")
    assert not (tmp_path / "hf").exists() and not (tmp_path / "z.pt").exists()


def test_the_command_line_checks_what_it_wrote(ours, tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = [sys.executable, str(REPO / "scripts" / "convert.py")]
    proc = subprocess.run([*run, str(ours["ctc"]), str(tmp_path / "hf"), "--to", "hf"], capture_output=True,
                          text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "outputs equal the source's" in proc.stdout
    proc = subprocess.run([*run, str(tmp_path / "nothing.pt"), str(tmp_path / "out.pt"), "--to", "fairseq"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 1 and proc.stderr.startswith("error: no model at"), proc.stderr
