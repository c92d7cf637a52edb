"""A local stand-in for the OpenAI and Anthropic HTTP APIs (no network here):
`POST /v1/chat/completions`, `/v1/responses` and `/v1/messages`, each as a JSON
body or, with `"stream": true`, as server-sent events, in the shapes the
providers document (the SDKs parse them into their own types). Usage figures
are fixed (below) so tests can check what was committed. A request with the
header `x-fake-fail: 1` gets a 400 error. `requests` keeps every body."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAT_PROMPT, CHAT_CACHED, CHAT_COMPLETION = 1200, 1024, 300
CHAT_USAGE = {
    "prompt_tokens": CHAT_PROMPT,
    "completion_tokens": CHAT_COMPLETION,
    "total_tokens": CHAT_PROMPT + CHAT_COMPLETION,
    "prompt_tokens_details": {"cached_tokens": CHAT_CACHED, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 128,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
RESPONSES_USAGE = {
    "input_tokens": 900,
    "input_tokens_details": {"cached_tokens": 512, "cache_write_tokens": 0},
    "output_tokens": 250,
    "output_tokens_details": {"reasoning_tokens": 200},
    "total_tokens": 1150,
}
ANTHROPIC_START_USAGE = {
    "input_tokens": 50,
    "cache_creation_input_tokens": 2000,
    "cache_read_input_tokens": 3000,
    "output_tokens": 1,
    "service_tier": "standard",
}
ANTHROPIC_OUTPUT = 420


def chat_completion(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": CHAT_USAGE,
        "service_tier": "default",
        "system_fingerprint": "fp_f2cd28694a",
    }


def chat_chunks(model: str, include_usage: bool) -> list[dict[str, Any]]:
    base = {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": model,
        "system_fingerprint": "fp_44709d6fcb",
    }
    choice = {"index": 0, "logprobs": None, "finish_reason": None}
    chunks: list[dict[str, Any]] = [
        {**base, "choices": [{**choice, "delta": {"role": "assistant", "content": ""}}]},
        {**base, "choices": [{**choice, "delta": {"content": "Hel"}}]},
        {**base, "choices": [{**choice, "delta": {"content": "lo!"}}]},
        {**base, "choices": [{**choice, "delta": {}, "finish_reason": "stop"}]},
    ]
    if include_usage:
        chunks = [{**c, "usage": None} for c in chunks]
        chunks.append({**base, "choices": [], "usage": CHAT_USAGE})
    return chunks


def response_object(model: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
        "object": "response",
        "created_at": 1741476542,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": [
            {
                "type": "message",
                "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hello!", "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": RESPONSES_USAGE if status == "completed" else None,
        "user": None,
        "metadata": {},
    }


def response_events(model: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": response_object(model, "in_progress"),
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": 1,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hello!",
            "logprobs": [],
        },
        {"type": "response.completed", "sequence_number": 2, "response": response_object(model)},
    ]


def anthropic_message(model: str) -> dict[str, Any]:
    return {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {**ANTHROPIC_START_USAGE, "output_tokens": ANTHROPIC_OUTPUT},
    }


def anthropic_events(model: str) -> list[dict[str, Any]]:
    start = anthropic_message(model)
    start.update(content=[], stop_reason=None, usage=ANTHROPIC_START_USAGE)
    return [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Hello!"},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": ANTHROPIC_OUTPUT},
        },
        {"type": "message_stop"},
    ]


class FakeLLM:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                fake.requests.append({"path": self.path, **body})
                if self.headers.get("x-fake-fail"):
                    self._json(
                        400, {"error": {"type": "invalid_request_error", "message": "fake failure"}}
                    )
                    return
                model = body.get("model", "")
                stream = bool(body.get("stream"))
                if self.path.endswith("/chat/completions"):
                    if stream:
                        include = bool((body.get("stream_options") or {}).get("include_usage"))
                        self._sse([(None, c) for c in chat_chunks(model, include)], done=True)
                    else:
                        self._json(200, chat_completion(model))
                elif self.path.endswith("/responses"):
                    if stream:
                        self._sse([(e["type"], e) for e in response_events(model)])
                    else:
                        self._json(200, response_object(model))
                elif self.path.endswith("/messages"):
                    if stream:
                        self._sse([(e["type"], e) for e in anthropic_events(model)])
                    else:
                        self._json(200, anthropic_message(model))
                else:
                    self._json(404, {"error": {"message": f"no route {self.path}"}})

            def _json(self, status: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _sse(self, events: list[tuple[str | None, Any]], done: bool = False) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()
                for name, data in events:
                    if name:
                        self.wfile.write(f"event: {name}\n".encode())
                    self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
                if done:
                    self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
