"""Drives tollgate with the official Anthropic Python SDK (anthropic), as a coding tool on
Zhipu's, DashScope's or DeepSeek's Anthropic-compatible API would: its base_url pointed at
tollgate, the tollgate key as its api_key (sent as `x-api-key`), nothing else changed.

Usage: anthropic_client.py HOST KEY. Prints one JSON object: for each case, what the SDK
returned (text, usage, stop reason, the error it raised).
"""

import json
import sys

import anthropic

host, key = sys.argv[1], sys.argv[2]
client = anthropic.Anthropic(api_key=key, base_url=f"http://{host}", max_retries=0)
SYSTEM = [{"type": "text", "text": "You are a careful assistant.",
           "cache_control": {"type": "ephemeral"}}]
MESSAGES = [{"role": "user", "content": "你是谁？"}]
# 5,100 prompt tokens: 100 new, 2,000 written to the cache, 3,000 read from it.
KNOBS = {"prompt_tokens": 5100, "completion_tokens": 18,
         "cached_tokens": 3000, "cache_write_tokens": 2000}


def usage(u):
    return {
        "input": u.input_tokens,
        "output": u.output_tokens,
        "cache_write": u.cache_creation_input_tokens,
        "cache_read": u.cache_read_input_tokens,
    }


def plain(knobs=KNOBS):
    message = client.messages.create(
        model="glm-4.6", max_tokens=256, system=SYSTEM, messages=MESSAGES,
        extra_body={"x_sim": knobs},
    )
    return {"text": message.content[0].text, "usage": usage(message.usage),
            "stop_reason": message.stop_reason}


def streamed(knobs=KNOBS):
    text = ""
    with client.messages.stream(
        model="glm-4.6", max_tokens=256, system=SYSTEM, messages=MESSAGES,
        extra_body={"x_sim": knobs},
    ) as stream:
        for piece in stream.text_stream:
            text += piece
        message = stream.get_final_message()
    return {"text": text, "usage": usage(message.usage), "stop_reason": message.stop_reason}


def raw_events():
    """The event types of a stream as the SDK's low-level iterator sees them."""
    events = client.messages.create(
        model="glm-4.6", max_tokens=256, messages=MESSAGES, stream=True,
        extra_body={"x_sim": {"prompt_tokens": 40, "completion_tokens": 3}},
    )
    return {"types": [event.type for event in events]}


def error(call):
    try:
        call()
    except anthropic.APIStatusError as e:
        return {"status": e.status_code, "type": e.body.get("error", {}).get("type"),
                "message": e.body.get("error", {}).get("message")}
    except anthropic.APIError as e:
        return {"error": type(e).__name__, "message": str(e)}
    return {"status": None}


def bad_key():
    other = anthropic.Anthropic(api_key="tg-not-a-key", base_url=f"http://{host}",
                                max_retries=0)
    return other.messages.create(model="glm-4.6", max_tokens=8, messages=MESSAGES)


def unknown_model():
    return client.messages.create(model="claude-nope", max_tokens=8, messages=MESSAGES)


def overloaded_mid_stream():
    return streamed({"prompt_tokens": 40, "completion_tokens": 3, "chunks": 5,
                     "fault": "inband_error"})


print(json.dumps({
    "plain": plain(),
    "streamed": streamed(),
    "raw_events": raw_events(),
    "bad_key": error(bad_key),
    "unknown_model": error(unknown_model),
    "overloaded": error(overloaded_mid_stream),
}))
