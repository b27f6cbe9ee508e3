"""Model backends behind one small interface: `generate(conversations, sampling) -> texts`.

- `TransformersBackend`: a local model, continuously batched (generation.py) through the chat template.
- `VLLMBackend`: vLLM in the same process, for GPUs (`critkit[vllm]`).
- `OpenAIBackend`: any OpenAI-compatible /v1/chat/completions server (vLLM, SGLang, hosted APIs).
  The API key is read from an environment variable and never written anywhere. Each request is
  retried on 429, 5xx, timeouts, broken connections, garbled replies and replies without an
  answer (exponential backoff with full jitter, honouring Retry-After), and requests-per-minute /
  tokens-per-minute limits are kept by token buckets.

Both return, for each conversation, a list of `sampling.n` completions. `generate` raises on the
first request that fails for good; `generate_each` never raises for one request: it reports a
`Reply` (texts and token usage, or an error string) per conversation, as each one finishes, which
is what a long synthesis job or evaluation needs to keep going and to record failures.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

__all__ = ["Sampling", "TransformersBackend", "VLLMBackend", "OpenAIBackend", "make_backend", "BackendError", "Reply", "RateLimiter",
           "vllm_sampling", "vllm_lora_rank", "vllm_prompt_errors", "vllm_reply"]

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


class TransientError(BackendError):
    """A failure worth another try: 408/409/429/5xx, a timeout, a broken connection, a garbled body."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Reply:
    """What one conversation got: `texts` (sampling.n completions) or an `error`, never both."""

    texts: list[str] | None = None
    usage: dict = field(default_factory=dict)  # prompt_tokens / completion_tokens as the server counted them
    error: str | None = None
    tries: int = 1
    waited: float = 0.0  # seconds spent backing off between tries
    finish_reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


OnResult = Callable[[int, Reply], None]


class RateLimiter:
    """A token bucket: `rate_per_minute` units per minute, at most one minute's worth saved up.

    Providers count their limits per minute, so a full minute's budget may go out at once; after
    that units come back continuously. A single request larger than the bucket is let through
    when the bucket is full (otherwise it could never pass) and leaves the bucket in debt.
    `clock` and `sleep` are parameters so the arithmetic can be checked without waiting.
    """

    def __init__(self, rate_per_minute: float, clock=time.monotonic, sleep=time.sleep):
        if rate_per_minute <= 0:
            raise ValueError("a rate limit must be positive")
        self.capacity = float(rate_per_minute)
        self.per_second = rate_per_minute / 60.0
        self.clock, self.sleep = clock, sleep
        self.level = self.capacity
        self.stamp = clock()
        self.lock = threading.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.per_second)
        self.stamp = now

    def acquire(self, amount: float = 1.0) -> float:
        """Take `amount` units, sleeping until they are there; returns the seconds slept."""
        slept = 0.0
        while True:
            with self.lock:
                self._refill()
                need = min(amount, self.capacity)
                if self.level >= need:
                    self.level -= amount
                    return slept
                wait_for = (need - self.level) / self.per_second
            self.sleep(wait_for)  # outside the lock: other threads may refund meanwhile
            slept += wait_for

    def refund(self, amount: float) -> None:
        """Give back (or, negative, charge) units once the true cost of a request is known."""
        with self.lock:
            self._refill()
            self.level = min(self.capacity, self.level + amount)


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i >= 0:
            cut = min(cut, i)
    return text[:cut]


def render_chat(tokenizer, conversation: Messages) -> str:
    """The prompt text a chat model reads: its own chat template, the assistant turn opened."""
    return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


def chat_ids(tokenizer, conversation: Messages) -> list[int]:
    """Token ids of `render_chat` (the template already holds the special tokens, so none are added)."""
    return tokenizer(render_chat(tokenizer, conversation), add_special_tokens=False)["input_ids"]


class TransformersBackend:
    """Local generation with continuous batching (generation.py): `batch_size` rows decode together.

    Prompts start longest first. A prompt that fails on its own (say, longer than the model's
    positions) becomes an error reply and the others go on.
    """

    def __init__(self, model: str, batch_size: int = 32, dtype: str = "auto", progress: bool = True,
                 stop_at_answer: bool = False, kv_cache_gib: float | None = None):
        from .end_tokens import end_token_ids
        from .generation import prepack_cpu_linears
        from .models import load_model, load_tokenizer
        from .slot_cache import register

        self.name = model
        # Evaluation can end each answer right after its first complete \boxed{}: what follows is
        # never graded. Off by default, because format-drift counts read the whole output.
        self.stop_at_answer = stop_at_answer
        self.tokenizer = load_tokenizer(model, padding_side="left")
        self.model = load_model(model, dtype=dtype, attn_implementation=register())
        prepack_cpu_linears(self.model)
        # Found once here rather than in every decode call (rendering a template takes 10-200 ms).
        self.end_ids = end_token_ids(self.tokenizer, self.model.generation_config.eos_token_id,
                                     self.model.config.get_text_config().eos_token_id)
        self.batch_size = batch_size
        # The decoder's key/value cache bound (generation.py): null sizes it from free memory.
        self.kv_cache_bytes = int(kv_cache_gib * 1024 ** 3) if kv_cache_gib else None
        self.progress = progress
        self.generated_tokens = 0

    def render(self, conversation: Messages) -> str:
        return render_chat(self.tokenizer, conversation)

    def close(self) -> None:
        """Free the model's memory now (the next phase of a run may need the GPU, or vLLM all of it)."""
        from .models import release_memory

        self.model = None
        release_memory()

    def _each(self, conversations: list[Messages], sampling: Sampling, on_result: OnResult, desc: str) -> None:
        """Generate for every conversation; `on_result(i, reply)` as each one ends."""
        from tqdm.auto import tqdm

        from .generation import decode

        if self.model is None:
            raise BackendError(f"{self.name}: this backend was closed")
        prompts = [chat_ids(self.tokenizer, c) for c in conversations]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # long ones start early
        bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not self.progress)

        def done(j: int, outs: list[list[int]]) -> None:
            i = order[j]
            tokens = sum(len(o) for o in outs)
            self.generated_tokens += tokens
            full = self.tokenizer.batch_decode(outs, skip_special_tokens=True)
            cut = [_cut_at_stop(t, sampling.stop) for t in full]
            # OpenAI's meaning: "length" when the token limit ended it, "stop" for an end token or a
            # stop string (decode keeps neither an end token nor anything after a stop string's end).
            reasons = ["length" if len(o) >= sampling.max_new_tokens and c == t else "stop"
                       for o, c, t in zip(outs, cut, full)]
            on_result(i, Reply(texts=[c.strip() for c in cut], finish_reasons=reasons,
                               usage={"prompt_tokens": len(prompts[i]), "completion_tokens": tokens}))
            bar.update()

        def failed(j: int, exc: Exception) -> None:
            on_result(order[j], Reply(error=f"{type(exc).__name__}: {exc}"))
            bar.update()

        try:
            decode(self.model, self.tokenizer, [prompts[i] for i in order], sampling.max_new_tokens, rows=self.batch_size,
                   samples=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed,
                   stop=tuple(sampling.stop), stop_at_answer=self.stop_at_answer, on_done=done, on_error=failed,
                   end_ids=self.end_ids, cache_bytes=self.kv_cache_bytes)
        finally:
            bar.close()

    def generate(self, conversations: list[Messages], sampling: Sampling, desc: str = "generate") -> list[list[str]]:
        results: list[list[str] | None] = [None] * len(conversations)

        def record(i: int, reply: Reply) -> None:
            if not reply.ok:
                raise BackendError(f"prompt {i}: {reply.error}")
            results[i] = reply.texts

        self._each(conversations, sampling, record, desc)
        return results

    def generate_each(self, conversations: list[Messages], sampling: Sampling, on_result: OnResult | None = None,
                      desc: str = "generate") -> list[Reply]:
        """Like `generate`, but failures become error replies instead of an exception.

        Token usage is counted with the model's own tokenizer (prompt as rendered by the chat
        template; completion tokens as generated, end-of-turn excluded). If decoding itself fails
        (out of memory, say), every prompt not yet finished gets that error.
        """
        replies: list[Reply | None] = [None] * len(conversations)

        def record(i: int, reply: Reply) -> None:
            replies[i] = reply
            if on_result:
                on_result(i, reply)

        try:
            self._each(conversations, sampling, record, desc)
        except Exception as exc:  # noqa: BLE001 - reported per prompt; the finished ones are kept
            for i, reply in enumerate(replies):
                if reply is None:
                    record(i, Reply(error=f"{type(exc).__name__}: {exc}"))
        return replies


class VLLMBackend:
    """In-process vLLM for CUDA GPUs (`pip install 'critkit[vllm]'`): paged attention, continuous
    batching and tensor parallelism for 7B-70B models.

    Prompts are rendered by the model's chat template here, exactly as `TransformersBackend` does,
    and handed to vLLM as token ids, so both backends read the same tokens. A LoRA adapter folder
    runs on its base model through vLLM's LoRA support, without merging. `stop_at_answer` is not
    needed at vLLM's speed and is ignored.

    Where vLLM refuses what the transformers backend accepts, the request is shaped first (the
    rules are those of vLLM's sources, cited at each helper): greedy sampling with n > 1 asks for
    one completion and repeats it (`vllm_sampling`); a prompt vLLM would refuse for its length
    fails alone instead of failing the whole batch (`vllm_prompt_errors`); an adapter's rank is
    rounded up to a max_lora_rank vLLM accepts (`vllm_lora_rank`). Those helpers are tested here;
    vLLM itself is not installed in this repository's tests (CPU only).
    """

    def __init__(self, model: str, dtype: str = "auto", progress: bool = True, tensor_parallel_size: int | None = None,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None):
        try:
            import vllm
        except ImportError as exc:
            raise BackendError("backend 'vllm' needs vLLM and a CUDA GPU: pip install 'critkit[vllm]' "
                               "(or serve the model with `vllm serve` and use the openai backend)") from exc
        from .end_tokens import configured_eos_ids, end_token_ids
        from .models import load_tokenizer, resolve_model

        self.name = model
        self.progress = progress
        self.tokenizer = load_tokenizer(model)
        path = Path(resolve_model(model))
        self._lora = None
        options = {"dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization, "seed": 0}
        if tensor_parallel_size:
            options["tensor_parallel_size"] = tensor_parallel_size
        if max_model_len:
            options["max_model_len"] = max_model_len
        adapter = path / "adapter_config.json"
        if adapter.exists():
            from vllm.lora.request import LoRARequest

            config = json.loads(adapter.read_text())
            options.update(enable_lora=True, max_lora_rank=vllm_lora_rank(int(config.get("r", 16))))
            self._lora = LoRARequest("critkit-adapter", 1, str(path))
            path = Path(resolve_model(config["base_model_name_or_path"]))
        self._vllm = vllm
        self.llm = vllm.LLM(model=str(path), **options)
        engine = self.llm.llm_engine
        # The context vLLM settled on (the config's max_model_len, or the model's own, or what fits).
        self.max_model_len = int((getattr(engine, "model_config", None) or engine.vllm_config.model_config).max_model_len)
        # vLLM stops on the EOS fields only; a Qwen2.5 base model's say <|endoftext|> while the chat
        # template closes turns with <|im_end|> (see end_tokens.py), so the turn's end is added.
        self.end_ids = end_token_ids(self.tokenizer, *configured_eos_ids(str(path)))
        self.generated_tokens = 0

    def render(self, conversation: Messages) -> str:
        return render_chat(self.tokenizer, conversation)

    def generate_each(self, conversations: list[Messages], sampling: Sampling, on_result: OnResult | None = None,
                      desc: str = "generate") -> list[Reply]:
        if self.llm is None:
            raise BackendError(f"{self.name}: this backend was closed")
        prompts = [chat_ids(self.tokenizer, c) for c in conversations]
        replies: list[Reply | None] = [None] * len(prompts)
        for i, error in vllm_prompt_errors([len(p) for p in prompts], self.max_model_len).items():
            replies[i] = Reply(error=error)
        send = [i for i, reply in enumerate(replies) if reply is None]
        params = self._vllm.SamplingParams(**vllm_sampling(sampling, self.end_ids))
        try:
            outputs = self.llm.generate([{"prompt_token_ids": prompts[i]} for i in send], params,
                                        use_tqdm=self.progress, lora_request=self._lora) if send else []
        except Exception as exc:  # noqa: BLE001 - one engine call for the prompts sent: each gets the error
            for i in send:
                replies[i] = Reply(error=f"{type(exc).__name__}: {exc}")
        else:
            for i, output in zip(send, outputs):
                completions = [(c.text, len(c.token_ids), str(c.finish_reason)) for c in output.outputs]
                replies[i] = vllm_reply(len(prompts[i]), completions, sampling.n)
                self.generated_tokens += replies[i].usage["completion_tokens"]
        for i, reply in enumerate(replies):
            if on_result:
                on_result(i, reply)
        return replies

    def generate(self, conversations: list[Messages], sampling: Sampling, desc: str = "generate") -> list[list[str]]:
        replies = self.generate_each(conversations, sampling, desc=desc)
        failed = next((r for r in replies if not r.ok), None)
        if failed:
            raise BackendError(failed.error)
        return [r.texts for r in replies]

    def close(self) -> None:
        """Free the GPU, so that the next model of a run can load (vLLM's own start-up check refuses
        to start while another engine's memory is still held).

        Dropping the LLM object is not enough: vLLM's V1 engine runs in its own process (the
        engine core), which holds the weights and the KV cache until it is shut down, and the
        front end's objects sit in reference cycles.
        """
        from .models import release_memory

        llm, self.llm = self.llm, None
        if llm is None:
            return
        shutdown = getattr(llm, "shutdown", None)  # LLM.shutdown(), in vLLM releases that have it
        if callable(shutdown):
            shutdown()
        else:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None:
                core.shutdown()  # stops the engine-core process (V1), or the in-process core's executor
        try:  # tensor-parallel groups, which a later engine would otherwise find already set up
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception:  # noqa: BLE001 - these moved between vLLM releases; the engine itself is down
            pass
        del llm
        release_memory()


# vLLM's accepted max_lora_rank values: `MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]`
# in vllm/config/lora.py. Any other value fails LoRAConfig's validation inside LLM().
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_rank(r: int) -> int:
    """The max_lora_rank to start vLLM with for an adapter of rank `r`: the smallest it accepts that
    holds r (r = 24 gives 32; `max(16, r)` gave 24, which LLM() refuses)."""
    for rank in VLLM_LORA_RANKS:
        if rank >= r:
            return rank
    raise BackendError(f"LoRA rank {r} is over vLLM's largest max_lora_rank ({VLLM_LORA_RANKS[-1]}): "
                       f"evaluate the merged model instead (train.merge_adapter)")


def vllm_prompt_errors(lengths: list[int], max_model_len: int) -> dict[int, str]:
    """{index: reason} for the prompts vLLM would refuse for their length, checked before the
    engine sees them: `LLM.generate` adds its requests one by one and, at the first refused one,
    aborts those it added and raises, so one long prompt would fail the whole batch.

    vLLM's InputProcessor._validate_prompt_len refuses a decoder prompt longer than max_model_len,
    and one of exactly max_model_len tokens for generation (no room for one output token). A
    prompt that fits but leaves less room than max_tokens is accepted and stops at max_model_len
    (finish reason "length"), as the transformers backend's stop at the model's positions does.
    """
    return {i: f"prompt of {n:,} tokens leaves no room for an answer within vLLM's max_model_len of {max_model_len:,} "
               f"(raise eval.max_model_len, or shorten the prompt)"
            for i, n in enumerate(lengths) if n >= max_model_len}


def vllm_reply(prompt_tokens: int, completions: list[tuple[str, int, str]], n: int) -> Reply:
    """A Reply from vLLM's completions (text, generated tokens, finish reason) for one prompt.

    Greedy requests ask vLLM for one completion (`vllm_sampling`); it stands for all n, as the n
    identical greedy completions the transformers backend returns. Usage counts the tokens vLLM
    generated.
    """
    generated = sum(tokens for _, tokens, _ in completions)
    if len(completions) == 1 and n > 1:
        completions = completions * n
    return Reply(texts=[text.strip() for text, _, _ in completions], finish_reasons=[reason for _, _, reason in completions],
                 usage={"prompt_tokens": prompt_tokens, "completion_tokens": generated})


def vllm_sampling(sampling: Sampling, end_ids=()) -> dict:
    """vLLM's SamplingParams for critkit's Sampling (greedy when temperature is 0).

    `end_ids` (end_tokens.end_token_ids) become `stop_token_ids`: vLLM ends a sequence there and,
    like critkit's decoder, leaves the token out of the text. Greedy asks for one completion
    whatever n is: vLLM's SamplingParams._verify_greedy_sampling raises "n must be 1 when using
    greedy sampling", and n greedy completions are the same one (`vllm_reply` repeats it).
    """
    greedy = sampling.temperature <= 0
    return {"n": 1 if greedy else sampling.n, "temperature": sampling.temperature,
            "top_p": 1.0 if greedy else sampling.top_p, "max_tokens": sampling.max_new_tokens,
            "stop": list(sampling.stop), "seed": sampling.seed, "stop_token_ids": sorted(end_ids)}


class OpenAIBackend:
    """OpenAI-compatible chat completions over HTTP, with a pool of concurrent requests.

    Uses the standard library's HTTP client on purpose: no SDK is needed to talk to vLLM or a
    hosted API, and the request is exactly the documented JSON.

    Each request is tried up to `max_tries` times. Between tries it waits a random time between 0
    and `backoff * 2**(try-1)` seconds, capped at `backoff_max` ("full jitter": many clients that
    failed together do not come back together), or what the server's Retry-After asks for, up to
    `max_retry_after`. The defaults follow the OpenAI Python SDK (2 retries, 0.5 s to 8 s).
    `timeout` applies to connecting and to each read of one request. `rpm` / `tpm` keep requests
    and tokens per minute under a provider's limits; a request's tokens are estimated before it is
    sent (prompt characters / 4 + max_tokens * n) and corrected from the reply's usage.
    """

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout: float = 600.0, progress: bool = True, max_tries: int = 3,
                 backoff: float = 0.5, backoff_max: float = 8.0, max_retry_after: float = 60.0,
                 rpm: float | None = None, tpm: float | None = None, clock=time.monotonic, sleep=time.sleep):
        if max_tries < 1 or concurrency < 1:
            raise ValueError("max_tries and concurrency must be at least 1")
        self.name = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.api_key_env = api_key_env  # the variable's name; the key itself is read per request
        self.concurrency = concurrency
        self.timeout = timeout
        self.progress = progress
        self.max_tries = max_tries
        self.backoff, self.backoff_max, self.max_retry_after = backoff, backoff_max, max_retry_after
        # `clock` and `sleep` are parameters so tests can check every wait without waiting.
        self._sleep = sleep
        self.rpm = RateLimiter(rpm, clock, sleep) if rpm else None
        self.tpm = RateLimiter(tpm, clock, sleep) if tpm else None
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self._random = random.Random()

    # ------------------------------------------------------------------------- one HTTP exchange

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
            try:
                detail = exc.read()[:300].decode("utf-8", "replace")
            except (http.client.HTTPException, OSError):
                detail = ""
            message = f"{self.base_url}: HTTP {exc.code}: {detail}"
            # 408 timeout, 409 conflict (OpenAI uses it for lock contention), 429 rate limit, 5xx.
            if exc.code in (408, 409, 429) or exc.code >= 500:
                raise TransientError(message, _retry_after(exc.headers)) from None
            raise BackendError(message) from None
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as exc:
            # Refused or reset connections, timeouts, a reply cut short (IncompleteRead), not HTTP.
            raise TransientError(f"{self.base_url}: {type(exc).__name__}: {exc}") from None
        try:
            return json.loads(body)
        except ValueError:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not text
            # A body garbled on the way (proxy, truncation) is worth another try; a server that
            # always answers HTML still ends after max_tries with this message.
            raise TransientError(f"{self.base_url}: reply is not JSON: {body[:200]!r}") from None

    def _payload(self, conversation: Messages, sampling: Sampling) -> dict:
        # Greedy asks for one completion whatever n is, as vllm_sampling does: a vLLM or SGLang
        # server refuses n > 1 at temperature 0 ("n must be 1 when using greedy sampling"), and
        # n greedy completions are the same one (_request repeats it).
        n = 1 if sampling.temperature <= 0 else sampling.n
        payload = {"model": self.name, "messages": conversation, "max_tokens": sampling.max_new_tokens,
                   "temperature": sampling.temperature, "top_p": sampling.top_p, "n": n, "seed": sampling.seed}
        if sampling.stop:
            payload["stop"] = list(sampling.stop)
        return payload

    def _parse(self, data) -> tuple[list[str], dict, list[str]]:
        try:
            choices = data["choices"]
            texts = [choice["message"]["content"] or "" for choice in choices]
            reasons = [str(choice.get("finish_reason") or "") for choice in choices]
        except (KeyError, TypeError, AttributeError):
            texts, reasons = [], []
        if not texts:
            # A 200 without an answer (an empty `choices`, an error object, a body of another shape)
            # comes from an overloaded or misbehaving server as often as a 5xx does: tried again.
            raise TransientError(f"{self.base_url}: reply has no choices[].message.content: {str(data)[:200]}")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return texts, usage, reasons

    def _request(self, conversation: Messages, sampling: Sampling) -> Reply:
        """One conversation, with retries; never raises for a failed request (see Reply.error)."""
        payload = self._payload(conversation, sampling)
        estimate = sum(len(m.get("content") or "") for m in conversation) / 4 + sampling.max_new_tokens * payload["n"]
        waited = 0.0
        for tries in range(1, self.max_tries + 1):
            if self.rpm:
                waited += self.rpm.acquire(1)
            if self.tpm:
                waited += self.tpm.acquire(estimate)
            try:
                texts, usage, reasons = self._parse(self._post(payload))
            except TransientError as exc:
                if tries == self.max_tries:
                    return Reply(error=f"{exc} (gave up after {tries} tries)", tries=tries, waited=waited)
                delay = self._delay(tries, exc.retry_after)
                self._sleep(delay)
                waited += delay
                continue
            except BackendError as exc:  # the server answered, and the answer will not change
                return Reply(error=str(exc), tries=tries, waited=waited)
            if self.tpm:
                spent = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
                if spent:
                    self.tpm.refund(estimate - spent)
            if payload["n"] == 1 and sampling.n > 1 and len(texts) == 1:  # greedy: the one completion, n times
                texts, reasons = texts * sampling.n, reasons * sampling.n
            return Reply(texts=texts, usage=usage, tries=tries, waited=waited, finish_reasons=reasons)
        raise AssertionError("unreachable")

    def _delay(self, tries: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return self._random.uniform(0, min(self.backoff_max, self.backoff * 2 ** (tries - 1)))

    # ------------------------------------------------------------------------------- many requests

    def _each(self, conversations: list[Messages], sampling: Sampling, on_result: OnResult, stop_on_error: bool) -> None:
        """Run requests with `concurrency` in flight; `on_result` is called in this thread.

        Only a window of 2 x concurrency requests is queued at a time, so a million conversations
        do not become a million futures, and stopping early leaves nothing queued to send.
        """
        pending = iter(enumerate(conversations))
        window = 2 * self.concurrency
        with ThreadPoolExecutor(self.concurrency) as pool:
            running: dict = {}

            def top_up():
                for i, conv in pending:
                    running[pool.submit(self._request, conv, sampling)] = i
                    if len(running) >= window:
                        break

            try:
                top_up()
                while running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        i = running.pop(future)
                        reply = future.result()
                        # Summed here, in one thread: `+=` on a shared dict from the workers can lose updates.
                        for key in self.usage:
                            self.usage[key] += int(reply.usage.get(key) or 0)
                        on_result(i, reply)
                        if stop_on_error and not reply.ok:
                            raise BackendError(reply.error)
                    top_up()
            except BaseException:
                # Without this the pool would still send (and a hosted API bill) every queued request.
                for future in running:
                    future.cancel()
                raise

    def generate_each(self, conversations: list[Messages], sampling: Sampling, on_result: OnResult | None = None,
                      desc: str | None = None) -> list[Reply]:
        """A Reply per conversation; `on_result(index, reply)` as each finishes, in completion order.

        With a `desc` (evaluation gives one) a progress bar counts the requests; without one there
        is none, because a synthesis stage draws its own over the records.
        """
        from tqdm.auto import tqdm

        replies: list[Reply | None] = [None] * len(conversations)
        with tqdm(total=len(conversations), desc=desc, unit="request", disable=not self.progress or desc is None) as bar:
            def record(i: int, reply: Reply) -> None:
                replies[i] = reply
                bar.update(1)
                if on_result:
                    on_result(i, reply)

            self._each(conversations, sampling, record, stop_on_error=False)
        return replies

    def generate(self, conversations: list[Messages], sampling: Sampling, desc: str = "generate") -> list[list[str]]:
        """All completions, or BackendError for the first request that failed after its retries."""
        from tqdm.auto import tqdm

        results: list[list[str]] = [[] for _ in conversations]
        with tqdm(total=len(conversations), desc=desc, unit="request", disable=not self.progress) as bar:
            def record(i: int, reply: Reply) -> None:
                if reply.ok:
                    results[i] = reply.texts
                bar.update(1)

            self._each(conversations, sampling, record, stop_on_error=True)
        return results


def _retry_after(headers) -> float | None:
    """Seconds a server asks us to wait: `retry-after-ms` (OpenAI), `Retry-After` seconds or date."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def make_backend(model: str, backend: str = "auto", **options):
    """`backend` is "transformers", "vllm", "openai" or "auto" (openai when a base_url is given)."""
    if backend == "auto":
        backend = "openai" if options.get("base_url") else "transformers"
    if backend == "transformers":
        allowed = {"batch_size", "dtype", "progress", "stop_at_answer", "kv_cache_gib"}
        return TransformersBackend(model, **{k: v for k, v in options.items() if k in allowed and v is not None})
    if backend == "vllm":
        allowed = {"dtype", "progress", "tensor_parallel_size", "gpu_memory_utilization", "max_model_len"}
        return VLLMBackend(model, **{k: v for k, v in options.items() if k in allowed and v is not None})
    if backend == "openai":
        allowed = {"base_url", "api_key_env", "concurrency", "timeout", "progress", "max_tries", "backoff",
                   "backoff_max", "max_retry_after", "rpm", "tpm"}
        return OpenAIBackend(model, **{k: v for k, v in options.items() if k in allowed and v is not None})
    raise ValueError(f"unknown backend {backend!r}; use transformers, vllm or openai")
