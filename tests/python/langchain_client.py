"""Drives tollgate with LangChain's OpenAI chat model (langchain-openai), as an application
built on LangChain would: four base URLs (OpenAI-style, GenStudio's model × chip, Zhipu's,
DashScope's compatible mode), each invoked and streamed.

Usage: langchain_client.py HOST KEY. Prints one JSON object: for each case, the text and
the usage LangChain assembled.
"""

import json
import sys

from langchain_openai import ChatOpenAI

host, key = sys.argv[1], sys.argv[2]
KNOBS = {"x_sim": {"prompt_tokens": 22, "completion_tokens": 18}}
CASES = {
    "v1": (f"http://{host}/v1", "megrez-7b-instruct"),
    "mxn": (f"http://{host}/maas/megrez-7b-instruct/nvidia", "megrez-7b-instruct"),
    "zhipu": (f"http://{host}/api/paas/v4", "glm-4-plus"),
    "dashscope_compatible": (f"http://{host}/compatible-mode/v1", "qwen-plus"),
}


def usage(message):
    u = message.usage_metadata
    return {"input": u["input_tokens"], "output": u["output_tokens"]} if u else None


results = {}
for name, (base_url, model) in CASES.items():
    chat = ChatOpenAI(
        base_url=base_url,
        api_key=key,
        model=model,
        max_retries=0,
        stream_usage=True,
        extra_body=KNOBS,
    )
    answer = chat.invoke("你是谁？")
    results[name] = {"text": answer.content, "usage": usage(answer)}
    whole = None
    for chunk in chat.stream("你是谁？"):
        whole = chunk if whole is None else whole + chunk
    results[name + "_stream"] = {"text": whole.content, "usage": usage(whole)}

print(json.dumps(results, ensure_ascii=False))
