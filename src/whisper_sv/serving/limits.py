"""What a request to the app may cost before any work: the body's bytes and files (`RequestLimits`,
checked from the headers and the multipart stream), the host the server may bind, and the type of
each endpoint's inputs (`check_inputs`: a wrong type is one line, not a traceback)."""

from __future__ import annotations

import logging
import re

from .uploads import UploadFolder

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # any request but an upload: /continue's 20,000 characters fit many times
_MULTIPART_OVERHEAD = 64 << 10  # part headers and boundaries around the files of one upload


def check_host(host: str) -> None:
    """Refuse a host this machine cannot listen on, before any model loads (Gradio would only say
    "Cannot find empty port"). Binding to port 0 asks the kernel, not the network."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as probe:
            probe.bind((host, 0))
    except (OSError, UnicodeError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ValueError(
            f"--host {host!r} is not an address of this machine ({reason}); use 127.0.0.1 "
            "(this machine only) or 0.0.0.0 (every interface)"
        ) from None


class RequestLimits:
    """ASGI middleware: what one HTTP request may send, checked before and while Gradio reads it.

    An upload (``POST .../upload``) may carry ``max_files`` files and ``max_files`` x the file
    limit in bytes, and is admitted only while the upload folder has room; any other request body
    may be `MAX_BODY_BYTES`. The declared length is checked first; a body without one is counted as
    it streams and cut off at the limit, as is an upload with too many parts (Gradio then deletes
    its part files). Refusals are HTTP 413 (503 for a full folder) with a one-line message.
    """

    def __init__(self, app, max_file_bytes: int, max_files: int, folder: UploadFolder):
        self.app, self.max_files, self.folder = app, max_files, folder
        self.max_upload_bytes = max_files * max_file_bytes + _MULTIPART_OVERHEAD
        self.file_limit = f"{max_files} file{'s' if max_files > 1 else ''} of at most {max_file_bytes / (1 << 20):g} MB"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        from starlette.formparsers import MultiPartException

        headers = {k.lower(): v for k, v in scope["headers"]}
        upload = scope["path"].rstrip("/").endswith("/upload")
        limit = self.max_upload_bytes if upload else MAX_BODY_BYTES
        too_big = (f"Upload at most {self.file_limit} per request." if upload
                   else f"The request body is over {MAX_BODY_BYTES >> 10} KB: send less text.")
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            return await _plain(send, 400, "Invalid Content-Length header.")
        if declared > limit:
            log.warning("refused request to %s: %d bytes declared: %s", scope["path"], declared, too_big)
            return await _plain(send, 413, too_big)
        if upload and not self.folder.admit():
            log.warning("refused upload: the upload folder is full")
            return await _plain(send, 503, "The server holds too many uploads right now: try again in a few minutes.")
        boundary = _boundary(headers.get(b"content-type", b"")) if upload else None
        state = {"bytes": 0, "delimiters": 0, "tail": b"", "refused": None, "started": False}

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request" and not state["refused"]:
                body = message.get("body", b"")
                state["bytes"] += len(body)
                if boundary:  # n parts have n + 1 delimiters; the tail catches one split across messages
                    window = state["tail"] + body
                    state["delimiters"] += window.count(boundary)
                    state["tail"] = window[-len(boundary) + 1 :]
                if state["bytes"] > limit:
                    state["refused"] = (413, too_big)
                elif state["delimiters"] > self.max_files + 1:
                    state["refused"] = (413, f"Too many files in one upload: {self.file_limit} per request.")
                if state["refused"]:
                    log.warning("refused request to %s: %s", scope["path"], state["refused"][1])
                    raise MultiPartException(state["refused"][1])  # Gradio's parser deletes its part files
            return message

        async def guarded_send(message):
            if state["refused"]:
                return  # the app's own answer to a request cut off above
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not state["refused"]:
                raise
        if state["refused"] and not state["started"]:
            await _plain(send, *state["refused"])


def _boundary(content_type: bytes) -> bytes | None:
    match = re.search(rb'boundary="?([^";]+)"?', content_type)
    return b"--" + match.group(1) if match else None


async def _plain(send, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# Each endpoint's function, its name on the API, and what to say when Gradio's components cannot
# read a request's values (the precise message comes from `check_inputs` where it can).
ENDPOINTS = {"transcribe": "/transcribe", "continue_text": "/continue"}
UNREADABLE = {
    "transcribe": "The audio must be a file uploaded to this server: with gradio_client, pass handle_file(path).",
    "continue_text": "Send /continue a text (a string), a length and a temperature (numbers).",
}


def _json_kind(value) -> str:
    """What a JSON value is, in words for a message (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "a list", tuple: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def check_inputs(fn_name: str, inputs: list) -> str | None:
    """What is wrong with the values a request sends the endpoint function `fn_name`, checked before
    Gradio's components read them (a slider compares "abc" with its minimum and fails with a
    traceback and ``error: null``; a textbox turns a list into its repr); None when they fit."""
    if fn_name == "continue_text":
        if len(inputs) < 3:
            return f"/continue takes 3 values (text, length, temperature); the request sent {len(inputs)}."
        text, length, temperature = inputs[:3]
        if text is not None and not isinstance(text, str):
            return f"The text must be a string, not {_json_kind(text)}."
        for name, value in (("length", length), ("temperature", temperature)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"The {name} must be a number, not {_json_kind(value)}."
    elif fn_name == "transcribe":
        if len(inputs) < 1:
            return "/transcribe takes 1 value (the audio file); the request sent none."
        if inputs[0] is not None and not isinstance(inputs[0], dict):
            return (f"The audio must be a file uploaded to this server (with gradio_client, pass "
                    f"handle_file(path)), not {_json_kind(inputs[0])}.")
    return None
