"""The TextEncoder deployment under concurrent requests: prompts are batched, and every caller gets
the embeddings of its own prompt."""

from __future__ import annotations

import pytest
import torch

from skyreels import DEFAULT_NEGATIVE_PROMPT, Task
from skyreels.models import TINY, resolve_model
from skyreels.stages.text import TextEncoderStage

pytestmark = pytest.mark.slow


def test_concurrent_encodes_get_their_own_embeddings(serve_app) -> None:
    from ray import serve

    handle = serve.get_deployment_handle("TextEncoder", app_name=serve_app.name)
    prompts = [f"scene {i}: a lighthouse in a storm, {'wide shot' if i % 2 else 'close-up'}" for i in range(12)]
    negatives = [DEFAULT_NEGATIVE_PROMPT if i % 3 else None for i in range(12)]
    responses = [handle.encode.remote(p, n) for p, n in zip(prompts, negatives, strict=True)]
    results = [response.result(timeout_s=120) for response in responses]

    reference = TextEncoderStage.from_pretrained(resolve_model(TINY, Task.T2V).base)
    for prompt, negative, conditioning in zip(prompts, negatives, results, strict=True):
        expected = reference.encode(prompt, negative)
        assert torch.allclose(conditioning.positive.embeds, expected.positive.embeds, rtol=0, atol=1e-5)
        assert torch.allclose(conditioning.positive.pooled, expected.positive.pooled, rtol=0, atol=1e-5)
        assert torch.equal(conditioning.positive.mask, expected.positive.mask.float())
        if negative is None:
            assert conditioning.negative is None
        else:
            assert torch.allclose(conditioning.negative.embeds, expected.negative.embeds, rtol=0, atol=1e-5)
