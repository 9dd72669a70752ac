"""transformers `save_pretrained` directories in and out: `Wav2Vec2ForPreTraining`,
`Wav2Vec2Model` and `Wav2Vec2ForCTC` (with its tokenizer and feature extractor) read as a
`LoadedModel`, and pretraining or CTC models written as directories that transformers loads
offline (`from_pretrained`, `Wav2Vec2Processor`, `pipeline("automatic-speech-recognition")`).

Local directories only: nothing is downloaded (`local_files_only=True`), and a
`pytorch_model.bin` is read with torch's weights-only unpickler. transformers (the `hf`
extra) is imported inside the functions that need it; without it they say which extra to
install. The names and config fields are translated by `names.py` and `config.py`, the
vocabulary by `vocab.py`.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import Tensor

from wav2vec2.config import ModelConfig
from wav2vec2.data.labels import SPECIALS, WORD_BOUNDARY, Dictionary
from wav2vec2.files import UnsafeCheckpointError
from wav2vec2.interop.hf.config import config_from_hf, config_to_hf, ctc_config_to_hf
from wav2vec2.interop.hf.names import (
    CTC_ENCODER,
    ctc_state_dict_from_hf,
    ctc_state_dict_to_hf,
    state_dict_from_hf,
    state_dict_to_hf,
    with_mask_emb,
)
from wav2vec2.interop.hf.vocab import HF_SPECIALS, map_vocab, remap_head, word_delimiter
from wav2vec2.interop.loaded import CTC, ENCODER, PRETRAINING, LoadedModel
from wav2vec2.model.ctc import Wav2Vec2Ctc
from wav2vec2.model.wav2vec2 import Wav2Vec2Model

log = logging.getLogger(__name__)

KIND_OF_ARCHITECTURE = {"Wav2Vec2ForPreTraining": PRETRAINING, "Wav2Vec2Model": ENCODER, "Wav2Vec2ForCTC": CTC}
INSTALL_HINT = "pip install -e '.[hf]' (the hf extra: transformers)"


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ImportError(f"transformers directories need transformers: {INSTALL_HINT}") from None
    return transformers


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def is_hf_directory(path: str | os.PathLike) -> bool:
    """A directory with a config.json: what `save_pretrained` writes."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def _check_hf_dir(path: Path) -> dict[str, Any]:
    """config.json's contents, after checking that this is a local wav2vec2 directory."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a local directory (hub downloads are not supported)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} has no config.json: not a transformers save_pretrained directory")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_file} is not valid JSON ({err})") from None
    if config.get("model_type") != "wav2vec2":
        raise ValueError(f"{config_file}: a {config.get('model_type')!r} model; only 'wav2vec2' can be loaded")
    return config


def read_feature_extractor(path: Path) -> tuple[dict, Path] | None:
    """The Wav2Vec2FeatureExtractor settings of a directory, and the file they are in:
    preprocessor_config.json, or processor_config.json's "feature_extractor" (transformers 5's
    `Wav2Vec2Processor.save_pretrained` writes only that). None without either."""
    preprocessor = path / "preprocessor_config.json"
    if preprocessor.is_file():
        return json.loads(preprocessor.read_text()), preprocessor
    processor = path / "processor_config.json"
    if processor.is_file():
        settings = json.loads(processor.read_text()).get("feature_extractor")
        if isinstance(settings, dict):
            return settings, processor
    return None


def _from_pretrained(model_class: Any, path: Path, hf_config: Any) -> tuple[Any, dict]:
    """`model_class.from_pretrained(path)`, offline, a .bin read with torch.load(weights_only=True);
    a .bin that would run code is refused with `UnsafeCheckpointError`, as every loader here does."""
    try:
        return model_class.from_pretrained(path, config=hf_config, local_files_only=True, weights_only=True,
                                           output_loading_info=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"refused to load {path}: its PyTorch weights file asks to build or call something other than "
            f"tensors, which a checkpoint holds only if someone put code in it ({str(err).splitlines()[-1][:200]}). "
            "If you trust where it came from, load it once with transformers and save_pretrained it as safetensors."
        ) from None


def _checkpoint_tensors(model_class: Any, path: Path, hf_config: Any, *, may_lack: str,
                        hint: str = "") -> dict[str, Tensor]:
    """The tensors a local directory holds, read as `model_class` (offline, weights-only).
    transformers initialises what a checkpoint lacks; here the one weight it `may_lack` (the
    mask embedding, absent when saved with masking off) is left out, anything else missing
    is an error naming it."""
    hf_model, info = _from_pretrained(model_class, path, hf_config)
    missing = set(info["missing_keys"])
    if missing - {may_lack}:
        raise ValueError(f"{path}: the checkpoint lacks {sorted(missing - {may_lack})}{hint}")
    return {key: value.detach() for key, value in hf_model.state_dict().items() if key not in missing}


def read_hf(path: str | os.PathLike, *, template: ModelConfig | None = None) -> LoadedModel:
    """The transformers directory at `path` as a `LoadedModel`; its kind follows config.json's
    `architectures` (`Wav2Vec2ForPreTraining` -> pretraining, `Wav2Vec2Model` -> encoder,
    `Wav2Vec2ForCTC` -> ctc; none named: ctc if there is a vocab.json, else encoder).

    Config fields transformers lacks come from `template` (default: the BASE recipe). A
    checkpoint saved with masking off has no mask embedding: a fresh U[0, 1) one is drawn,
    with a warning (`names.with_mask_emb`); any other weight it lacks is an error
    (transformers would silently initialise it). `normalize` and the sample rate come from
    the feature extractor's settings (None and 16 kHz without them: a recogniser then takes
    Wav2Vec2FeatureExtractor's default, True, with a warning). A CTC model's
    vocabulary is mapped onto ours by the rule in `vocab.py`: row for row for
    fairseq-converted models and our own exports, permuted otherwise.
    """
    path = Path(path)
    config = _check_hf_dir(path)
    architectures = config.get("architectures") or []
    known = [a for a in architectures if a in KIND_OF_ARCHITECTURE]
    if known:
        kind = KIND_OF_ARCHITECTURE[known[0]]
    else:
        kind = CTC if (path / "vocab.json").is_file() else ENCODER
        log.info("%s/config.json names no wav2vec2 architecture (%s): read as %s", path, architectures, kind)
    transformers = _transformers()
    hf_config = transformers.Wav2Vec2Config.from_pretrained(path, local_files_only=True)
    try:
        cfg = config_from_hf(hf_config, template=template)
    except ValueError as e:
        raise ValueError(f"{path / 'config.json'}: {e}") from e

    settings = read_feature_extractor(path)
    normalize, sample_rate = None, 16000
    if settings is not None:
        values, settings_file = settings
        if values.get("feature_size", 1) != 1:
            raise ValueError(f"{settings_file}: feature_size {values['feature_size']}; a waveform model needs 1")
        normalize = bool(values.get("do_normalize", True))  # absent: Wav2Vec2FeatureExtractor's default
        sample_rate = int(values.get("sampling_rate", 16000))
    common = dict(normalize=normalize, sample_rate=sample_rate, format="transformers",
                  origin=f"transformers directory ({known[0] if known else kind})", path=str(path))

    if kind == CTC:
        return _read_ctc(path, transformers, hf_config, cfg, common)
    try:
        if kind == PRETRAINING:
            hf_state = _checkpoint_tensors(transformers.Wav2Vec2ForPreTraining, path, hf_config,
                                           may_lack="wav2vec2.masked_spec_embed")
        else:
            own = _checkpoint_tensors(transformers.Wav2Vec2Model, path, hf_config, may_lack="masked_spec_embed")
            hf_state = {CTC_ENCODER + key: value for key, value in own.items()}
        hf_state = with_mask_emb(hf_state, cfg, source=str(path))
        weights = state_dict_from_hf(hf_state, cfg)
    except ValueError as e:  # a non-identity projection where C == D
        raise ValueError(f"{path}: {e}") from e
    return LoadedModel(kind, cfg, weights, **common)


def _read_ctc(path: Path, transformers: Any, hf_config: Any, cfg: ModelConfig, common: dict) -> LoadedModel:
    """A `Wav2Vec2ForCTC` directory: weights, and the vocabulary if vocab.json is there.

    Text comes out as ours (`Dictionary.words`), which differs from transformers' decoding
    only where the model emits a special token (they print it, we print `<unk>` only) or two
    word delimiters with a blank between them (they print two spaces, we one); a tokenizer
    with do_lower_case gives our text in the vocabulary's case."""
    if hf_config.pad_token_id is None:
        raise ValueError(f"{path / 'config.json'}: no pad_token_id, which is Wav2Vec2ForCTC's CTC blank")
    hf_state = _checkpoint_tensors(transformers.Wav2Vec2ForCTC, path, hf_config, may_lack="wav2vec2.masked_spec_embed",
                                   hint=" (a Wav2Vec2ForCTC directory has the encoder and lm_head)")
    try:
        weights = ctc_state_dict_from_hf(hf_state, cfg)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    final_dropout = float(getattr(hf_config, "final_dropout", 0.0) or 0.0)
    vocab_file = path / "vocab.json"
    if not vocab_file.is_file():
        log.warning("%s has no vocab.json: the output layer's symbols are unknown (encoder use only)", path)
        return LoadedModel(CTC, cfg, weights, final_dropout=final_dropout, **common)
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
        raise ValueError(f"{vocab_file}: expected a flat {{token: id}} object (multi-lingual, nested "
                         "vocabularies such as MMS's are not supported)")
    tokenizer = transformers.Wav2Vec2CTCTokenizer.from_pretrained(path, local_files_only=True)
    # Row i's token as transformers decodes it: vocab.json first, then the added tokens.
    id_to_token = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    id_to_token.update({i: t for t, i in vocab.items()})
    num_rows = weights["proj.weight"].shape[0]
    if max(vocab.values(), default=-1) >= num_rows:
        raise ValueError(f"{vocab_file}: {len(vocab)} tokens (ids up to {max(vocab.values())}) but the lm_head "
                         f"in {path} has {num_rows} rows: not this model's vocabulary")
    blank = hf_config.pad_token_id
    if id_to_token.get(blank) != tokenizer.pad_token:
        raise ValueError(
            f"{path / 'config.json'}: pad_token_id {blank} (the CTC blank) is {id_to_token.get(blank)!r} in "
            f"{vocab_file}, but the tokenizer's pad_token (what its decoding drops) is {tokenizer.pad_token!r}"
        )
    dictionary, rows = map_vocab(
        id_to_token, num_rows, blank=blank, bos=tokenizer.bos_token, eos=tokenizer.eos_token,
        unk=tokenizer.unk_token, delimiter=word_delimiter(path), where=str(vocab_file),
    )
    weights["proj.weight"], weights["proj.bias"] = remap_head(weights["proj.weight"], weights["proj.bias"], rows)
    return LoadedModel(CTC, cfg, weights, dictionary=dictionary, final_dropout=final_dropout, **common)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def export_hf(
    model: LoadedModel | Wav2Vec2Model | Wav2Vec2Ctc,
    out_dir: str | os.PathLike,
    *,
    normalize: bool | None = None,
    dictionary: Dictionary | None = None,
    sample_rate: int | None = None,
) -> Path:
    """Write `model` (a `LoadedModel`, or a model built here) as a directory transformers
    loads offline. Returns `out_dir`, which must not exist or be empty.

    A pretraining model becomes a `Wav2Vec2ForPreTraining` (config.json, model.safetensors and,
    when `normalize` is known, preprocessor_config.json). A CTC model becomes a whole
    recogniser: `Wav2Vec2ForCTC.from_pretrained`, `Wav2Vec2Processor.from_pretrained` and
    `pipeline("automatic-speech-recognition", model=str(out_dir))` load it. Its files:

    - config.json: `ctc_config_to_hf` (pad_token_id 0: our blank is their CTC blank);
    - model.safetensors: `ctc_state_dict_to_hf`, the output layer row for row;
    - vocab.json: our symbols at our indices, index 0..3 written "<pad>", "<s>", "</s>",
      "<unk>" (transformers' names in a fairseq-converted model: their pad is the blank);
    - tokenizer_config.json, special_tokens_map.json: a Wav2Vec2CTCTokenizer with "|" as the
      word delimiter and no clean-up of spaces;
    - preprocessor_config.json: a Wav2Vec2FeatureExtractor (1 feature, the sample rate,
      padding 0.0, do_normalize = `normalize`; return_attention_mask only for layer-norm
      encoders, as transformers sets it: the group-norm encoder is trained on unpadded batches,
      and padding it changes its output whatever the mask). Its do_normalize uses a variance
      eps of 1e-7 where we use F.layer_norm's 1e-5: a relative difference of ~1e-5/var.

    `normalize`, `dictionary` and `sample_rate` are needed only where the model does not bring
    them. Written to a temporary directory beside `out_dir` and renamed into place (with the
    umask's permissions), so a failure leaves nothing half-written.
    """
    loaded = model if isinstance(model, LoadedModel) else LoadedModel.from_module(model)
    normalize = loaded.normalize if normalize is None else normalize
    sample_rate = sample_rate or loaded.sample_rate or 16000
    if loaded.kind != CTC:
        loaded.require_pretraining_heads("transformers' Wav2Vec2ForPreTraining needs them")
    transformers = _transformers()
    from safetensors.torch import save_file

    if loaded.kind == CTC:
        dictionary = dictionary or loaded.dictionary
        if dictionary is None or normalize is None:
            raise ValueError("exporting a CTC model needs its dictionary and normalize (how its audio was prepared "
                             "in training)")
        vocab = _vocab_json(loaded, dictionary)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty directory; export to a new one")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        cfg = loaded.config
        if loaded.kind == CTC:
            hf_config = ctc_config_to_hf(cfg, vocab_size=loaded.weights["proj.weight"].shape[0],
                                         final_dropout=loaded.final_dropout)
            hf_weights = ctc_state_dict_to_hf(loaded.weights, cfg)
        else:
            hf_config, hf_weights = config_to_hf(cfg), state_dict_to_hf(loaded.weights, cfg)
        hf_config.save_pretrained(tmp)
        tensors = {key: value.detach().cpu().contiguous() for key, value in hf_weights.items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if loaded.kind == CTC:
            _write_tokenizer(transformers, tmp, vocab)
        if normalize is not None:
            transformers.Wav2Vec2FeatureExtractor(
                feature_size=1, sampling_rate=sample_rate, padding_value=0.0, do_normalize=bool(normalize),
                return_attention_mask=cfg.feature_encoder.mode == "layer_norm",
            ).save_pretrained(tmp)
        _apply_umask(tmp)
        os.rename(tmp, out)  # replaces an empty out_dir; atomic on one filesystem
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _vocab_json(loaded: LoadedModel, dictionary: Dictionary) -> dict[str, int]:
    """vocab.json: our symbols at our indices (the blank, index 0, is transformers' pad)."""
    num_rows = loaded.weights["proj.weight"].shape[0]
    if num_rows != len(dictionary):
        raise ValueError(f"the model has {num_rows} outputs but the dictionary {len(dictionary)} symbols")
    taken = set(HF_SPECIALS) & set(dictionary.symbols[len(SPECIALS):])
    if taken:
        raise ValueError(f"dictionary symbol(s) {sorted(taken)} collide with the names transformers' tokenizer "
                         f"gives our specials ({', '.join(HF_SPECIALS)})")
    return {token: i for i, token in enumerate((*HF_SPECIALS, *dictionary.symbols[len(SPECIALS):]))}


def _write_tokenizer(transformers: Any, directory: Path, vocab: dict[str, int]) -> None:
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=2), encoding="utf-8")
    specials = dict(zip(("pad_token", "bos_token", "eos_token", "unk_token"), HF_SPECIALS))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(
        str(directory / "vocab.json"), **specials, word_delimiter_token=WORD_BOUNDARY, do_lower_case=False,
        clean_up_tokenization_spaces=False,  # it would glue a lone "'" to its neighbours
    )
    tokenizer.save_pretrained(directory)
    # transformers 5 no longer writes it; 4.x reads the special tokens from it.
    (directory / "special_tokens_map.json").write_text(
        json.dumps({**specials, "word_delimiter_token": WORD_BOUNDARY}, indent=2))


def _apply_umask(directory: Path) -> None:
    """Give the directory (mkdtemp: 0700) and its files the permissions a plain mkdir and
    open would: 0777 / 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for file in directory.iterdir():
        if file.is_file():
            os.chmod(file, 0o666 & ~umask)
