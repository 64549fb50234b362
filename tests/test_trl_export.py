"""The DPO export trains in TRL on the tokens the app trains on (real chat model).

TRL's DPOTrainer (a dev dependency) runs one step on an export sampled from the embedded
chat model with a system prompt and a multi-turn conversation; then the token ids it
trained on are compared with the app's (``Store.training_pairs``: the sampled ids).

- The prompt ids are equal: the same chat template, the same turns, the same system
  prompt.
- An answer that ended its turn is equal too: the app trains on the sampled ids and the
  template's turn tail after the end-of-turn marker (SmolLM2: one "\\n"), which is how
  TRL renders a finished assistant turn.
- An answer cut at the token limit starts with exactly the app's ids, and TRL then adds
  an end of turn the model never wrote: TRL's conversational format has no way to say
  "cut", and the export marks it (``chosen_end`` / ``rejected_end`` = "").
"""

import json

import pytest

from tests.svc_fixtures import vote_all

pytestmark = [pytest.mark.smollm2, pytest.mark.slow]
NAME = "smollm2-135m-instruct"


def test_trl_trains_on_the_apps_tokens(tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from app.cli import build_parser, resolve
    from app.commands import make_service
    from storage import conversation
    from storage.io import export
    from trainer.pool import PlannedPair
    from trainer.training.data import paired_examples

    args = build_parser().parse_args(
        ["serve", "--data-dir", str(tmp_path / "data"), "--model", NAME, "--max-new-tokens",
         "48", "--ready-pairs", "4", "--batch-prompts", "4", "--system-prompt",
         "Answer briefly."])
    svc = make_service(resolve(args), terminal_progress=False)
    svc.start(background=False, pool=False, trainer=False)
    try:
        talk = conversation.encode([{"role": "user", "content": "Name a fruit."},
                                    {"role": "assistant", "content": "Apple."},
                                    {"role": "user", "content": "Another one?"}])
        pid = svc.store.add_prompt(talk, source="import")
        svc.pool.produce([PlannedPair(pid, talk, False)], None)
        svc.pool.fill_once(3)
        assert vote_all(svc) == 4
        out = tmp_path / "dpo.jsonl"
        export(svc.store, "dpo", out)
        app_rows = svc.store.training_pairs()
        tok = svc.policy.tokenizer
        examples = paired_examples(app_rows, svc.sampler.format, svc.sampler.scored)
    finally:
        svc.stop()
    rows = [json.loads(x) for x in out.read_text().split("\n") if x]
    assert all(r["template"] == "chat" and isinstance(r["prompt"], list) for r in rows)
    assert any(len(r["prompt"]) == 4 for r in rows)  # system + 3 turns of the conversation

    model = AutoModelForCausalLM.from_pretrained(svc.policy.cfg.cache_dir
                                                 + "/smollm2-135m-instruct-hf")
    trainer = DPOTrainer(
        model=model, processing_class=tok,
        train_dataset=load_dataset("json", data_files=str(out), split="train"),
        args=DPOConfig(output_dir=str(tmp_path / "trl"), max_steps=1,
                       per_device_train_batch_size=2, report_to=[], use_cpu=True,
                       save_strategy="no"))
    trainer.train()
    assert trainer.state.global_step == 1

    turn_end = tok.convert_tokens_to_ids("<|im_end|>")
    separator = tok("\n", add_special_tokens=False)["input_ids"]  # after <|im_end|>
    trl_rows = list(trainer.train_dataset)
    assert len(trl_rows) == len(app_rows) == len(rows)
    ended = 0
    for app, example, trl in zip(app_rows, examples, trl_rows):
        assert list(trl["prompt_ids"]) == list(example.prompt)
        for k in ("chosen", "rejected"):
            mine = list(getattr(example, k))  # what a round trains on
            theirs = list(trl[f"{k}_ids"])
            if app[f"{k}_end"] == "<|im_end|>":
                assert mine[-len(separator) - 1:] == [turn_end, *separator], k
                assert theirs == mine, k  # the exact ids the app trains on
                ended += 1
            else:  # cut: TRL closes the turn the model did not finish
                assert app[f"{k}_end"] == "" and theirs == [*mine, turn_end, *separator], k
    assert ended
