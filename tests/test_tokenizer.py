"""The offline Hugging Face CLIP tokenizer must give exactly open_clip's token ids."""

from __future__ import annotations

import open_clip
import pytest

from lifelong_diffusion.tokenizer import CONTEXT_LENGTH, build_clip_tokenizer

PROMPTS = [
    "a photo of a red star on a gray background",
    "Hello, World!! How's it going?",
    "I have 3 cats, 12,345 dogs and 0.5 birds",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "CAPITALS and MiXeD CaSe Words",
    "it's a dog's life; yes: no? (maybe) [sure] {ok} -- #1 @home",
    "a rendering of a striped-star, in the style of van Gogh",
]

SOT, EOT = 49406, 49407


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer()


@pytest.fixture(scope="module")
def reference():
    return open_clip.get_tokenizer("ViT-B-32")


def _open_clip_ids(reference, prompt: str) -> list[int]:
    """open_clip's ids up to and including the end-of-text token (it pads with 0 after)."""
    ids = reference([prompt])[0].tolist()
    return ids[: ids.index(EOT) + 1]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_equal_open_clip(tokenizer, reference, prompt):
    ours = tokenizer(prompt).input_ids
    expected = _open_clip_ids(reference, prompt)
    assert ours == expected
    assert ours[0] == SOT and ours[-1] == EOT
    assert len(ours) > 3  # a real tokenization, not the 3-token failure mode


def test_padded_ids_equal_open_clip_up_to_eot(tokenizer, reference):
    """As SD pipelines call it: padded to 77; HF pads with EOT, open_clip with 0."""
    batch = tokenizer(PROMPTS, padding="max_length", max_length=CONTEXT_LENGTH,
                      truncation=True).input_ids
    for prompt, ids in zip(PROMPTS, batch):
        assert len(ids) == CONTEXT_LENGTH
        expected = _open_clip_ids(reference, prompt)
        assert ids[: len(expected)] == expected
        assert set(ids[len(expected):]) <= {EOT}


def test_long_prompt_truncated_like_open_clip(tokenizer, reference):
    prompt = " ".join(f"word{i}" for i in range(100))
    ours = tokenizer(prompt, truncation=True, max_length=CONTEXT_LENGTH).input_ids
    assert len(ours) == CONTEXT_LENGTH
    assert ours == reference([prompt])[0].tolist()


def test_vocabulary_size_and_context(tokenizer):
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77 == CONTEXT_LENGTH
    assert tokenizer.bos_token_id == SOT
    assert tokenizer.eos_token_id == EOT
    assert tokenizer.convert_ids_to_tokens([320, 1125]) == ["a</w>", "photo</w>"]


def test_added_token_is_one_new_id():
    tokenizer = build_clip_tokenizer()  # fresh: add_tokens mutates the tokenizer
    before = len(tokenizer)
    assert tokenizer.add_tokens(["<c1>"]) == 1
    assert len(tokenizer) == before + 1
    ids = tokenizer("a photo of <c1> star").input_ids
    plain = tokenizer("a photo of star").input_ids
    assert ids.count(before) == 1
    assert ids == plain[:4] + [before] + plain[4:]
    assert tokenizer.convert_tokens_to_ids("<c1>") == before
