"""Generate with lm-evaluation-harness's Hugging Face backend (run in a venv that has lm-eval).

Reads {"model", "prompts", "max_new_tokens", "batch_size", "until"} as JSON on stdin, writes
{"outputs", "seconds"} as JSON on stdout. The prompts are already rendered with the chat
template, so both engines see exactly the same text.
"""

import json
import sys
import time

from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

job = json.load(sys.stdin)
lm = HFLM(pretrained=job["model"], batch_size=job["batch_size"], dtype="float32", device="cpu")
gen_kwargs = {"until": job["until"], "max_gen_toks": job["max_new_tokens"], "do_sample": False}
requests = [Instance(request_type="generate_until", doc={}, arguments=(p, gen_kwargs), idx=i) for i, p in enumerate(job["prompts"])]
start = time.perf_counter()
outputs = lm.generate_until(requests, disable_tqdm=True)
json.dump({"outputs": outputs, "seconds": time.perf_counter() - start}, sys.stdout)
