"""Whole transformers `Wav2Vec2ForCTC` directories in and out (`export_hf`, and the loader's
`read_hf` through `load_recognizer`).

- Export: transformers' `Wav2Vec2ForCTC.from_pretrained` gives our logits within 1e-5 (eval,
  fp32; TINY, BASE on 1 s, and a padded batch through the layer-norm encoder with the
  attention mask that the exported `Wav2Vec2Processor` makes); the files say what they should
  (blank = pad_token_id 0, vocabulary, tokenizer, feature extractor); the ASR pipeline
  transcribes what our greedy decoding does; the loader reads the export's encoder.
- Import: our own export comes back exactly; directories saved by transformers with other
  vocabularies (blank not at 0, another word delimiter, added special tokens, fairseq's
  layout) are permuted onto ours and decode as transformers' greedy decoding does.
- Errors name the file, and a failed export leaves nothing behind.

Nothing may touch the network: sockets are blocked and the hub is offline in every test.
"""

from __future__ import annotations

import json
import re
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from wav2vec2.config import ModelConfig, architecture, base, tiny  # noqa: E402
from wav2vec2.data.labels import Dictionary  # noqa: E402
from wav2vec2.infer.decode import greedy_ctc  # noqa: E402
from wav2vec2.infer.recognizer import Recognizer, load_recognizer  # noqa: E402
from wav2vec2.interop.hf import ctc_config_to_hf, export_hf, read_hf, state_dict_to_hf  # noqa: E402
from wav2vec2.model.ctc import Wav2Vec2Ctc  # noqa: E402
from wav2vec2.files import UnsafeCheckpointError  # noqa: E402

pytestmark = pytest.mark.reference

RTOL = ATOL = 1e-5
LETTERS = ["|", "'", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ"]  # 4 specials + 28 = 32 outputs
FAVOURED = ["|", "E", "T", "A"]  # the head's bias favours these, so transcripts are not empty


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The hub offline and no socket may connect: a download attempt fails the test."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise RuntimeError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _tiny_pre_ln() -> ModelConfig:
    cfg = tiny()
    cfg.feature_encoder.mode = "layer_norm"
    cfg.feature_encoder.conv_bias = True
    cfg.transformer.layer_norm_first = True
    return cfg


def _perturb(module: torch.nn.Module) -> None:
    """Non-trivial values where the init is constant (biases 0, norm gains 1)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))


def _favour(bias: torch.Tensor, rows: list[int], *, never: list[int] = ()) -> None:
    with torch.no_grad():
        bias[rows] += 4.0
        bias[list(never)] -= 10.0  # specials: transformers prints them, we mostly do not


def _our_model(make_cfg, *, seed: int = 0) -> tuple[Wav2Vec2Ctc, Dictionary]:
    torch.manual_seed(seed)
    dictionary = Dictionary.from_symbols(LETTERS)
    model = Wav2Vec2Ctc(make_cfg(), vocab_size=len(dictionary), final_dropout=0.1)
    _perturb(model)
    _favour(model.proj.bias, [0] + [dictionary.index(s) for s in FAVOURED], never=[1, 2, 3])
    return model.eval(), dictionary


def _audio(lengths: list[int], *, seed: int = 1) -> list[np.ndarray]:
    """Synthetic 'speech': a few sines under noise, amplitude ~0.3 (not normalised)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        t = np.arange(n) / 16000
        x = sum(0.1 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in rng.uniform(100, 3000, 3))
        out.append((x + 0.1 * rng.standard_normal(n)).astype(np.float32))
    return out


def _check(what: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape, what
    diff = (ours - ref).double()
    print(f"{what}: max abs {float(diff.abs().max()):.2e}, rel (norm) {float(diff.norm() / ref.double().norm()):.2e}")
    torch.testing.assert_close(ours, ref, rtol=RTOL, atol=ATOL)


def _hf_ctc(path):
    hf, info = transformers.Wav2Vec2ForCTC.from_pretrained(path, local_files_only=True, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return hf.eval()


def _same_text(text: str) -> str:
    """Whitespace normalised: transformers prints a space per word delimiter it keeps, so
    "|", blank, "|" gives two spaces there and one here; the words are the same."""
    return " ".join(text.split())


def _ours_greedy(recognizer: Recognizer, audio: np.ndarray) -> str:
    x = torch.from_numpy(audio)[None]
    if recognizer.normalize:
        x = F.layer_norm(x, x.shape)  # what our data pipeline feeds a normalising model
    out = recognizer(x)
    return recognizer.dictionary.words(greedy_ctc(out.logits, out.lengths)[0])


# ------------------------------------------------------------------------------ export
# name -> (config, samples per utterance, padded tail of utterance 1 in samples)
EXPORT_VARIANTS = {
    "tiny": (tiny, 24000, 0),
    "base": (base, 16000, 0),  # 12 x 768, T = 49
    "tiny_pre_ln_padded": (_tiny_pre_ln, 24000, 5000),
}


@pytest.mark.parametrize("name", list(EXPORT_VARIANTS))
def test_exported_logits_match_transformers(name, tmp_path):
    make_cfg, num_samples, pad = EXPORT_VARIANTS[name]
    ours, dictionary = _our_model(make_cfg)
    out = export_hf(ours, tmp_path / "export", dictionary=dictionary, normalize=pad > 0)
    hf = _hf_ctc(out)
    assert hf.config.final_dropout == 0.1 and hf.config.pad_token_id == 0
    waves = _audio([num_samples, num_samples - pad])
    # The exported processor pads and, for the layer-norm encoder only, makes the mask.
    processor = transformers.Wav2Vec2Processor.from_pretrained(out, local_files_only=True)
    batch = processor(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    source = batch.input_values  # (B, L), normalised by the processor when do_normalize
    attention_mask = batch.get("attention_mask")
    assert (attention_mask is not None) == (make_cfg().feature_encoder.mode == "layer_norm")
    padding_mask = None if attention_mask is None else attention_mask == 0
    if pad:
        assert padding_mask[1].sum() == pad and not padding_mask[0].any()
        assert (source[padding_mask] == 0).all()  # padding_value 0.0
    with torch.no_grad():
        mine = ours(source, padding_mask)
        ref = hf(source, attention_mask=attention_mask).logits
    valid = torch.ones(mine.logits.shape[:2], dtype=torch.bool) if mine.padding_mask is None else ~mine.padding_mask
    if pad:
        assert not valid[1].all()
    _check(f"[{name}] exported CTC logits", mine.logits[valid], ref[valid])


def test_exported_files(tmp_path):
    ours, dictionary = _our_model(_tiny_pre_ln)
    out = export_hf(ours, tmp_path / "export", dictionary=dictionary, normalize=True, sample_rate=8000)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
        "tokenizer_config.json", "vocab.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Wav2Vec2ForCTC"]
    assert (config["vocab_size"], config["pad_token_id"]) == (len(dictionary), 0)
    vocab = json.loads((out / "vocab.json").read_text())
    assert sorted(vocab, key=vocab.get) == ["<pad>", "<s>", "</s>", "<unk>", *LETTERS]
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    assert {k: preprocessor[k] for k in ("feature_size", "sampling_rate", "padding_value", "do_normalize",
                                         "return_attention_mask")} == {
        "feature_size": 1, "sampling_rate": 8000, "padding_value": 0.0, "do_normalize": True,
        "return_attention_mask": True}
    special = json.loads((out / "special_tokens_map.json").read_text())
    assert special["pad_token"] == "<pad>" and special["word_delimiter_token"] == "|"

    # transformers' tokenizer speaks our vocabulary: the same ids for a transcript (what
    # fine-tuning further in transformers trains on) and the same words back.
    processor = transformers.Wav2Vec2Processor.from_pretrained(out, local_files_only=True)
    tokenizer = processor.tokenizer
    assert (tokenizer.pad_token_id, tokenizer.word_delimiter_token) == (0, "|")
    ids = dictionary.encode("I T ' S | ' | C A T", where="test")
    assert tokenizer("IT'S ' CAT").input_ids == ids
    # Spaces are left alone: transformers' clean-up would glue the lone "'" ("IT'S'CAT").
    assert tokenizer.decode(ids) == dictionary.words(ids) == "IT'S ' CAT"


def test_group_norm_export_has_no_attention_mask(tmp_path):
    ours, dictionary = _our_model(tiny)
    out = export_hf(ours, tmp_path / "export", dictionary=dictionary, normalize=False)
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    assert (preprocessor["return_attention_mask"], preprocessor["do_normalize"]) == (False, False)


# The group-norm encoder is blind to the waveform's scale and offset (its first conv has no
# bias and GroupNorm normalises each channel over time), so normalisation is tested with the
# layer-norm one, which is not.
@pytest.mark.parametrize("make_cfg, normalize", [(tiny, False), (_tiny_pre_ln, True)])
def test_pipeline_transcribes_as_our_greedy_decoding(make_cfg, normalize, tmp_path):
    ours, dictionary = _our_model(make_cfg)
    recognizer = Recognizer(ours, dictionary, normalize)
    out = export_hf(recognizer.as_loaded(), tmp_path / "export")
    asr = transformers.pipeline("automatic-speech-recognition", model=str(out), device="cpu")
    waves = _audio([16000, 23456, 9999], seed=2)
    theirs = [result["text"] for result in asr(waves)]
    mine = [_ours_greedy(recognizer, wave) for wave in waves]
    print(f"[{make_cfg.__name__}, normalize={normalize}] pipeline: {theirs}")
    assert [_same_text(t) for t in theirs] == mine
    assert all(len(set(t.replace(" ", ""))) >= 2 for t in mine) and any(" " in t for t in mine)
    if normalize:  # the pipeline did normalise: without it, the text changes
        recognizer.normalize = False
        assert [_ours_greedy(recognizer, wave) for wave in waves] != mine


def test_export_writes_nothing_on_failure(tmp_path, monkeypatch):
    import safetensors.torch

    ours, dictionary = _our_model(tiny)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        export_hf(ours, tmp_path / "export", dictionary=dictionary, normalize=False)
    assert list(tmp_path.iterdir()) == []  # neither the directory nor its temporary one


def test_export_errors(tmp_path):
    ours, dictionary = _our_model(tiny)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=re.escape(str(occupied))):
        export_hf(ours, occupied, dictionary=dictionary, normalize=False)
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]
    with pytest.raises(ValueError, match="33 symbols"):
        export_hf(ours, tmp_path / "a", dictionary=Dictionary.from_symbols([*LETTERS, "1"]), normalize=False)
    with pytest.raises(ValueError, match="needs its dictionary and normalize"):
        export_hf(ours, tmp_path / "b", dictionary=dictionary)
    s_dictionary = Dictionary.from_symbols([*LETTERS[:-1], "<s>"])
    with pytest.raises(ValueError, match="collide"):
        export_hf(ours, tmp_path / "d", dictionary=s_dictionary, normalize=False)
    # An existing empty directory is fine.
    (tmp_path / "empty").mkdir()
    export_hf(ours, tmp_path / "empty", dictionary=dictionary, normalize=False)
    assert (tmp_path / "empty" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------ import
@pytest.mark.parametrize("make_cfg", [tiny, _tiny_pre_ln])
def test_reading_a_ctc_directory_gives_back_our_export_exactly(make_cfg, tmp_path):
    ours, dictionary = _our_model(make_cfg)
    out = export_hf(Recognizer(ours, dictionary, True, 8000).as_loaded(), tmp_path / "export")
    recognizer = load_recognizer(out)
    assert recognizer.dictionary == dictionary
    assert (recognizer.normalize, recognizer.sample_rate, recognizer.source) == (True, 8000, str(out))
    assert architecture(recognizer.model.cfg) == architecture(ours.cfg)
    assert not recognizer.model.training
    for key, value in ours.state_dict().items():
        assert torch.equal(recognizer.model.state_dict()[key], value), key
    source = torch.from_numpy(np.stack(_audio([20000, 20000])))
    padding_mask = torch.zeros_like(source, dtype=torch.bool)
    padding_mask[1, -4000:] = True
    with torch.no_grad():
        expected = ours(source, padding_mask).logits
        assert torch.equal(recognizer(source, padding_mask).logits, expected)
        # The reader itself gives the same model.
        assert torch.equal(Recognizer.from_loaded(read_hf(out))(source, padding_mask).logits, expected)


def test_the_loader_reads_the_exports_encoder(tmp_path):
    ours, dictionary = _our_model(_tiny_pre_ln)
    out = export_hf(ours, tmp_path / "export", dictionary=dictionary, normalize=True)
    loaded = read_hf(out)
    cfg, state, do_normalize = loaded.config, loaded.encoder_weights(), loaded.normalize
    assert architecture(cfg) == architecture(ours.cfg) and do_normalize is True
    expected = {k.removeprefix("wav2vec2."): v for k, v in ours.state_dict().items() if k.startswith("wav2vec2.")}
    assert sorted(state) == sorted(expected)
    assert all(torch.equal(state[k], expected[k]) for k in state)


# name -> (vocab.json, tokenizer kwargs, pad_token_id, lm_head rows, our index -> their row)
HF_VOCABS = {
    # The brief's example: blank first, unk among the letters, no <s> or </s> in the rows.
    "pad_first": ({"[PAD]": 0, "a": 1, "b": 2, "[UNK]": 3, "|": 4},
                  dict(pad_token="[PAD]", unk_token="[UNK]"), 0, 5, [0, None, None, 3, 1, 2, 4]),
    # Blank in the middle, another word delimiter.
    "shuffled": ({"a": 0, "[UNK]": 1, "_": 2, "[PAD]": 3, "b": 4, "c": 5},
                 dict(pad_token="[PAD]", unk_token="[UNK]", word_delimiter_token="_"), 3, 6,
                 [3, None, None, 1, 0, 2, 4, 5]),
    # vocab_size = len(tokenizer), as transformers' fine-tuning recipe sets it: the tokenizer
    # adds <s> and </s> after the vocabulary, and the model has rows for them.
    "added_specials": ({"[PAD]": 0, "a": 1, "b": 2, "[UNK]": 3, "|": 4},
                       dict(pad_token="[PAD]", unk_token="[UNK]"), 0, 7, [0, 5, 6, 3, 1, 2, 4]),
    # fairseq-converted (facebook/wav2vec2-base-960h's layout): row for row.
    "fairseq": ({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "E": 5, "T": 6},
                {}, 0, 7, [0, 1, 2, 3, 4, 5, 6]),
}


def _save_transformers_dir(path, vocab, tokenizer_kwargs, pad_token_id, num_rows, *, do_normalize=False, seed=0):
    """A Wav2Vec2ForCTC directory saved by transformers itself (random TINY weights, the head
    biased towards the letters), with its processor. Returns the model, in eval mode."""
    path.mkdir()
    (path / "vocab_source.json").write_text(json.dumps(vocab))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(path / "vocab_source.json"), **tokenizer_kwargs)
    (path / "vocab_source.json").unlink()
    torch.manual_seed(seed)
    hf = transformers.Wav2Vec2ForCTC(ctc_config_to_hf(tiny(), vocab_size=num_rows, pad_token_id=pad_token_id))
    _perturb(hf)
    specials = {tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token}
    tokens = {i: t for t, i in tokenizer.get_vocab().items() if i < num_rows}
    _favour(hf.lm_head.bias, [pad_token_id, *(i for i, t in tokens.items() if t not in specials | {tokenizer.pad_token})],
            never=[i for i, t in tokens.items() if t in specials])
    hf.save_pretrained(path)
    feature_extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=do_normalize)
    # transformers 5 writes the feature extractor into processor_config.json here, 4.x into
    # preprocessor_config.json: the loader must read either.
    transformers.Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(path)
    hf.config._attn_implementation = "eager"
    return hf.eval(), tokenizer


@pytest.mark.parametrize("name", list(HF_VOCABS))
def test_reading_a_ctc_directory_maps_a_transformers_vocabulary(name, tmp_path):
    vocab, tokenizer_kwargs, pad_token_id, num_rows, rows = HF_VOCABS[name]
    # The seed: with seed 0, the 7-row head of "added_specials" only ever emits "b".
    hf, tokenizer = _save_transformers_dir(tmp_path / "hf", vocab, tokenizer_kwargs, pad_token_id, num_rows, seed=1)
    recognizer = load_recognizer(tmp_path / "hf")
    assert (recognizer.normalize, recognizer.sample_rate) == (False, 16000)

    # The mapping: our index j is their row rows[j]; our specials they lack are never emitted.
    delimiter = tokenizer.word_delimiter_token
    expected_symbols = [tokenizer.convert_ids_to_tokens(i) for i in rows[4:]]
    assert recognizer.dictionary.symbols[4:] == ["|" if s == delimiter else s for s in expected_symbols]
    weight, bias = recognizer.model.proj.weight, recognizer.model.proj.bias
    for j, i in enumerate(rows):
        if i is None:
            assert not weight[j].any() and bias[j] == -1e4, j
        else:
            assert torch.equal(weight[j], hf.lm_head.weight[i]) and torch.equal(bias[j], hf.lm_head.bias[i]), j
    if name == "fairseq":
        assert recognizer.dictionary.symbols == ["<blank>", "<pad>", "</s>", "<unk>", "|", "E", "T"]

    waves = _audio([16000, 20000, 12345], seed=3)
    texts = []
    for wave in waves:
        x = torch.from_numpy(wave)[None]
        with torch.no_grad():
            ref = hf(x).logits
            mine = recognizer(x).logits
        present = [j for j, i in enumerate(rows) if i is not None]
        _check(f"[{name}] imported logits", mine[..., present], ref[..., [rows[j] for j in present]])
        assert (mine[..., [j for j, i in enumerate(rows) if i is None]] == -1e4).all()
        # transformers' greedy decoding: argmax, then the tokenizer's CTC decode.
        theirs = tokenizer.decode(ref.argmax(-1)[0])
        ours = _ours_greedy(recognizer, wave)
        assert _same_text(theirs) == ours, (theirs, ours)
        texts.append(ours)
    print(f"[{name}] transcripts: {texts}")
    letters = set("".join(texts).replace(" ", ""))
    assert len(letters) >= 2 and any(" " in t for t in texts)  # not a trivial comparison


def test_reading_a_ctc_directory_reads_preprocessor_config(tmp_path):
    vocab, tokenizer_kwargs, pad_token_id, num_rows, _ = HF_VOCABS["pad_first"]
    _save_transformers_dir(tmp_path / "hf", vocab, tokenizer_kwargs, pad_token_id, num_rows, do_normalize=True)
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False, "sampling_rate": 8000}))
    assert (load_recognizer(tmp_path / "hf").normalize, load_recognizer(tmp_path / "hf").sample_rate) == (False, 8000)
    for name in ("preprocessor_config.json", "processor_config.json"):
        (tmp_path / "hf" / name).unlink()
    recognizer = load_recognizer(tmp_path / "hf")  # defaults, with a warning
    assert (recognizer.normalize, recognizer.sample_rate) == (True, 16000)


def test_reading_a_ctc_directory_errors(tmp_path):
    vocab, tokenizer_kwargs, pad_token_id, num_rows, _ = HF_VOCABS["pad_first"]
    path = tmp_path / "hf"
    _save_transformers_dir(path, vocab, tokenizer_kwargs, pad_token_id, num_rows)
    vocab_file = path / "vocab.json"
    original = vocab_file.read_text()

    # One token more than the lm_head has rows.
    vocab_file.write_text(json.dumps({**vocab, "c": 5}))
    with pytest.raises(ValueError, match=re.escape(f"{vocab_file}: 6 tokens (ids up to 5) but the lm_head")):
        load_recognizer(path)
    # A row without a token.
    vocab_file.write_text(json.dumps({t: i for t, i in vocab.items() if t != "b"}))
    with pytest.raises(ValueError, match=re.escape(f"{vocab_file}: no token for lm_head row(s) [2] of 5")):
        load_recognizer(path)
    # A nested (multi-lingual) vocabulary.
    vocab_file.write_text(json.dumps({"eng": vocab}))
    with pytest.raises(ValueError, match=re.escape(f"{vocab_file}: expected a flat")):
        load_recognizer(path)
    vocab_file.write_text(original)

    # The model's blank is not the tokenizer's pad token.
    config_file = path / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "pad_token_id": 1}))
    with pytest.raises(ValueError, match=re.escape(f"{config_file}: pad_token_id 1 (the CTC blank) is 'a'")):
        load_recognizer(path)
    config_file.write_text(json.dumps(config))
    load_recognizer(path)  # restored: loads

    vocab_file.unlink()
    with pytest.raises(ValueError, match=re.escape(f"{path} (transformers directory (Wav2Vec2ForCTC)) carries no "
                                                   "vocabulary")):
        load_recognizer(path)
    assert read_hf(path).dictionary is None  # its encoder can still be fine-tuned or probed

    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match=re.escape(f"no model at {missing}")):
        load_recognizer(missing)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing} is not a local directory")):
        read_hf(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{empty} is a directory without config.json")):
        load_recognizer(empty)
    hubert = tmp_path / "hubert"
    transformers.HubertConfig().save_pretrained(hubert)
    with pytest.raises(ValueError, match=re.escape(f"{hubert / 'config.json'}: a 'hubert' model")):
        load_recognizer(hubert)

    # An encoder without a head (Wav2Vec2Model) is not a recogniser.
    encoder = tmp_path / "encoder"
    transformers.Wav2Vec2Model(ctc_config_to_hf(tiny(), vocab_size=num_rows)).save_pretrained(encoder)
    (encoder / "vocab.json").write_text(original)
    with pytest.raises(ValueError, match=re.escape(f"{encoder} (transformers directory (Wav2Vec2Model), encoder "
                                                   "(no pretraining heads)) has no CTC output layer")):
        load_recognizer(encoder)
    # A directory that says it is a Wav2Vec2ForCTC but holds no head: the missing weights are named.
    config = json.loads((encoder / "config.json").read_text())
    (encoder / "config.json").write_text(json.dumps({**config, "architectures": ["Wav2Vec2ForCTC"]}))
    with pytest.raises(ValueError, match=re.escape(f"{encoder}: the checkpoint lacks ['lm_head.bias', 'lm_head.weight']")):
        load_recognizer(encoder)


def test_reading_a_ctc_directory_is_state_dict_to_hf_inverse_on_the_encoder(tmp_path):
    """The encoder half of an import is the plain rename (no remapping leaks into it)."""
    ours, dictionary = _our_model(tiny)
    out = export_hf(ours, tmp_path / "export", dictionary=dictionary, normalize=False)
    hf = _hf_ctc(out)
    encoder = {k: v for k, v in load_recognizer(out).model.state_dict().items() if k.startswith("wav2vec2.")}
    renamed = state_dict_to_hf({k.removeprefix("wav2vec2."): v for k, v in encoder.items()}, ours.cfg)
    hf_state = hf.state_dict()
    assert all(torch.equal(renamed[k], hf_state[k]) for k in renamed)


class _RunsCode:
    """Unpickling this calls print: what a malicious pytorch_model.bin would do."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_a_pytorch_model_bin_that_would_run_code_is_refused(tmp_path, capsys):
    ours, dictionary = _our_model(tiny)
    out = export_hf(ours, tmp_path / "export", dictionary=dictionary, normalize=False)
    state = {k: v.contiguous() for k, v in _hf_ctc(out).state_dict().items()}
    (out / "model.safetensors").unlink()
    torch.save(state, out / "pytorch_model.bin")
    assert load_recognizer(out).dictionary == dictionary  # a plain .bin of tensors loads
    torch.save({**state, "payload": _RunsCode()}, out / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        load_recognizer(out)
    with pytest.raises(UnsafeCheckpointError, match="refused to load"):
        read_hf(out)  # fine-tuning or extracting features from it
    assert "this ran while loading" not in capsys.readouterr().out
