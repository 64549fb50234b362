"""The policy: one base model with LoRA adapters, behind one priority lock.

Adapter names inside the PEFT model:
  - ``draft``: the adapter being optimised in the current round (always present; it
    becomes the next version when the round is accepted);
  - ``v1``, ``v2``, ...: saved versions loaded for serving, arena opponents or as the
    sDPO reference. ``base`` is not an adapter: it means adapters disabled.

The reference policy is the base model with adapters disabled (or a previous version):
never a second copy of the model. Every use of the model goes through ``self.lock``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.config import ModelConfig
from trainer.model.locks import PriorityLock
from trainer.model.modelcache import ModelNotFound, resolve_model
from trainer.progress import Progress

log = logging.getLogger(__name__)

TRAIN = "draft"
BASE = "base"


@dataclass(frozen=True)
class Placement:
    """Where and how the base weights live, resolved from 'auto' settings."""

    device: str  # cpu | cuda
    quantize: str  # 4bit | none
    dtype: torch.dtype  # compute dtype: fp32 on CPU (no fast bf16 here), bf16 on CUDA


def uses_checkpointing(cfg: ModelConfig, placement: Placement) -> bool:
    """Whether training recomputes activations (``--checkpointing``; auto: 4-bit CUDA)."""
    if cfg.checkpointing == "auto":
        return placement.quantize == "4bit" and placement.device == "cuda"
    return cfg.checkpointing == "on"


def resolve_placement(cfg: ModelConfig) -> Placement:
    has_cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not has_cuda:
        raise ValueError("--device cuda: no CUDA GPU is visible to torch. Use --device cpu "
                         "(or auto), or install a CUDA build of torch.")
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and has_cuda) else "cpu"
    quantize = cfg.quantize if cfg.quantize != "auto" else ("4bit" if device == "cuda" else "none")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return Placement(device, quantize, dtype)


def _lora_config(cfg: ModelConfig):
    from peft import LoraConfig

    targets = "all-linear" if cfg.lora_targets == "all-linear" else [
        t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")


def load_base(cfg: ModelConfig, placement: Placement, progress: Progress | None = None):
    """Load tokenizer and base model (4-bit NF4 with double quantisation when asked)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    source = resolve_model(cfg.model, cfg.cache_dir, progress)
    kwargs: dict = {"dtype": placement.dtype}
    if placement.quantize == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=placement.dtype)
        kwargs["device_map"] = {"": placement.device}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:
        raise ModelNotFound(
            f"--model {cfg.model!r}: could not load it from {source!r} ({e}). Without network "
            "access, point --model at a local Hugging Face model directory, or use the "
            "embedded default 'gemma-3-270m'.") from e
    if placement.quantize != "4bit":
        model.to(placement.device)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model


class Policy:
    """Base model + LoRA adapters; the one owner of the model (see module docstring)."""

    def __init__(self, model, tokenizer, cfg: ModelConfig, placement: Placement) -> None:
        self.model = model  # a peft PeftModel with the draft adapter
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.placement = placement
        self.lock = PriorityLock()
        # Held while the serving version changes AND that change is recorded (a round's
        # hot-swap, an admin's rollback), so the two can never interleave: the model and
        # the database always agree on what serves. Taken before ``lock``, never inside.
        self.switching = threading.RLock()
        self.serving = BASE
        self._paths: dict[str, str] = {}  # loaded version -> adapter dir

    @classmethod
    def load(cls, cfg: ModelConfig, progress: Progress | None = None) -> Policy:
        from peft import get_peft_model, prepare_model_for_kbit_training

        placement = resolve_placement(cfg)
        tokenizer, base = load_base(cfg, placement, progress)
        checkpointing = uses_checkpointing(cfg, placement)
        # Non-reentrant checkpointing: gradients reach the adapter without making the
        # inputs require grad, and only layers in train mode recompute (sampling is untouched).
        non_reentrant = {"use_reentrant": False}
        if placement.quantize == "4bit":
            base = prepare_model_for_kbit_training(
                base, use_gradient_checkpointing=checkpointing,
                gradient_checkpointing_kwargs=non_reentrant)
        elif checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=non_reentrant)
        torch.manual_seed(0)
        model = get_peft_model(base, _lora_config(cfg), adapter_name=TRAIN)
        model.eval()
        return cls(model, tokenizer, cfg, placement)

    @property
    def device(self) -> str:
        return self.placement.device

    @property
    def loaded_versions(self) -> list[str]:
        return sorted(self._paths)

    # --- adapters -----------------------------------------------------------------
    def load_version(self, version: str, path: str | Path) -> None:
        """Load a saved adapter version (frozen) unless it is already in memory."""
        if version == BASE or version in self._paths:
            return
        with self.lock.hold(priority=True):
            self.model.load_adapter(str(path), adapter_name=version, is_trainable=False)
            self._paths[version] = str(path)

    def swap(self, version: str, path: str | Path | None = None) -> None:
        """Make ``version`` the serving adapter (hot-swap, base model untouched)."""
        if version != BASE:
            if path is None and version not in self._paths:
                raise ValueError(f"adapter {version!r} is not loaded; pass its directory")
            self.load_version(version, path or self._paths[version])
        with self.lock.hold(priority=True):
            self.serving = version

    def keep_only(self, versions: set[str]) -> None:
        """Delete loaded adapter versions not in ``versions`` (serving is always kept)."""
        with self.lock.hold():
            for v in list(self._paths):
                if v not in versions and v != self.serving:
                    self.model.delete_adapter(v)
                    del self._paths[v]

    @contextmanager
    def active(self, version: str, train: bool = False) -> Iterator[None]:
        """Run the model as ``version`` (base, draft or a loaded vN). Hold the lock."""
        if version not in (BASE, TRAIN) and version not in self._paths:
            raise ValueError(f"adapter {version!r} is not loaded (loaded: {self._paths})")
        self.model.train(train)
        try:
            if version == BASE:
                with self.model.disable_adapter():
                    yield
            else:
                self.model.set_adapter(version, inference_mode=version != TRAIN)
                yield
        finally:
            self.model.eval()

    def train_parameters(self) -> list[torch.nn.Parameter]:
        """The trainable tensors of the draft adapter."""
        return [p for n, p in self.model.named_parameters() if f".{TRAIN}." in n]

    def reset_train_adapter(self, start_from: str) -> None:
        """Start the draft adapter from a loaded version's weights, or fresh for 'base'."""
        with self.lock.hold():
            for module in self.model.modules():
                if not hasattr(module, "lora_A") or TRAIN not in module.lora_A:
                    continue
                if start_from == BASE:
                    module.reset_lora_parameters(TRAIN, True)
                else:
                    for part in ("lora_A", "lora_B"):
                        src = getattr(module, part)[start_from].weight
                        getattr(module, part)[TRAIN].weight.data.copy_(src.data)
            for p in self.train_parameters():
                p.requires_grad_(True)

    def save_train_adapter(self, out_dir: Path, metadata: dict) -> None:
        """Write the draft adapter (safetensors + adapter config + metadata.json)."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        with self.lock.hold():
            state = get_peft_model_state_dict(self.model, adapter_name=TRAIN)
            state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
            config = self.model.peft_config[TRAIN]
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out_dir / "adapter_model.safetensors"))
        config.save_pretrained(str(out_dir))
        (out_dir / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True))
