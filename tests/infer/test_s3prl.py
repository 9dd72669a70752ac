"""s3prl's upstream protocol: `forward(list of wavs) -> {"hidden_states": [...]}` at 320
samples per frame, over any model the loader reads; and, where s3prl imports, s3prl's own
`S3PRLUpstream` producing the same hidden states."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from wav2vec2.config import tiny
from wav2vec2.infer.s3prl import S3prlUpstream, wav2vec2_project
from wav2vec2.interop.load import save_model
from wav2vec2.interop.loaded import LoadedModel
from wav2vec2.model.wav2vec2 import Wav2Vec2Model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Wav2Vec2Model]:
    """A tiny model pretrained on normalised audio, as a transformers directory (one of the
    formats the loader reads)."""
    cfg = tiny()
    cfg.transformer.num_layers = 3
    cfg.feature_encoder.mode, cfg.feature_encoder.conv_bias = "layer_norm", True
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg).eval()
    out = tmp_path_factory.mktemp("hf") / "model"
    save_model(LoadedModel.from_module(model, normalize=True), out, to="hf")
    return out, model


def _wavs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(n, generator=g) * 0.3 for n in (16000, 9000, 12345)]


def test_hidden_states_are_the_models_own_on_each_utterance(model_dir) -> None:
    path, model = model_dir
    upstream = wav2vec2_project(str(path)).eval()
    assert isinstance(upstream, S3prlUpstream) and upstream.get_downsample_rates("hidden_states") == 320
    with torch.no_grad():
        out = upstream(_wavs())
        assert len(out["hidden_states"]) == 4  # the input of each of 3 layers, and the output
        assert torch.equal(out["hidden_states"][-1], out["last_hidden_state"])
        for b, wav in enumerate(_wavs()):
            alone = model.encode(F.layer_norm(wav, wav.shape)[None], return_hidden_states=True).hidden_states
            T = alone[0].shape[1]  # this utterance's frames; the rest of the batch's are padding
            assert T == tiny().feature_encoder.num_frames(len(wav))
            for got, want in zip(out["hidden_states"], alone):
                torch.testing.assert_close(got[b, :T], want[0], rtol=1e-4, atol=1e-5)


def test_no_layerdrop_and_no_normalisation_unless_pretrained_so(tmp_path: Path) -> None:
    cfg = tiny()
    cfg.transformer.dropout = cfg.transformer.attention_dropout = cfg.transformer.activation_dropout = 0.0
    cfg.dropout_input = 0.0
    cfg.transformer.layerdrop = 0.9  # what is left random in training mode: LayerDrop, which must be off
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg)
    save_model(LoadedModel.from_module(model, normalize=False), tmp_path / "m", to="hf")
    upstream = S3prlUpstream(tmp_path / "m").train()  # s3prl's runner may train the upstream
    assert upstream.model.cfg.transformer.layerdrop == 0.0 and not upstream.normalize
    wav = [torch.randn(8000, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        runs = [upstream(wav)["last_hidden_state"] for _ in range(3)]
        want = model.eval().encode(wav[0][None]).x  # unnormalised input, every layer
    for got in runs:
        torch.testing.assert_close(got, want)


def test_s3prl_itself_reads_the_same_hidden_states(model_dir) -> None:
    nn_module = pytest.importorskip("s3prl.nn", reason="s3prl does not import beside torch 2.13 (docs/probing.md)")
    import s3prl.hub as hub

    path, model = model_dir
    hub.wav2vec2_project = wav2vec2_project  # what a hubconf.py entry does
    upstream = nn_module.S3PRLUpstream("wav2vec2_project", path_or_url=str(path)).eval()
    wavs = _wavs()
    lengths = torch.tensor([len(w) for w in wavs])
    padded = torch.zeros(len(wavs), int(lengths.max()))
    for b, w in enumerate(wavs):
        padded[b, : len(w)] = w
    with torch.no_grad():
        all_hs, all_lens = upstream(padded, lengths)
        summed, _ = nn_module.Featurizer(upstream)(all_hs, all_lens)
        assert len(all_hs) == 4
        for b, wav in enumerate(wavs):
            alone = model.encode(F.layer_norm(wav, wav.shape)[None], return_hidden_states=True).hidden_states
            T = alone[0].shape[1]  # ours; s3prl counts (L - 1) // 320 + 1 and repeats the last frame up to it
            assert all_lens[0][b] == (len(wav) - 1) // 320 + 1
            for theirs, mine in zip(all_hs, alone):
                torch.testing.assert_close(theirs[b, :T], mine[0], rtol=1e-4, atol=1e-5)
            # Zero-initialised featurizer weights: the mean of the hidden states.
            torch.testing.assert_close(summed[b, :T], torch.stack(alone).mean(dim=0)[0], rtol=1e-4, atol=1e-5)
