"""Model backends behind one small interface: `generate(conversations, sampling) -> texts`.

- `TransformersBackend`: a local model, batched with left padding through the chat template.
- `OpenAIBackend`: any OpenAI-compatible /v1/chat/completions server (vLLM, SGLang, hosted APIs).
  The API key is read from an environment variable and never written anywhere.

Both return, for each conversation, a list of `sampling.n` completions.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

__all__ = ["Sampling", "TransformersBackend", "OpenAIBackend", "make_backend", "BackendError"]

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 512
    n: int = 1
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return asdict(self)


class BackendError(RuntimeError):
    pass


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut]


class TransformersBackend:
    """Batched local generation. Prompts are sorted by length so a batch pads little."""

    def __init__(self, model: str, batch_size: int = 32, dtype: str = "auto", progress: bool = True):
        from .models import load_model, load_tokenizer

        self.name = model
        self.tokenizer = load_tokenizer(model, padding_side="left")
        self.model = load_model(model, dtype=dtype)
        self.batch_size = batch_size
        self.progress = progress
        self.generated_tokens = 0

    def render(self, conversation: Messages) -> str:
        return self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)

    def generate(self, conversations: list[Messages], sampling: Sampling, desc: str = "generate") -> list[list[str]]:
        import torch
        from tqdm.auto import tqdm

        texts = [self.render(c) for c in conversations]
        lengths = [len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        results: list[list[str]] = [[] for _ in texts]
        device = self.model.device
        bar = tqdm(total=len(texts), desc=desc, unit="prompt", disable=not self.progress)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            kwargs = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                          num_return_sequences=sampling.n)
            if sampling.temperature > 0:
                kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if sampling.stop:
                kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
            # Seed per batch from the run seed and the batch position: reruns draw the same samples.
            torch.manual_seed(sampling.seed + start)
            with torch.inference_mode():
                out = self.model.generate(**enc, **kwargs)
            gen = out[:, enc["input_ids"].shape[1] :]
            self.generated_tokens += int((gen != self.tokenizer.pad_token_id).sum())
            decoded = self.tokenizer.batch_decode(gen, skip_special_tokens=True)
            for j, i in enumerate(idx):
                chunk = decoded[j * sampling.n : (j + 1) * sampling.n]
                results[i] = [_cut_at_stop(t, sampling.stop).strip() for t in chunk]
            bar.update(len(idx))
        bar.close()
        return results


class OpenAIBackend:
    """OpenAI-compatible chat completions over HTTP, with a pool of concurrent requests.

    Uses the standard library's HTTP client on purpose: no SDK is needed to talk to vLLM or a
    hosted API, and the request is exactly the documented JSON.
    """

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout: float = 600.0, progress: bool = True):
        self.name = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.api_key_env = api_key_env  # the variable's name; the key itself is read per request
        self.concurrency = concurrency
        self.timeout = timeout
        self.progress = progress
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}

    def _post(self, payload: dict) -> dict:
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        key = os.environ.get(self.api_key_env)
        if key:
            # Unredirected: urllib would otherwise send the key on to wherever a redirect points.
            req.add_unredirected_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise BackendError(f"{self.base_url}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
            raise BackendError(f"{self.base_url}: {exc}") from None
        try:
            data = json.loads(body)
            return data
        except ValueError:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not text
            raise BackendError(f"{self.base_url}: reply is not JSON: {body[:200]!r}") from None

    def _one(self, conversation: Messages, sampling: Sampling) -> tuple[list[str], dict]:
        payload = {"model": self.name, "messages": conversation, "max_tokens": sampling.max_new_tokens,
                   "temperature": sampling.temperature, "top_p": sampling.top_p, "n": sampling.n, "seed": sampling.seed}
        if sampling.stop:
            payload["stop"] = list(sampling.stop)
        data = self._post(payload)
        try:
            texts = [choice["message"]["content"] or "" for choice in data["choices"]]
        except (KeyError, TypeError):
            texts = []
        if not texts:
            raise BackendError(f"{self.base_url}: reply has no choices[].message.content: {str(data)[:200]}")
        return texts, data.get("usage") or {}

    def generate(self, conversations: list[Messages], sampling: Sampling, desc: str = "generate") -> list[list[str]]:
        from tqdm.auto import tqdm

        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = [pool.submit(self._one, c, sampling) for c in conversations]
            try:
                replies = [f.result() for f in tqdm(futures, desc=desc, unit="request", disable=not self.progress)]
            except BaseException:
                # Without this the pool would still send (and a hosted API bill) every queued request.
                for f in futures:
                    f.cancel()
                raise
        # Summed here, in one thread: `+=` on a shared dict from the workers can lose updates.
        for _, usage in replies:
            for key in self.usage:
                self.usage[key] += int(usage.get(key) or 0)
        return [texts for texts, _ in replies]


def make_backend(model: str, backend: str = "auto", **options):
    """`backend` is "transformers", "openai" or "auto" (openai when a base_url is given)."""
    if backend == "auto":
        backend = "openai" if options.get("base_url") else "transformers"
    if backend == "transformers":
        allowed = {"batch_size", "dtype", "progress"}
        return TransformersBackend(model, **{k: v for k, v in options.items() if k in allowed and v is not None})
    if backend == "openai":
        allowed = {"base_url", "api_key_env", "concurrency", "timeout", "progress"}
        return OpenAIBackend(model, **{k: v for k, v in options.items() if k in allowed and v is not None})
    raise ValueError(f"unknown backend {backend!r}; use transformers or openai")
