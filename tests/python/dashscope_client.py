"""Drives tollgate with the official DashScope Python SDK, as a Qwen customer would: its
base HTTP URL pointed at tollgate, nothing else changed.

Usage: dashscope_client.py HOST KEY. Prints one JSON object: for each case, the text the
SDK assembled, its status and error code, the usage it saw and tollgate's request id. The
simulator's knobs travel in `parameters` (the SDK puts unknown arguments there).
"""

import json
import sys

import dashscope
from dashscope import Generation

host, key = sys.argv[1], sys.argv[2]
dashscope.base_http_api_url = f"http://{host}/api/v1"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "你是谁？"},
]
KNOBS = {"prompt_tokens": 22, "completion_tokens": 18}


def summary(response, text):
    return {
        "request_id": (response.headers or {}).get("x-request-id"),
        "status": response.status_code,
        "code": response.code,
        "message": response.message,
        "text": text,
        "usage": dict(response.usage) if response.usage else None,
    }


def messages_call(**knobs):
    response = Generation.call(
        model="qwen-plus",
        messages=MESSAGES,
        result_format="message",
        api_key=key,
        x_sim={**KNOBS, **knobs},
    )
    text = response.output.choices[0].message.content if response.output else None
    return summary(response, text)


def prompt_call():
    response = Generation.call(
        model="qwen-plus", prompt="你好", api_key=key, x_sim=KNOBS
    )
    return summary(response, response.output.text)


def streamed(incremental):
    responses = Generation.call(
        model="qwen-plus",
        messages=MESSAGES,
        result_format="message",
        stream=True,
        incremental_output=incremental,
        api_key=key,
        x_sim={**KNOBS, "chunks": 4},
    )
    text, last = "", None
    for response in responses:
        last = response
        content = response.output.choices[0].message.content
        text = text + content if incremental else content
    return summary(last, text)


print(
    json.dumps(
        {
            "messages": messages_call(),
            "prompt": prompt_call(),
            "stream_incremental": streamed(True),
            "stream_full": streamed(False),
            "error_400": messages_call(fault="http_400"),
            "error_200": messages_call(fault="inband_error"),
        },
        ensure_ascii=False,
    )
)
