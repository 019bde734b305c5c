"""smallmind: a local language model inside your Python process (ctypes over libsmallmind).

    import smallmind
    with smallmind.Engine("SmolLM2-135M-Instruct.Q4_1.gguf") as engine:
        print(engine.chat(system_prompt="Be brief.").send("Hi!")["message"]["content"])

Every keyword argument is the JSON field of the same name in the C API's requests and options
(see include/smallmind.h), so fields the library gains need no change here; every result is
the response JSON as a dict. Errors raise `smallmind.Error` subclasses carrying `.status`.
"""

from __future__ import annotations

import ctypes
import json
import queue
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

from . import _native
from ._native import ChatP, EngineCallbacks, EngineP

__all__ = [
    "Engine",
    "Chat",
    "Stream",
    "Error",
    "InvalidArgumentError",
    "InvalidJsonError",
    "ModelLoadError",
    "UnsupportedModelError",
    "ContextOverflowError",
    "CancelledError",
    "BusyError",
    "BudgetExceededError",
    "IoError",
    "InternalError",
    "version",
    "abi_version",
]

__version__ = "0.1.0"

OnToken = Callable[[str], Optional[bool]]
ExecuteTool = Callable[[str, Dict[str, Any]], Any]
Content = Union[str, Sequence[Dict[str, Any]]]


# ---------------------------------------------------------------------------------------------
# Errors


class Error(Exception):
    """A smallmind call failed. `status` is the C status code; `str(e)` the library's message."""

    status: int = 0

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class InvalidArgumentError(Error):
    status = 1


class InvalidJsonError(Error):
    status = 2


class ModelLoadError(Error):
    status = 3


class UnsupportedModelError(Error):
    status = 4


class ContextOverflowError(Error):
    status = 5


class CancelledError(Error):
    status = 6


class BusyError(Error):
    status = 7


class BudgetExceededError(Error):
    status = 8


class IoError(Error):
    status = 9


class InternalError(Error):
    status = 10


_BY_STATUS = {
    cls.status: cls
    for cls in (
        InvalidArgumentError,
        InvalidJsonError,
        ModelLoadError,
        UnsupportedModelError,
        ContextOverflowError,
        CancelledError,
        BusyError,
        BudgetExceededError,
        IoError,
        InternalError,
    )
}


def _error(status: int) -> Error:
    """The exception for `status`, with this thread's last error message (read at once)."""
    raw = _native.lib().smallmind_last_error()
    message = raw.decode("utf-8", "replace") if raw else f"smallmind status {status}"
    cls = _BY_STATUS.get(status)
    return cls(message) if cls is not None else Error(message, status)


def _check(status: int) -> None:
    if status != 0:
        raise _error(status)


def _take_string(ptr: ctypes.c_void_p) -> str:
    """Reads a string the library returned and frees it."""
    if not ptr.value:
        return ""
    try:
        return ctypes.string_at(ptr.value).decode("utf-8")
    finally:
        _native.lib().smallmind_string_free(ptr.value)


def _json_arg(value: Dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def _missing(name: str) -> Error:
    return InvalidArgumentError(
        f"this libsmallmind ({version()}, ABI {abi_version()}) lacks {name}; use a newer library"
    )


def version() -> str:
    """The library version, e.g. "0.1.0"."""
    return _native.lib().smallmind_version().decode("utf-8")


def abi_version() -> int:
    return int(_native.lib().smallmind_abi_version())


# ---------------------------------------------------------------------------------------------
# Callbacks


class _Callbacks:
    """One request's C callbacks. The ctypes function objects live as long as this object,
    which the caller holds for the whole call. An exception raised by a Python callback stops
    generation (the token callback returns non-zero) and is re-raised on the caller once the C
    call has returned: it never unwinds through C frames."""

    def __init__(
        self,
        on_token: Optional[OnToken],
        execute_tool: Optional[ExecuteTool] = None,
        telemetry: Any = None,
    ) -> None:
        self.error: Optional[BaseException] = None
        self._on_token = on_token
        self._execute_tool = execute_tool
        self._keep: List[Any] = []
        self.struct = _native.new_chat_callbacks()
        if on_token is not None or telemetry is not None:
            # With telemetry alone the token callback only stops the reply after a failure.
            self._token_fn = _native.ON_TOKEN(self._token)
            self.struct.on_token = self._token_fn
        if telemetry is not None:
            self._wire_telemetry(telemetry)
        if execute_tool is not None:
            if not hasattr(self.struct, "execute_tool") or not _native.has("smallmind_host_result_set"):
                raise _missing("the execute_tool callback (ABI 2)")
            self._tool_fn = _native.EXECUTE_TOOL(self._tool)
            self.struct.execute_tool = self._tool_fn

    def _wire_telemetry(self, telemetry: Any) -> None:
        """Sets the C callback for each `on_*` method the telemetry object has."""

        def text(b: Optional[bytes]) -> str:
            return b.decode("utf-8", "replace") if b else ""

        def usage(p: Any) -> Dict[str, Any]:
            u = p.contents
            return {name: getattr(u, name) for name, _ in _native.Usage._fields_}

        adapters = {
            "on_request_start": (_native.ON_REQUEST_START, lambda f: lambda _u, s, n: f(text(s), int(n))),
            "on_first_token": (_native.ON_FIRST_TOKEN, lambda f: lambda _u, s, ms: f(text(s), float(ms))),
            "on_context_policy_applied": (
                _native.ON_CONTEXT_POLICY_APPLIED,
                lambda f: lambda _u, s, p, b, a: f(text(s), text(p), int(b), int(a)),
            ),
            "on_kv_cache_access": (
                _native.ON_KV_CACHE_ACCESS,
                lambda f: lambda _u, s, hit, n: f(text(s), bool(hit), int(n)),
            ),
            "on_request_complete": (_native.ON_REQUEST_COMPLETE, lambda f: lambda _u, s, p: f(text(s), usage(p))),
            "on_tool_call": (_native.ON_TOOL_CALL, lambda f: lambda _u, s, n, ms: f(text(s), text(n), float(ms))),
        }
        for name, (fn_type, adapt) in adapters.items():
            method = getattr(telemetry, name, None)
            if method is None or not hasattr(self.struct, name):
                continue
            c_fn = fn_type(self._guard(adapt(method)))
            self._keep.append(c_fn)
            setattr(self.struct, name, c_fn)

    def _guard(self, fn: Callable[..., None]) -> Callable[..., None]:
        """A callback that keeps the first exception instead of letting it reach C."""

        def guarded(*args: Any) -> None:
            if self.error is not None:
                return
            try:
                fn(*args)
            except BaseException as e:  # noqa: BLE001 - re-raised on the caller
                self.error = e

        return guarded

    def _token(self, _user_data: Any, text: int, length: int) -> int:
        if self.error is not None:
            return 1
        if self._on_token is None:
            return 0
        try:
            piece = ctypes.string_at(text, length).decode("utf-8") if length else ""
            return 1 if self._on_token(piece) is False else 0
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller
            self.error = e
            return 1

    def _tool(self, _user_data: Any, _session_id: bytes, call_json: bytes, result: int) -> int:
        if self.error is not None:
            return 1
        try:
            call = json.loads(call_json.decode("utf-8"))
            assert self._execute_tool is not None
            value = self._execute_tool(call.get("name", ""), call.get("arguments") or {})
            content = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            _check(_native.lib().smallmind_host_result_set(result, content.encode("utf-8")))
            return 0
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller
            self.error = e
            return 1

    def pointer(self) -> Any:
        return ctypes.byref(self.struct)

    def raise_pending(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error


# ---------------------------------------------------------------------------------------------
# Engine


class Engine:
    """A loaded model, shared by any number of threads and chats.

    `Engine(model_path, **options)`: options are the engine JSON fields (`threads`,
    `context_length`, `kv_type`, `use_mmap`, ...). `on_progress(fraction)` may return False to
    abort the load; `on_log(level, message)` receives the load's log lines."""

    def __init__(
        self,
        model_path: str,
        *,
        on_progress: Optional[Callable[[float], Optional[bool]]] = None,
        on_log: Optional[Callable[[int, str], None]] = None,
        **options: Any,
    ) -> None:
        lib = _native.lib()
        self._handle: Optional[int] = None
        request = dict(options)
        request["model_path"] = str(model_path)
        error: List[BaseException] = []

        def progress(_ud: Any, fraction: float) -> int:
            try:
                assert on_progress is not None
                return 1 if on_progress(float(fraction)) is False else 0
            except BaseException as e:  # noqa: BLE001 - re-raised below
                error.append(e)
                return 1

        def log(_ud: Any, level: int, message: bytes) -> None:
            try:
                assert on_log is not None
                on_log(int(level), message.decode("utf-8", "replace"))
            except BaseException as e:  # noqa: BLE001 - re-raised below
                error.append(e)

        cb = EngineCallbacks()
        keep = []
        if on_progress is not None:
            keep.append(_native.ON_LOAD_PROGRESS(progress))
            cb.on_load_progress = keep[-1]
        if on_log is not None:
            keep.append(_native.ON_LOG(log))
            cb.on_log = keep[-1]
        out = EngineP()
        status = lib.smallmind_engine_create(_json_arg(request), ctypes.byref(cb), ctypes.byref(out))
        exc = _error(status) if status != 0 else None
        del keep
        if error:
            if out.value:
                lib.smallmind_engine_free(out)
            raise error[0]
        if exc is not None:
            raise exc
        self._handle = out.value

    # Lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Frees the engine. Chats made from it keep the model alive until they are closed."""
        handle, self._handle = self._handle, None
        if handle:
            _native.lib().smallmind_engine_free(EngineP(handle))

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _h(self) -> EngineP:
        if not self._handle:
            raise InvalidArgumentError("the engine is closed")
        return EngineP(self._handle)

    def _call_json(self, fn: Any, request: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        out = ctypes.c_void_p()
        if request is None:
            _check(fn(self._h(), ctypes.byref(out)))
        else:
            _check(fn(self._h(), _json_arg(request), ctypes.byref(out)))
        return json.loads(_take_string(out))

    # Calls --------------------------------------------------------------------------------

    def info(self) -> Dict[str, Any]:
        """Model facts (architecture, sizes, context length, template, fingerprint, ...)."""
        return self._call_json(_native.lib().smallmind_engine_info)

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> List[int]:
        request = {"text": text, "add_special": add_special, "parse_special": parse_special}
        return list(self._call_json(_native.lib().smallmind_engine_tokenize, request)["ids"])

    def detokenize(self, ids: Sequence[int], **request: Any) -> str:
        body = dict(request)
        body["ids"] = [int(i) for i in ids]
        return str(self._call_json(_native.lib().smallmind_engine_detokenize, body)["text"])

    def complete(
        self,
        prompt: Union[str, Sequence[int]],
        *,
        on_token: Optional[OnToken] = None,
        telemetry: Any = None,
        **request: Any,
    ) -> Dict[str, Any]:
        """Raw completion, no template: `prompt` is text or token ids; `request` holds the other
        fields (max_tokens, temperature, seed, stop, logprobs, ...). Returns the response dict.
        `telemetry`: see `Chat.send`."""
        body = dict(request)
        if isinstance(prompt, str):
            body["prompt"] = prompt
        else:
            body["prompt_ids"] = [int(i) for i in prompt]
        callbacks = _Callbacks(on_token, telemetry=telemetry)
        out = ctypes.c_void_p()
        status = _native.lib().smallmind_engine_complete(
            self._h(), _json_arg(body), callbacks.pointer(), ctypes.byref(out)
        )
        exc = _error(status) if status != 0 else None
        text = _take_string(out) if status == 0 else ""
        callbacks.raise_pending()
        if exc is not None:
            raise exc
        return json.loads(text)

    def chat(self, **options: Any) -> "Chat":
        """A new chat; `options` are the chat options (session_id, system_prompt,
        context_policy, kv_cache, max_kv_tokens, default sampling fields)."""
        out = ChatP()
        _check(_native.lib().smallmind_chat_create(self._h(), _json_arg(options), ctypes.byref(out)))
        return Chat(self, out.value)

    def import_chat(self, text: str) -> "Chat":
        """Restores a chat from `Chat.export()`'s JSON."""
        out = ChatP()
        _check(_native.lib().smallmind_chat_import(self._h(), text.encode("utf-8"), ctypes.byref(out)))
        return Chat(self, out.value)

    def load_chat(self, path: str, **options: Any) -> "Chat":
        """Loads a chat saved with `Chat.save` (options: the load options JSON)."""
        if not _native.has("smallmind_chat_load"):
            raise _missing("smallmind_chat_load")
        out = ChatP()
        _check(
            _native.lib().smallmind_chat_load(
                self._h(), str(path).encode("utf-8"), _json_arg(options), ctypes.byref(out)
            )
        )
        return Chat(self, out.value)


# ---------------------------------------------------------------------------------------------
# Chat


def _messages(content: Content) -> List[Dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    return [dict(m) for m in content]


class Chat:
    """A conversation with its history and its own KV cache. One call at a time; `cancel()`
    may be called from any thread."""

    def __init__(self, engine: Engine, handle: Optional[int]) -> None:
        self._engine = engine  # the Python engine object outlives its chats' use of it
        self._handle = handle

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle:
            _native.lib().smallmind_chat_free(ChatP(handle))

    def __enter__(self) -> "Chat":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def _h(self) -> ChatP:
        if not self._handle:
            raise InvalidArgumentError("the chat is closed")
        return ChatP(self._handle)

    def send(
        self,
        content: Content,
        *,
        on_token: Optional[OnToken] = None,
        execute_tool: Optional[ExecuteTool] = None,
        telemetry: Any = None,
        **request: Any,
    ) -> Dict[str, Any]:
        """Sends `content` (a string is one user message; else a list of message dicts) with
        the other request fields in `request`, and returns the response dict.

        `telemetry` is any object with some of the methods `on_request_start(session_id,
        message_count)`, `on_kv_cache_access(session_id, hit, cached_tokens)`,
        `on_context_policy_applied(session_id, policy, tokens_before, tokens_after)`,
        `on_first_token(session_id, elapsed_ms)`, `on_request_complete(session_id, usage)`
        (usage a dict of the C smallmind_usage fields) and, with ABI 2,
        `on_tool_call(session_id, name, elapsed_ms)`: the C callbacks of the same names, called
        on this thread in that order.

        `on_token(piece)` may return False to stop (finish_reason "cancelled"); any other
        return value goes on. `execute_tool(name, arguments)` runs the tool calls the model
        makes (requests with `tools`): its return value, a string or anything
        JSON-serialisable, is the tool's result, and the library continues the reply with it
        (at most `max_tool_calls` calls). It needs a library with ABI 2; without it a reply
        that calls tools ends with finish_reason "tool_calls" for the caller to run them."""
        body = dict(request)
        body["messages"] = _messages(content)
        callbacks = _Callbacks(on_token, execute_tool, telemetry)
        out = ctypes.c_void_p()
        status = _native.lib().smallmind_chat_send(
            self._h(), _json_arg(body), callbacks.pointer(), ctypes.byref(out)
        )
        exc = _error(status) if status != 0 else None
        text = _take_string(out) if status == 0 else ""
        callbacks.raise_pending()
        if exc is not None:
            raise exc
        return json.loads(text)

    def stream(self, content: Content, **request: Any) -> "Stream":
        """Like `send`, as an iterator of text pieces; `.response` holds the response dict once
        it is exhausted. Closing it early (or leaving a `with` block) cancels the reply."""
        return Stream(self, content, request)

    def render(self, content: Content = (), **request: Any) -> Dict[str, Any]:
        """The prompt a send with this request would give the model, without generating."""
        body = dict(request)
        body["messages"] = _messages(content)
        out = ctypes.c_void_p()
        _check(_native.lib().smallmind_chat_render(self._h(), _json_arg(body), ctypes.byref(out)))
        return json.loads(_take_string(out))

    def cancel(self) -> None:
        """Stops the running send (if any) within one token; any thread."""
        handle = self._handle
        if handle:
            _check(_native.lib().smallmind_chat_cancel(ChatP(handle)))

    def reset(self) -> None:
        """Forgets the history and the KV cache."""
        _check(_native.lib().smallmind_chat_reset(self._h()))

    def history(self) -> Dict[str, Any]:
        """{"session_id", "messages": [...]}."""
        out = ctypes.c_void_p()
        _check(_native.lib().smallmind_chat_history(self._h(), ctypes.byref(out)))
        return json.loads(_take_string(out))

    def export(self) -> str:
        """The session as a versioned JSON envelope; restore it with `Engine.import_chat`."""
        out = ctypes.c_void_p()
        _check(_native.lib().smallmind_chat_export(self._h(), ctypes.byref(out)))
        return _take_string(out)

    def save(self, path: str, include_kv: bool = False, **options: Any) -> None:
        """Saves the session to `path` (atomically); `Engine.load_chat(path)` restores it."""
        if not _native.has("smallmind_chat_save"):
            raise _missing("smallmind_chat_save")
        body = dict(options)
        body["include_kv"] = include_kv
        _check(_native.lib().smallmind_chat_save(self._h(), str(path).encode("utf-8"), _json_arg(body)))


class Stream:
    """The pieces of one reply as they are generated (the send runs on a worker thread)."""

    _DONE = object()

    def __init__(self, chat: Chat, content: Content, request: Dict[str, Any]) -> None:
        self.response: Optional[Dict[str, Any]] = None
        self._chat = chat
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._stopped = False
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(content, request), daemon=True)
        self._thread.start()

    def _run(self, content: Content, request: Dict[str, Any]) -> None:
        try:
            self.response = self._chat.send(content, on_token=self._piece, **request)
        except BaseException as e:  # noqa: BLE001 - re-raised on the consumer
            self._error = e
        finally:
            self._queue.put(self._DONE)

    def _piece(self, piece: str) -> bool:
        if self._stopped:
            return False
        self._queue.put(piece)
        return True

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        item = self._queue.get() if self._thread.is_alive() or not self._queue.empty() else self._DONE
        if item is self._DONE:
            self._thread.join()
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            raise StopIteration
        return str(item)

    def close(self) -> None:
        """Stops the reply (finish_reason "cancelled") and waits for the send to return."""
        if self._thread.is_alive():
            self._stopped = True
            self._chat.cancel()
        self._thread.join()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
