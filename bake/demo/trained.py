"""A small Qwen3 trained on a synthetic chat corpus, so that its logits are peaked like a trained model's.

Random-weight models have nearly flat logits: top-1 agreement and KL against the hooked model
then say little about an export (a tiny logit error flips the argmax of a flat distribution). The
budgets ``verify`` applies to lossy exports (int4, int8, float16) are calibrated on this model
instead (``scripts/calibrate_budgets.py``). Everything is offline and seeded: the corpus is
generated (chat-templated arithmetic, algebra, primes, code and the built-in sentences), and
training runs on one CPU thread with deterministic algorithms.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from bake.demo.assets import _CORPUS, TinyQwen3Spec, build_tiny_qwen3


def chat_corpus(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``n`` short chats in the style of verify's built-in prompts, with their answers."""
    rng = random.Random(seed)
    primes = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37]
    chats = []
    for _ in range(n):
        a, b, x = rng.randint(2, 60), rng.randint(2, 60), rng.randint(1, 9)
        kind = rng.randrange(5)
        if kind == 0:
            q, ans = f"What is {a} + {b}?", f"{a} + {b} = {a + b}."
        elif kind == 1:
            q = f"Solve for x: {a}x + {b} = {a * x + b}. Show each step."
            ans = f"Subtract {b}: {a}x = {a * x}. Divide by {a}: x = {x}."
        elif kind == 2:
            k = rng.randint(2, 5)
            picked = primes[x:x + k]
            q, ans = f"List {k} prime numbers.", f"{', '.join(map(str, picked))}: each has exactly two divisors."
        elif kind == 3:
            q, ans = f"def add(a, b): return a + b -- what does add({a}, {b}) return?", f"It returns {a + b}."
        else:
            q, ans = rng.choice(_CORPUS), rng.choice(_CORPUS)
        chats.append([{"role": "user", "content": q}, {"role": "assistant", "content": ans}])
    return chats


def build_trained_qwen3(out_dir: Path, spec: TinyQwen3Spec | None = None, steps: int = 300, batch: int = 16,
                        seq_len: int = 96, lr: float = 3e-3, seed: int = 0, as_replies: bool = False) -> dict[str, float]:
    """Build ``spec``'s random Qwen3 in ``out_dir``, train it in place on ``chat_corpus``; return the losses.

    ``as_replies``: each chat is the prompt as a reply is asked for (generation prompt, thinking off: the empty
    think block) then the answer and the end of turn, so that the model answers prompts rendered that way."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    build_tiny_qwen3(out_dir, spec or TinyQwen3Spec())
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    ids: list[int] = []
    for chat in chat_corpus(4000, seed):
        if as_replies:
            text = tokenizer.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True,
                                                 enable_thinking=False) + chat[1]["content"] + "<|im_end|>\n"
        else:
            text = tokenizer.apply_chat_template(chat, tokenize=False, enable_thinking=False)
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
    stream = torch.tensor(ids)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        g = torch.Generator().manual_seed(seed)
        losses = []
        for step in range(steps):
            starts = torch.randint(0, stream.numel() - seq_len - 1, (batch,), generator=g)
            x = torch.stack([stream[s:s + seq_len] for s in starts.tolist()])
            for group in opt.param_groups:  # linear decay to 10 %
                group["lr"] = lr * (1 - 0.9 * step / steps)
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        model.eval()
        model.save_pretrained(str(out_dir))
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    return {"first_loss": losses[0], "final_loss": sum(losses[-20:]) / 20}
