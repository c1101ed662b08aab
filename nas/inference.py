"""Inference API in the style of open_clip / LAVIS: one call gives a model, its image transform and its
tokenizer; `model.score` gives the ITM match probability and the ITC cosine of every (image, text) pair.

    import nas, torch
    model, preprocess, tokenizer = nas.create_model_and_transforms("runs/finetune/nas/seed0")
    images = torch.stack([preprocess(image) for image in pil_images])
    scores = model.score(images, tokenizer(["a red circle", "a blue square"]))
    scores.itm, scores.itc          # [n_images, n_texts] each, float64

`create_model_and_transforms` takes
- a run folder the pipeline wrote (`runs/pretrain_stage2/<variant>/`, `runs/finetune/<variant>/seed<k>/`):
  `config.json` (the resolved config as trained: model name, overrides, image size) and `checkpoint.pt`
  (`{"model": state_dict, ...}`), rebuilt exactly as the evaluate stage rebuilds it (`load_model` calls
  `nas.engine.run.load_run`, the run layer's one reloader, for run folders);
- a file written by `export_inference_weights` (safetensors, or a torch file `{"format": FORMAT,
  "config": ..., "model": ...}`): the weights without the momentum copies, the ITC queues and the visual
  dictionary's EMA accumulators, with the run's config embedded;
- a registered model name (`nas.models.registry.list_models()`): random init, or `pretrained=` a weights
  file (an exported file, a training checkpoint `{"model": ...}`, or a bare state dict).

Scores are exactly those of the evaluation's scorers (`nas.evaluation.model_scorers`: "itm" =
softmax(itm_logits)[:, 1], with a NAS model's visual-dictionary tokens on the image side; "itc" = cosine
of the normalised features): same preprocessing, caption cleaning (ALBEF's `pre_caption`), padding,
batching and float64 arithmetic. `pair_scorer` builds those scorers for this model, for the benchmark
runners (`nas.evaluation.probe_suite.run_probe_suite`, `nas.evaluation.benchmarks.evaluate_benchmark`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The pair scores of `model.score` (models layer; re-exported: part of this API).
from nas.models.scoring import PairScores, score_pairs  # noqa: F401

FORMAT = "nas-inference-v1"
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
_SAFETENSORS_SUFFIX = ".safetensors"
_TORCH_SUFFIXES = (".pt", ".pth", ".bin")


# ---- tokenizer ------------------------------------------------------------------------------------------


class Tokenizer:
    """Captions -> `{"input_ids", "attention_mask"}` (long [N, max_length]) as the evaluation's scorers
    tokenise them: ALBEF's `pre_caption(text, max_words)` (0: texts unchanged), the BERT WordPiece
    vocabulary (`nas.data.tokenizer.load_tokenizer`, offline), padded and truncated to `max_length`."""

    def __init__(self, max_length: int = 32, max_words: int = 30, tokenizer: Any = None) -> None:
        from nas.evaluation.model_scorers import ScorerConfig

        ScorerConfig(max_length=max_length, max_words=max_words)  # validates the knobs
        self.max_length = max_length
        self.max_words = max_words
        self._tokenizer = tokenizer

    @property
    def tokenizer(self):
        """The underlying `BertTokenizerFast` (loaded on first use: transformers takes seconds to import)."""
        if self._tokenizer is None:
            from nas.data.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer()
        return self._tokenizer

    def clean(self, texts: Sequence[str]) -> list[str]:
        from nas.data.tokenizer import pre_caption

        return [pre_caption(t, self.max_words) if self.max_words else t for t in texts]

    def __call__(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        encoded = self.tokenizer(
            self.clean(list(texts)),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def __repr__(self) -> str:
        return f"Tokenizer(max_length={self.max_length}, max_words={self.max_words})"


# ---- scoring --------------------------------------------------------------------------------------------


def pair_scorer(
    model: nn.Module,
    preprocess: Callable[[Any], torch.Tensor],
    tokenizer: Tokenizer,
    kind: str = "itm",
    *,
    batch_size: int = 64,
    name: str | None = None,
):
    """The evaluation's pair scorer of `kind` ("itm", "itc", "itm+itc") for this model, with the
    tokenizer's max_length / max_words: what `run_probe_suite` and `evaluate_benchmark` take."""
    from nas.evaluation.model_scorers import build_scorer

    return build_scorer(
        kind,
        model,
        preprocess,
        tokenizer.tokenizer,
        tokenizer.max_length,
        batch_size,
        max_words=tokenizer.max_words,
        name=name,
    )


# ---- what inference does not need -----------------------------------------------------------------------


def training_only_keys(model: nn.Module) -> list[str]:
    """State-dict keys that scoring never reads: the momentum copies (`*_m.*`, ITC targets in training),
    the ITC queues (features, ids, write pointers) and the visual dictionary's EMA accumulators
    (`ema_sums`, `step`). Kept: every online weight, ITC's temperature, the VD codebook (ITM's tokens)
    and its usage counts `ema_counts` (K numbers: `dictionary_health()` without images), NAS's
    `training_steps` (seeds the NVA draws of `negative_images`)."""
    from nas.models.visual_dictionary import VisualDictionary
    from nas.objectives.queue import FeatureQueue

    momentum = {id(m) for _, m in model.momentum_pairs()} if hasattr(model, "momentum_pairs") else set()
    prefixes: list[str] = []
    leaves: list[str] = []
    for name, module in model.named_modules():
        if id(module) in momentum or isinstance(module, FeatureQueue):
            prefixes.append(f"{name}.")
        elif isinstance(module, VisualDictionary):
            leaves += [f"{name}.ema_sums", f"{name}.step"]
    keys = model.state_dict().keys()
    return [k for k in keys if k.startswith(tuple(prefixes)) or k in leaves]


def inference_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` without `training_only_keys`, detached, contiguous, on the CPU."""
    dropped = set(training_only_keys(model))
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in dropped}


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> list[str]:
    """Load `state` into `model`: strict, except that training-only keys (`training_only_keys`) may be
    absent. When the momentum copies are absent they start as copies of the online modules (as ALBEF
    starts them), the queues keep their random init and the VD's EMA accumulators are zero: ready to
    score, not to resume training (resume from the run's `checkpoint.pt`). Returns the absent keys."""
    allowed = set(training_only_keys(model))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise RuntimeError(f"{source} does not fit {type(model).__name__}: {exc}") from exc
    missing = [k for k in result.missing_keys if k not in allowed]
    if missing or result.unexpected_keys:
        parts = []
        if missing:
            parts.append(f"missing keys {_some(missing)}")
        if result.unexpected_keys:
            parts.append(f"unexpected keys {_some(result.unexpected_keys)}")
        raise RuntimeError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))
    absent = list(result.missing_keys)
    if absent and hasattr(model, "momentum_pairs"):
        absent_set = set(absent)
        names = {id(m): n for n, m in model.named_modules()}
        with torch.no_grad():
            for online, momentum in model.momentum_pairs():
                prefix = f"{names[id(momentum)]}."
                if any(k.startswith(prefix) for k in absent_set):
                    momentum.load_state_dict(online.state_dict())
    return absent


def _some(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return f"[{shown}{f', ... ({len(keys)} in all)' if len(keys) > limit else ''}]"


# ---- reading runs and exported files --------------------------------------------------------------------


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then the JSON header."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def _read_safetensors(path: Path, *, tensors: bool = True) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """`(metadata, state_dict)` of a safetensors file (the tensors only when `tensors`)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()} if tensors else {}  # noqa: SIM118
    except Exception as exc:
        raise RuntimeError(f"{path} cannot be read as safetensors ({type(exc).__name__}: {exc})") from exc
    return metadata, state


def read_inference_file(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """`(config, state_dict)` of a file written by `export_inference_weights`; None for any other file
    (a training checkpoint, a bare state dict, other safetensors); an unreadable file is an error naming it."""
    path = Path(path)
    if _is_safetensors(path):
        metadata, _ = _read_safetensors(path, tensors=False)
        if metadata.get("format") != FORMAT:
            return None
        return _parse_config(metadata.get("config"), path), _read_safetensors(path)[1]
    from nas.engine.checkpoint import read_checkpoint

    stored = read_checkpoint(path)
    if stored.get("format") != FORMAT:
        return None
    if not isinstance(stored.get("model"), Mapping):
        raise ValueError(f"{path}: a {FORMAT} file without its 'model' state dict")
    return _parse_config(stored.get("config"), path), dict(stored["model"])


def _parse_config(raw: Any, path: Path) -> dict[str, Any]:
    config = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ValueError(f"{path}: a {FORMAT} file whose embedded config has no 'model' section")
    return config


def _build(config: dict[str, Any], where: str) -> nn.Module:
    from nas.config import from_dict
    from nas.config.stages import ModelSpec
    from nas.models.registry import create_model

    spec = from_dict(ModelSpec, config["model"], f"{where}:model")
    return create_model(spec.name, **spec.overrides)


def _load_run_checkpoint(checkpoint: Path, config_file: Path) -> tuple[nn.Module, dict[str, Any]]:
    from nas.engine.checkpoint import read_checkpoint
    from nas.engine.run import load_run

    state = read_checkpoint(checkpoint)
    if state.get("format") == FORMAT:  # an exported file put in a run folder
        config = json.loads(config_file.read_text())
        model = _build(config, str(config_file))
        load_weights(model, state["model"], checkpoint)
        return model, config
    # A run's checkpoint: the run layer's one reloader (every key, loaded strictly, as evaluation always has).
    return load_run(checkpoint, state=state)


def load_model(source: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """`(model in eval mode on device, recorded config)` of a run folder (`config.json` + `checkpoint.pt`),
    a run's checkpoint file with its `config.json` beside it, or an exported inference file."""
    path = Path(source)
    if path.is_dir():
        config_file = path / CONFIG_FILE
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} is missing: {path} is not the output of a training stage")
        model, config = _load_run_checkpoint(path / CHECKPOINT_FILE, config_file)
    elif path.is_file():
        exported = read_inference_file(path)
        if exported is not None:
            config, state = exported
            model = _build(config, f"{path} (embedded config)")
            load_weights(model, state, path)
        elif (path.parent / CONFIG_FILE).is_file():
            model, config = _load_run_checkpoint(path, path.parent / CONFIG_FILE)
        else:
            raise ValueError(
                f"{path} is neither a {FORMAT} file (export_inference_weights) nor a checkpoint with "
                f"{CONFIG_FILE} beside it; for bare weights use "
                "create_model_and_transforms(<registered name>, pretrained=...)"
            )
    else:
        raise FileNotFoundError(f"{path} does not exist (expected a run folder or an inference file)")
    return model.to(device).eval(), config


def _weights_from_file(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        what = (
            "is a directory: a run folder is passed as the first argument"
            if path.is_dir()
            else "does not exist"
        )
        raise FileNotFoundError(f"pretrained weights {path} {what}")
    if _is_safetensors(path):  # an exported file, or any safetensors state dict
        return _read_safetensors(path)[1]
    exported = read_inference_file(path)
    if exported is not None:
        return exported[1]
    from nas.engine.checkpoint import read_checkpoint

    stored = read_checkpoint(path)
    state = stored.get("model", stored)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds neither a state dict nor a checkpoint {{'model': state_dict}}")
    return state


# ---- the factory ----------------------------------------------------------------------------------------


def transforms_for(
    model: nn.Module, config: Mapping[str, Any] | None = None
) -> tuple[Callable[[Any], torch.Tensor], Tokenizer]:
    """`(preprocess, tokenizer)` of a model: the eval transform at the size it was trained at (the
    recorded `data.transform`, as the evaluate stage reads it; else the model's `vision.img_size`) and
    the tokenizer with the first configured evaluation scorer's max_length / max_words (else defaults)."""
    from nas.config import from_dict
    from nas.data.transforms import TransformConfig, build_eval_transform
    from nas.evaluation.model_scorers import ScorerConfig

    config = config or {}
    recorded = (config.get("data") or {}).get("transform") or {}
    # What the eval transform reads (size, normalisation); the training augmentations do not matter.
    knobs = {k: recorded[k] for k in ("image_size", "mean", "std") if k in recorded}
    knobs.setdefault("image_size", int(model.cfg.vision.img_size))
    transform_cfg = from_dict(TransformConfig, knobs, "data.transform")
    scorers = (config.get("evaluate") or {}).get("scorers") or [{}]
    scorer = from_dict(ScorerConfig, scorers[0], "evaluate.scorers[0]")
    return build_eval_transform(transform_cfg), Tokenizer(scorer.max_length, scorer.max_words)


def create_model_and_transforms(
    name_or_run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    pretrained: str | Path | None = None,
    **overrides: Any,
) -> tuple[nn.Module, Callable[[Any], torch.Tensor], Tokenizer]:
    """`(model, preprocess, tokenizer)`: the model in eval mode on `device` (`model.score(images,
    tokenizer(texts))`), the eval image transform (PIL image -> tensor) at its trained size, and the
    tokenizer. `name_or_run_dir`: a run folder, an exported inference file, or a registered model name
    (random init, or the weights of `pretrained=`; `**overrides` as in `create_model`)."""
    from nas.models.registry import create_model, list_models

    source = str(name_or_run_dir)
    path = Path(name_or_run_dir)
    if path.exists():
        if pretrained is not None or overrides:
            raise ValueError(
                f"{path} brings its own config and weights: pretrained= and model overrides apply only to a "
                "registered model name"
            )
        model, config = load_model(path, device)
    elif source in list_models():
        model, config = create_model(source, **overrides), None
        if pretrained is not None:
            load_weights(model, _weights_from_file(Path(pretrained)), Path(pretrained))
        model = model.to(device).eval()
    else:
        raise FileNotFoundError(
            f"{source!r} is neither an existing run folder or inference file (no such path: "
            f"{path.resolve()}) nor a registered model name {list_models()}"
        )
    if not all(hasattr(model, api) for api in ("encode_image", "encode_text", "itm_logits")):
        raise TypeError(
            f"{type(model).__name__} ({source}) has no ALBEF evaluation API (encode_image, encode_text, "
            "itm_logits): create_model_and_transforms serves the ALBEF / NAS models; use nas.create_model "
            "for the others"
        )
    preprocess, tokenizer = transforms_for(model, config)
    return model, preprocess, tokenizer


# ---- export ---------------------------------------------------------------------------------------------


def export_inference_weights(run_dir_or_checkpoint: str | Path, out_path: str | Path) -> Path:
    """Write the inference weights of a run (folder, or its checkpoint file with `config.json` beside
    it, or an exported file) to `out_path` with the run's config embedded, without what scoring never
    reads (`training_only_keys`). `*.safetensors`: safetensors (config in the metadata); `*.pt` /
    `*.pth` / `*.bin`: a torch file `{"format": FORMAT, "config": ..., "model": ...}`. Written
    atomically. The model is rebuilt and loaded first, so a run that does not load is not exported."""
    from nas.atomic import atomic_write

    out = Path(out_path)
    if out.suffix not in (_SAFETENSORS_SUFFIX, *_TORCH_SUFFIXES):
        raise ValueError(
            f"{out}: the file name must end in {_SAFETENSORS_SUFFIX} (safetensors) or one of "
            f"{list(_TORCH_SUFFIXES)} (torch)"
        )
    model, config = load_model(run_dir_or_checkpoint)
    state = inference_state_dict(model)
    if out.suffix == _SAFETENSORS_SUFFIX:
        from safetensors.torch import save

        metadata = {"format": FORMAT, "config": json.dumps(config, sort_keys=True)}
        payload = save(state, metadata=metadata)
        atomic_write(out, lambda handle: handle.write(payload))
    else:
        from nas.engine.checkpoint import atomic_save

        atomic_save({"format": FORMAT, "config": config, "model": state}, out)
    return out
