#!/usr/bin/env python3
"""Talks to a HearthNet node's OpenAI-compatible endpoints with the official
`openai` client: lists models, embeds, chats (whole and streamed).

Usage: openai_check.py BASE_URL   (e.g. http://127.0.0.1:7080/v1)
Exits non-zero with a message on any mismatch.
"""
import math
import sys

from openai import OpenAI

LLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBED = "sentence-transformers/all-MiniLM-L6-v2"


def fail(msg):
    print(f"openai_check: FAIL: {msg}")
    sys.exit(1)


client = OpenAI(base_url=sys.argv[1], api_key="unused-on-loopback")

ids = {m.id for m in client.models.list().data}
for want in (LLM, EMBED):
    if want not in ids:
        fail(f"{want} not in /v1/models {sorted(ids)}")

emb = client.embeddings.create(model=EMBED, input=["a cat", "a kitten", "stock prices"])
vecs = [d.embedding for d in emb.data]
if len(vecs) != 3 or len(vecs[0]) != 384:
    fail(f"embeddings: {len(vecs)} vectors of {len(vecs[0]) if vecs else 0}")
cos = lambda a, b: sum(x * y for x, y in zip(a, b))
if not cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2]):
    fail("cat is not closer to kitten than to stock prices")
if abs(math.sqrt(cos(vecs[0], vecs[0])) - 1) > 1e-3:
    fail("vectors are not normalised")

question = [{"role": "user", "content": "What is the capital of France?"}]
r = client.chat.completions.create(model=LLM, messages=question, temperature=0, max_tokens=24)
text = r.choices[0].message.content
if "Paris" not in text:
    fail(f"chat answered {text!r}")
if r.choices[0].finish_reason not in ("stop", "length"):
    fail(f"finish_reason {r.choices[0].finish_reason!r}")

parts, finish = [], None
for chunk in client.chat.completions.create(
    model=LLM, messages=question, temperature=0, max_tokens=24, stream=True
):
    choice = chunk.choices[0]
    if choice.delta.content:
        parts.append(choice.delta.content)
    if choice.finish_reason:
        finish = choice.finish_reason
if "Paris" not in "".join(parts) or len(parts) < 2 or finish is None:
    fail(f"stream gave {parts!r}, finish {finish!r}")

try:
    client.chat.completions.create(model="no-such-model", messages=question)
    fail("an unknown model was answered")
except Exception as e:  # openai.NotFoundError
    if "not_found" not in str(e) and "404" not in str(e):
        fail(f"unknown model: {e}")

print(f"openai_check: ok ({len(parts)} streamed chunks, answer {text!r})")
