"""Drives tollgate with the official Zhipu Python SDK (zhipuai), as a GLM customer would:
its base_url pointed at tollgate's `/api/paas/v4`, nothing else changed.

Usage: zhipuai_client.py HOST KEY. Prints one JSON object: for each case, what the SDK
returned (text, usage, task ids and statuses, the error it raised).
"""

import json
import sys
import time

import zhipuai
from zhipuai import ZhipuAI

host, key = sys.argv[1], sys.argv[2]
client = ZhipuAI(api_key=key, base_url=f"http://{host}/api/paas/v4", max_retries=0)
MESSAGES = [{"role": "user", "content": "你好"}]
KNOBS = {"prompt_tokens": 22, "completion_tokens": 18}


def usage(u):
    return {"prompt": u.prompt_tokens, "completion": u.completion_tokens} if u else None


def chat():
    answer = client.chat.completions.create(
        model="glm-4-plus", messages=MESSAGES, extra_body={"x_sim": KNOBS}
    )
    return {"text": answer.choices[0].message.content, "usage": usage(answer.usage)}


def chat_stream():
    text, last_usage = "", None
    for chunk in client.chat.completions.create(
        model="glm-4-plus", messages=MESSAGES, stream=True, extra_body={"x_sim": KNOBS}
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage:
            last_usage = usage(chunk.usage)
    return {"text": text, "usage": last_usage}


def task(**knobs):
    """Submits, then polls until the task ends; every status seen, and poll errors."""
    submitted = client.chat.asyncCompletions.create(
        model="glm-4-plus", messages=MESSAGES, extra_body={"x_sim": {**KNOBS, **knobs}}
    )
    statuses, errors = [submitted.task_status], []
    for _ in range(20):
        try:
            result = client.chat.asyncCompletions.retrieve_completion_result(
                id=submitted.id
            )
        except zhipuai.APIStatusError as e:
            errors.append(e.status_code)
            continue
        statuses.append(result.task_status)
        if result.task_status in ("SUCCESS", "FAILED"):
            break
        time.sleep(0.05)
    text = None
    if result.task_status == "SUCCESS":
        text = result.choices[0].message.content
    return {
        "id": submitted.id,
        "statuses": statuses,
        "poll_errors": errors,
        "text": text,
        "usage": usage(getattr(result, "usage", None)),
    }


def images():
    answer = client.images.generations(
        model="cogview-3", prompt="一只猫", extra_body={"x_sim": {"images": 2}}
    )
    return {"urls": [d.url for d in answer.data]}


def unknown_model():
    try:
        client.chat.completions.create(model="glm-0", messages=MESSAGES)
    except zhipuai.APIStatusError as e:
        return {"status": e.status_code}
    return {"status": 200}


print(
    json.dumps(
        {
            "chat": chat(),
            "chat_stream": chat_stream(),
            "task": task(polls=2),
            "task_failed": task(fault="task_failed"),
            "task_poll_error": task(fault="poll_error"),
            "images": images(),
            "unknown_model": unknown_model(),
        },
        ensure_ascii=False,
    )
)
