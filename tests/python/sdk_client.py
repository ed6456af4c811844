"""Drives tollgate with the official OpenAI Python SDK, as a customer would.

Usage: sdk_client.py HOST KEY. Prints one JSON object: for each case, the text the SDK
assembled, the usage it saw and the request id tollgate answered with.
"""

import json
import sys

import openai
from openai import OpenAI

host, key = sys.argv[1], sys.argv[2]
MESSAGES = [{"role": "user", "content": "你是谁"}]
KNOBS = {"x_sim": {"prompt_tokens": 22, "completion_tokens": 18}}


def client(base_url):
    return OpenAI(base_url=base_url, api_key=key, max_retries=0)


def non_streamed(base_url, model):
    raw = client(base_url).chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, extra_body=KNOBS
    )
    completion = raw.parse()
    return {
        "request_id": raw.headers["x-request-id"],
        "text": completion.choices[0].message.content,
        "usage": completion.usage.model_dump() if completion.usage else None,
    }


def streamed(base_url, model, include_usage=False):
    kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = client(base_url).chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, stream=True, extra_body=KNOBS, **kwargs
    )
    text, usage, chunks = "", None, 0
    for chunk in raw.parse():
        chunks += 1
        if chunk.usage:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            text += choice.delta.content or ""
    return {"request_id": raw.headers["x-request-id"], "text": text, "usage": usage, "chunks": chunks}


def error_case(base_url, model, fault, stream):
    try:
        response = client(base_url).chat.completions.create(
            model=model, messages=MESSAGES, stream=stream, extra_body={"x_sim": {"fault": fault, "chunks": 4}}
        )
        if stream:
            for _ in response:
                pass
    except openai.APIStatusError as e:
        return {"raised": type(e).__name__, "status": e.status_code, "message": e.message}
    except openai.APIError as e:
        return {"raised": type(e).__name__, "status": None, "message": e.message}
    return {"raised": None}


def models(base_url):
    return sorted(m.id for m in client(base_url).models.list().data)


results = {
    "v1_plain": non_streamed(f"http://{host}/v1/", "megrez-7b-instruct"),
    "maas_v1_stream": streamed(f"http://{host}/maas/v1/", "megrez-7b-instruct"),
    "mxn_bare_json_stream": streamed(f"http://{host}/maas/megrez-7b-instruct/chip3/", "megrez-7b-instruct"),
    "mxn_plain": non_streamed(f"http://{host}/maas/megrez-7b-instruct/nvidia/", "megrez-7b-instruct"),
    "usage_asked": streamed(f"http://{host}/maas/megrez-7b-instruct/amd/", "megrez-7b-instruct", include_usage=True),
    "inband_error": error_case(f"http://{host}/v1/", "megrez-7b-instruct", "inband_error", True),
    "backend_401": error_case(f"http://{host}/maas/megrez-7b-instruct/nvidia/", "x", "genstudio_401", False),
    "models": models(f"http://{host}/v1/"),
}
print(json.dumps(results, ensure_ascii=False))
