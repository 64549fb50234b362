"""Offline DPO on an exported preference file, across processes/GPUs with accelerate.

For teams that outgrow one machine: export the votes (``python app.py export --format
dpo --out prefs.jsonl``), train the same losses here with data parallelism (DDP), then
add the adapter back as a version:

    accelerate launch -m trainer.offline --data prefs.jsonl --out adapter-dir
    accelerate launch --multi_gpu --num_processes 2 -m trainer.offline ...   # 2 CPU procs
    python app.py import-adapter adapter-dir --serve

FSDP and DeepSpeed are refused (``check_distributed``): the log-probs of the response
tokens are computed from the LM head's weight directly (trainer/model/logprobs.py), and
those engines shard that weight across processes.

The reference policy is the base model with the adapter disabled, as in the app.
On a machine without a GPU, accelerate 1.x's ``--cpu`` launcher starts ONE process
(its multi-CPU mode needs MPI); ``--multi_gpu --num_processes N`` (or torchrun) starts N
processes, and this trainer then runs them on CPU with the gloo backend.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from storage import conversation
from storage.errors import ImportFailed
from storage.readers import jsonl_rows, read_text
from trainer import config as C
from trainer.model import adapters
from trainer.model.generate import format_prompt, frame_response, response_frame, turn_tail
from trainer.model.logprobs import build_batch, sequence_logps
from trainer.training.losses import needs_length_normalisation, preference_loss


def read_dpo_jsonl(path: Path) -> list[dict]:
    """Rows of TRL's DPO format: prompt/chosen/rejected as strings or message lists.

    Read with the import reader (storage/readers.py), which splits lines at ``\n`` only:
    texts may hold U+2028, U+2029 or U+0085, which JSON leaves unescaped.
    """
    try:
        parsed = jsonl_rows(path.name, read_text(path))
    except ImportFailed as e:
        raise ValueError(f"{path}" + (f":{e.line}" if e.line else "") + f": {e.problem}"
                         ) from None
    rows = []
    for n, r in parsed:
        try:
            row = {k: _text(r[k], k) for k in ("prompt", "chosen", "rejected")}
            row.update({k: r.get(k) for k in ("template", "chosen_end", "rejected_end")})
            rows.append(row)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}:{n}: not a DPO row with prompt/chosen/rejected ({e})"
                             ) from e
    if not rows:
        raise ValueError(f"{path}: no rows; export some with `python app.py export "
                         "--format dpo --out FILE`")
    return rows


def _text(value, key: str) -> str:
    """A prompt (a conversation's stored text: storage/conversation.py) or an answer."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and key == "prompt":
        return conversation.encode(value)
    if isinstance(value, list):  # conversational answer: the assistant's text
        return "\n".join(m["content"] for m in value if m.get("role") == "assistant")
    raise ValueError(f"{key} must be a string or a list of messages")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="trainer.offline", description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path, help="TRL DPO JSONL file")
    ap.add_argument("--out", required=True, type=Path, help="adapter directory to write")
    ap.add_argument("--model", default=C.DEFAULT_MODEL)
    ap.add_argument("--cache-dir", default=C.default_cache_dir())
    ap.add_argument("--template", default="auto", choices=("auto", "chat", "plain"))
    t = C.TrainConfig()
    for name in ("loss", "beta", "label_smoothing", "lr", "epochs", "micro_batch",
                 "grad_accum", "max_length", "seed", "max_grad_norm"):
        ap.add_argument("--" + name.replace("_", "-"), dest=name, default=getattr(t, name),
                        type=type(getattr(t, name)), help=C.help_of(C.TrainConfig, name))
    m = C.ModelConfig()
    for name in ("lora_r", "lora_alpha", "lora_dropout"):
        ap.add_argument("--" + name.replace("_", "-"), dest=name, default=getattr(m, name),
                        type=type(getattr(m, name)), help=C.help_of(C.ModelConfig, name))
    args = ap.parse_args(argv)
    if args.loss == "kto":
        ap.error("--loss kto needs unpaired data; use a paired loss (sigmoid, ipo, ...)")
    return args


class SequenceLogps(torch.nn.Module):
    """The policy as a module whose forward returns per-sequence log-probs, so DDP/FSDP
    wrap the whole computation (their gradient hooks need their own forward called)."""

    def __init__(self, peft_model) -> None:
        super().__init__()
        self.inner = peft_model

    def forward(self, input_ids, attention_mask, response_mask):
        return sequence_logps(self.inner, input_ids, attention_mask, response_mask)


def _logps(module, tok, prompts, texts, max_length, device):
    enc = {k: v.to(device) for k, v in
           build_batch(tok, prompts, texts, max_length, tok.pad_token_id).items()}
    return module(enc["input_ids"], enc["attention_mask"], enc["response_mask"])


SHARDED = {"FSDP", "DEEPSPEED", "MEGATRON_LM"}


def check_distributed(kind: str) -> None:
    """Refuse accelerate setups that shard the model's weights (``kind`` is accelerate's
    ``DistributedType`` value): only replicated data parallelism (DDP) is supported."""
    if str(kind).upper() in SHARDED:
        raise SystemExit(
            f"trainer.offline does not support accelerate's {kind} mode: it reads the LM "
            "head's weight directly, which that mode shards across processes. Use data "
            "parallelism instead: `accelerate launch --multi_gpu --num_processes N -m "
            "trainer.offline ...` (or `accelerate config` without FSDP/DeepSpeed).")


def main(argv=None) -> None:
    from accelerate import Accelerator
    from peft import get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file

    from trainer.model.policy import _lora_config, load_base, resolve_placement

    args = parse_args(argv)
    # Without a GPU, processes started by a multi-process launcher (accelerate launch
    # --multi_gpu, torchrun) train on CPU over gloo.
    acc = Accelerator(gradient_accumulation_steps=args.grad_accum,
                      cpu=not torch.cuda.is_available())
    check_distributed(acc.distributed_type.value)
    torch.manual_seed(args.seed)
    mcfg = C.ModelConfig(model=args.model, cache_dir=args.cache_dir, quantize="none",
                         device="cuda" if acc.device.type == "cuda" else "cpu",
                         lora_r=args.lora_r, lora_alpha=args.lora_alpha,
                         lora_dropout=args.lora_dropout)
    with acc.main_process_first():  # converts the default model once
        tok, base = load_base(mcfg, resolve_placement(mcfg))
    model = SequenceLogps(get_peft_model(base, _lora_config(mcfg)))
    rows = read_dpo_jsonl(args.data)
    frame, tail = response_frame(tok, args.template), turn_tail(tok, args.template)
    for r in rows:
        if r["template"] == "plain":  # exported already framed as the app scored them
            continue
        r["prompt"] = format_prompt(tok, r["prompt"], args.template)
        for k in ("chosen", "rejected"):  # scored as the app scores them
            r[k] = frame_response(r[k], frame, r[f"{k}_end"], tail)
    loader = torch.utils.data.DataLoader(rows, batch_size=args.micro_batch, shuffle=True,
                                         collate_fn=lambda b: b)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    model, opt, loader = acc.prepare(model, opt, loader)
    norm = needs_length_normalisation(args.loss)
    t0, seen, step = time.perf_counter(), 0, 0
    for _epoch in range(args.epochs):
        for batch in loader:
            prompts = [r["prompt"] for r in batch] * 2
            texts = [r["chosen"] for r in batch] + [r["rejected"] for r in batch]
            inner = acc.unwrap_model(model)
            with torch.no_grad(), inner.inner.disable_adapter():
                ref, ref_n = _logps(inner, tok, prompts, texts, args.max_length, acc.device)
            with acc.accumulate(model):
                pol, n = _logps(model, tok, prompts, texts, args.max_length, acc.device)
                if norm:
                    pol, ref = pol / n.clamp(min=1), ref / ref_n.clamp(min=1)
                b = len(batch)
                losses, cr, rr = preference_loss(args.loss, pol[:b], pol[b:], ref[:b], ref[b:],
                                                 args.beta, args.label_smoothing)
                loss = losses.mean()
                if not math.isfinite(loss.item()):
                    raise RuntimeError(f"non-finite loss; lower --lr (now {args.lr})")
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    step += 1
                opt.step()
                opt.zero_grad()
            seen += len(batch)
            if acc.is_main_process and acc.sync_gradients:
                print(json.dumps({"step": step, "loss": round(loss.item(), 4),
                                  "margin": round((cr - rr).mean().item(), 4)}), flush=True)
    acc.wait_for_everyone()
    if acc.is_main_process:
        inner = acc.unwrap_model(model).inner
        state = {k: v.detach().to("cpu", torch.float32).contiguous()
                 for k, v in get_peft_model_state_dict(inner).items()}
        meta = {"source": "trainer.offline", "data": str(args.data), "loss": args.loss,
                "beta": args.beta, "epochs": args.epochs, "rows": len(rows),
                "processes": acc.num_processes, "seconds": round(time.perf_counter() - t0, 1)}

        def write(d: Path) -> None:
            save_file(state, str(d / "adapter_model.safetensors"))
            inner.peft_config["default"].save_pretrained(str(d))
            (d / "metadata.json").write_text(json.dumps(meta, indent=2))

        out = adapters.write_version(args.out.parent.resolve(), args.out.name, write)
        print(json.dumps({"adapter": str(out), **meta}), flush=True)


if __name__ == "__main__":
    main()
