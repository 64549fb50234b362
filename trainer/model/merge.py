"""A standalone model to ship: a LoRA adapter version merged into its base weights.

vLLM, TGI, llama.cpp and Ollama serve a plain Hugging Face checkpoint, not a base model
plus an adapter. ``merge_version`` loads the base as the app does (``policy.load_base``),
applies the adapter version, folds each LoRA update into its weight (W + (alpha / r) B A,
``peft``'s ``merge_and_unload``) and saves the result with the tokenizer, its chat
template, and a model card (README.md). A 4-bit NF4 base (on a GPU) is first
de-quantised to bf16, layer by layer, so the merged weights are the ones that served
(within bf16 rounding); a full-precision base keeps its dtype (fp32 on a CPU). The
checkpoint is written to a temp dir beside ``out_dir`` and renamed into place: a kill at
any moment leaves either no checkpoint or a complete one.

This loads a second copy of the base for as long as the export runs (the serving model
is never modified): about 1.1 GB for the default Gemma 3 270M in fp32.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from storage.files import publish_dir, staged_dir
from trainer.config import ModelConfig
from trainer.progress import NullProgress, Progress

CARD_NAME = "README.md"
MARKER = "livedpo-export.json"


def dequantize_4bit_layers(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace every bitsandbytes ``Linear4bit`` in ``model`` by a plain ``nn.Linear`` with
    its de-quantised weight in ``dtype``. Returns how many layers were replaced."""
    import bitsandbytes as bnb

    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, bnb.nn.Linear4bit):
                continue
            w = bnb.functional.dequantize_4bit(child.weight.data, child.weight.quant_state)
            plain = torch.nn.Linear(child.in_features, child.out_features,
                                    bias=child.bias is not None, dtype=dtype, device=w.device)
            with torch.no_grad():
                plain.weight.copy_(w.reshape(child.out_features, child.in_features).to(dtype))
                if child.bias is not None:
                    plain.bias.copy_(child.bias.to(dtype))
            setattr(parent, name, plain)
            n += 1
    return n


def _plain(model, dtype: torch.dtype) -> None:
    """Make a de-quantised model an ordinary one, in ``dtype``, that saves without any
    quantisation config."""
    torch.nn.Module.to(model, dtype)  # transformers' own .to refuses a bitsandbytes model
    model.hf_quantizer = None
    for flag in ("is_loaded_in_4bit", "is_quantized"):
        if hasattr(model, flag):
            setattr(model, flag, False)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.dtype = dtype


def _check_base(cfg: ModelConfig, adapter_dir: Path) -> None:
    """Refuse to merge an adapter into another base than the one it was trained on."""
    from trainer.model.modelcache import resolve_model

    trained_on = json.loads((adapter_dir / "adapter_config.json").read_text()).get(
        "base_model_name_or_path")
    source = resolve_model(cfg.model, cfg.cache_dir)
    if trained_on and Path(trained_on).is_dir() and Path(source).is_dir() and (
            Path(trained_on).resolve() != Path(source).resolve()):
        raise ValueError(f"--model {cfg.model!r} ({source}) is not the base this adapter was "
                         f"trained on ({trained_on}); pass the model the app ran with, e.g. "
                         f"--model {trained_on}")


def merge_version(cfg: ModelConfig, adapter_dir: Path, out_dir: Path, card: str,
                  progress: Progress | None = None) -> Path:
    """Write base + adapter merged as a standalone checkpoint at ``out_dir`` (which must
    not exist yet), with ``card`` as its README.md. Returns ``out_dir``."""
    from peft import PeftModel

    from trainer.model.policy import load_base, resolve_placement

    progress = progress or NullProgress()
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"--out {out_dir} already exists; choose a new directory (the "
                              "export never overwrites one)")
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no adapter (adapter_config.json)")
    _check_base(cfg, Path(adapter_dir))
    t0 = time.perf_counter()
    steps = 4
    progress.update(0, steps, "Export: loading the base model")
    placement = resolve_placement(cfg)
    tokenizer, model = load_base(cfg, placement, progress)
    dtype = placement.dtype
    if placement.quantize == "4bit":
        progress.update(1, steps, "Export: de-quantising the 4-bit base to bf16")
        dtype = torch.bfloat16
        dequantize_4bit_layers(model, dtype)
        _plain(model, dtype)
    progress.update(2, steps, "Export: merging the adapter into the weights")
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.eval()
    progress.update(3, steps, "Export: writing safetensors")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(out_dir.parent, f".{out_dir.name}.") as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / CARD_NAME).write_text(card, encoding="utf-8")
        (tmp / MARKER).write_text(json.dumps(
            {"adapter": str(Path(adapter_dir).resolve()), "dtype": str(dtype),
             "seconds": round(time.perf_counter() - t0, 1)}) + "\n")
        publish_dir(tmp, out_dir)
    progress.update(4, steps, f"Export: written to {out_dir}")
    return out_dir
