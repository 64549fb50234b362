"""Prompts that are conversations: checking, storing, rendering, importing, showing."""

import json

import pytest

from app.views import pair_markdown, prompt_markdown
from storage import conversation as conv
from storage.errors import ImportFailed
from storage.io import read_prompts
from trainer.model.generate import format_prompt

TALK = [{"role": "system", "content": "Answer like a pirate."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Ahoy."},
        {"role": "user", "content": "Where is the treasure?"}]


def test_a_conversation_round_trips_through_its_stored_text():
    text = conv.encode(TALK)
    assert conv.is_conversation(text) and conv.messages_of(text) == TALK
    assert conv.last_user(text) == "Where is the treasure?"
    assert conv.context(text) == TALK[:-1]
    assert conv.encode([{"role": "user", "content": " Just one turn "}]) == "Just one turn"
    assert conv.messages_of("plain", "Be brief.") == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "plain"}]
    assert conv.messages_of(text, "ignored: it has its own")[0] == TALK[0]


@pytest.mark.parametrize("messages, problem", [
    ([], "non-empty list"),
    ([{"role": "user"}], 'with "role" and "content"'),
    ([{"role": "tool", "content": "x"}], "role 'tool'"),
    ([{"role": "user", "content": "  "}], "non-empty text"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
     "end with a user message"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
     "message 2 is 'user' where 'assistant' belongs"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
     "message 2 is 'system'"),
])
def test_bad_conversations_are_refused_with_the_fix(messages, problem):
    with pytest.raises(conv.BadConversation, match=problem):
        conv.encode(messages)


def test_plain_rendering_of_a_conversation_for_a_base_model(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert format_prompt(tok, "What is 2+2?") == "Question: What is 2+2?\nAnswer:"
    assert format_prompt(tok, conv.encode(TALK)) == (
        "Answer like a pirate.\n\nQuestion: Hi!\nAnswer: Ahoy.\n"
        "Question: Where is the treasure?\nAnswer:")
    assert format_prompt(tok, "Hi", system_prompt="Be brief.") == (
        "Be brief.\n\nQuestion: Hi\nAnswer:")


def test_chat_template_gets_every_turn_and_the_project_system_prompt(tiny_chat_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    assert format_prompt(tok, conv.encode(TALK)) == (
        "<|system|>Answer like a pirate.<|end|><|user|>Hi!<|end|><|assistant|>Ahoy.<|end|>"
        "<|user|>Where is the treasure?<|end|><|assistant|>")
    assert format_prompt(tok, "Hi", system_prompt="Be brief.") == (
        "<|system|>Be brief.<|end|><|user|>Hi<|end|><|assistant|>")


def test_import_prompts_reads_message_lists(tmp_path):
    good = tmp_path / "talks.jsonl"
    good.write_text("\n".join([json.dumps({"messages": TALK}), json.dumps({"prompt": "plain"}),
                               json.dumps({"prompt": TALK[1:2]})]) + "\n", encoding="utf-8")
    assert read_prompts(good) == [conv.encode(TALK), "plain", "Hi!"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": TALK[:3]}) + "\n", encoding="utf-8")
    with pytest.raises(ImportFailed, match=r"bad\.jsonl.*line 1.*end with a user message"):
        read_prompts(bad)


def test_annotators_see_the_context_collapsed_above_the_last_turn():
    shown = prompt_markdown({"prompt": conv.encode(TALK)})
    assert shown.startswith('<details class="ldpo-context"><summary>Conversation so far: '
                            "system prompt and 2 earlier turns</summary>")
    assert "**Assistant:** Ahoy." in shown and shown.endswith("Where is the treasure?")
    plain = {"prompt": "Hi <script>x</script>", "gen_config": {"system_prompt": "Be brief."}}
    shown = prompt_markdown(plain)
    assert "system prompt</summary>" in shown and "**System:** Be brief." in shown
    assert "<script>" not in shown  # still escaped
    assert prompt_markdown({"prompt": "Hi"}) == "Hi"
    head, _, _ = pair_markdown({"id": 3, "prompt": conv.encode(TALK), "response_a": "a",
                                "response_b": "b"})
    assert head.startswith("**Prompt** (pair 3)") and "ldpo-context" in head


def test_system_prompt_from_a_file_or_a_clear_error(tmp_path):
    from app.cli import build_parser, resolve

    def system(*argv):
        return resolve(build_parser().parse_args(["serve", *argv]))["SamplingConfig"]

    f = tmp_path / "system.txt"
    f.write_text("You are terse.\n", encoding="utf-8")
    assert system("--system-prompt", f"@{f}").system_prompt == "You are terse."
    assert system("--system-prompt", "Be kind.").system_prompt == "Be kind."
    assert system().system_prompt == ""
    with pytest.raises(ValueError, match=r"--system-prompt @.*nope\.txt: cannot read it"):
        system("--system-prompt", f"@{tmp_path / 'nope.txt'}")
