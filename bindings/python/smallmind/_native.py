"""The C library: where it is found, and the prototype of every function (ctypes).

Layouts and signatures follow include/smallmind.h; `ABI_VERSION` is the header's
SMALLMIND_ABI_VERSION they were written from, checked against the loaded library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char_p,
    c_double,
    c_float,
    c_int32,
    c_size_t,
    c_uint32,
    c_void_p,
)
from typing import Any, Optional

# The ABI versions these bindings know (SMALLMIND_ABI_VERSION of the header they were written
# from). Version 2 starts smallmind_chat_callbacks with `uint32_t struct_size`.
SUPPORTED_ABI = (1, 2)

# Opaque handles: only ever passed back to the library.
EngineP = c_void_p
ChatP = c_void_p


class Usage(Structure):
    _fields_ = [
        ("prompt_tokens", c_uint32),
        ("completion_tokens", c_uint32),
        ("total_tokens", c_uint32),
        ("cached_tokens", c_uint32),
        ("time_to_first_token_ms", c_double),
        ("prefill_ms", c_double),
        ("decode_ms", c_double),
        ("prefill_tokens_per_second", c_double),
        ("decode_tokens_per_second", c_double),
    ]


# Callback types. Strings arrive as raw pointers (c_void_p) where a length is given, so that
# the bytes are read exactly; NUL-terminated ones as c_char_p.
ON_TOKEN = CFUNCTYPE(c_int32, c_void_p, c_void_p, c_size_t)
ON_REQUEST_START = CFUNCTYPE(None, c_void_p, c_char_p, c_uint32)
ON_FIRST_TOKEN = CFUNCTYPE(None, c_void_p, c_char_p, c_double)
ON_CONTEXT_POLICY_APPLIED = CFUNCTYPE(None, c_void_p, c_char_p, c_char_p, c_uint32, c_uint32)
ON_KV_CACHE_ACCESS = CFUNCTYPE(None, c_void_p, c_char_p, c_bool, c_uint32)
ON_REQUEST_COMPLETE = CFUNCTYPE(None, c_void_p, c_char_p, POINTER(Usage))
EXECUTE_TOOL = CFUNCTYPE(c_int32, c_void_p, c_char_p, c_char_p, c_void_p)
ON_TOOL_CALL = CFUNCTYPE(None, c_void_p, c_char_p, c_char_p, c_double)
ON_LOAD_PROGRESS = CFUNCTYPE(c_int32, c_void_p, c_float)
ON_LOG = CFUNCTYPE(None, c_void_p, c_int32, c_char_p)


_V1_CALLBACK_FIELDS = [
    ("user_data", c_void_p),
    ("on_token", ON_TOKEN),
    ("on_request_start", ON_REQUEST_START),
    ("on_first_token", ON_FIRST_TOKEN),
    ("on_context_policy_applied", ON_CONTEXT_POLICY_APPLIED),
    ("on_kv_cache_access", ON_KV_CACHE_ACCESS),
    ("on_request_complete", ON_REQUEST_COMPLETE),
]


class ChatCallbacksV1(Structure):
    """smallmind_chat_callbacks of ABI version 1: user_data and six callbacks."""

    _fields_ = _V1_CALLBACK_FIELDS


class ChatCallbacksV2(Structure):
    """ABI version 2: a leading struct_size (set to this struct's size), the version-1 fields,
    then execute_tool, on_tool_call and retrieve."""

    _fields_ = (
        [("struct_size", c_uint32)]
        + _V1_CALLBACK_FIELDS
        + [("execute_tool", EXECUTE_TOOL), ("on_tool_call", ON_TOOL_CALL), ("retrieve", c_void_p)]
    )


_CALLBACKS_BY_ABI = {1: ChatCallbacksV1, 2: ChatCallbacksV2}


class EngineCallbacks(Structure):
    _fields_ = [
        ("user_data", c_void_p),
        ("on_load_progress", ON_LOAD_PROGRESS),
        ("on_log", ON_LOG),
    ]


_OUT_STR = POINTER(c_void_p)  # char **: read as a raw pointer so it can be freed afterwards
_STATUS = c_uint32

# name: (restype, argtypes). Functions marked optional may be missing from an older library;
# calling one then raises a clear error instead of failing at import.
_PROTOTYPES = {
    "smallmind_version": (c_char_p, []),
    "smallmind_abi_version": (c_uint32, []),
    "smallmind_last_error": (c_char_p, []),
    "smallmind_string_free": (None, [c_void_p]),
    "smallmind_engine_create": (_STATUS, [c_char_p, POINTER(EngineCallbacks), POINTER(EngineP)]),
    "smallmind_engine_free": (None, [EngineP]),
    "smallmind_engine_info": (_STATUS, [EngineP, _OUT_STR]),
    "smallmind_engine_tokenize": (_STATUS, [EngineP, c_char_p, _OUT_STR]),
    "smallmind_engine_detokenize": (_STATUS, [EngineP, c_char_p, _OUT_STR]),
    "smallmind_engine_complete": (_STATUS, [EngineP, c_char_p, c_void_p, _OUT_STR]),
    "smallmind_chat_create": (_STATUS, [EngineP, c_char_p, POINTER(ChatP)]),
    "smallmind_chat_free": (None, [ChatP]),
    "smallmind_chat_send": (_STATUS, [ChatP, c_char_p, c_void_p, _OUT_STR]),
    "smallmind_chat_render": (_STATUS, [ChatP, c_char_p, _OUT_STR]),
    "smallmind_chat_cancel": (_STATUS, [ChatP]),
    "smallmind_chat_reset": (_STATUS, [ChatP]),
    "smallmind_chat_history": (_STATUS, [ChatP, _OUT_STR]),
    "smallmind_chat_export": (_STATUS, [ChatP, _OUT_STR]),
    "smallmind_chat_import": (_STATUS, [EngineP, c_char_p, POINTER(ChatP)]),
    "smallmind_chat_save": (_STATUS, [ChatP, c_char_p, c_char_p]),
    "smallmind_chat_load": (_STATUS, [EngineP, c_char_p, c_char_p, POINTER(ChatP)]),
    "smallmind_host_result_set": (_STATUS, [c_void_p, c_char_p]),
}
OPTIONAL = {"smallmind_chat_save", "smallmind_chat_load", "smallmind_host_result_set"}

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_callbacks_type: Any = None


def new_chat_callbacks() -> Any:
    """A zeroed smallmind_chat_callbacks in the loaded library's layout (struct_size set)."""
    lib()
    cb = _callbacks_type()
    if hasattr(cb, "struct_size"):
        cb.struct_size = ctypes.sizeof(_callbacks_type)
    return cb


def _candidates() -> list:
    """Where the library is looked for, in order."""
    found = []
    env = os.environ.get("SMALLMIND_LIBRARY")
    if env:
        found.append(env)
    here = os.path.dirname(os.path.abspath(__file__))
    for name in ("libsmallmind.so.0", "libsmallmind.so"):
        path = os.path.join(here, name)
        if os.path.exists(path):
            found.append(path)
    found.append("libsmallmind.so.0")
    system = ctypes.util.find_library("smallmind")
    if system:
        found.append(system)
    return found


def lib() -> ctypes.CDLL:
    """The loaded library, loaded and checked on first use."""
    global _lib
    with _lock:
        if _lib is not None:
            return _lib
        errors = []
        loaded = None
        candidates = _candidates()
        for candidate in candidates:
            try:
                loaded = ctypes.CDLL(candidate)
                break
            except OSError as e:
                errors.append(f"{candidate}: {e}")
                # SMALLMIND_LIBRARY names the one library to use: do not fall back past it.
                if candidate == os.environ.get("SMALLMIND_LIBRARY"):
                    break
        if loaded is None:
            raise OSError(
                "smallmind: cannot load libsmallmind; set SMALLMIND_LIBRARY to its path "
                "(tried " + "; ".join(errors) + ")"
            )
        for name, (restype, argtypes) in _PROTOTYPES.items():
            try:
                fn = getattr(loaded, name)
            except AttributeError:
                if name in OPTIONAL:
                    continue
                raise OSError(f"smallmind: {loaded._name} has no {name}; it is not libsmallmind")
            fn.restype = restype
            fn.argtypes = argtypes
        abi = loaded.smallmind_abi_version()
        if abi not in _CALLBACKS_BY_ABI:
            raise OSError(
                f"smallmind: {loaded._name} has ABI version {abi}, these bindings know "
                f"{SUPPORTED_ABI}; use the bindings from the same smallmind release"
            )
        global _callbacks_type
        _callbacks_type = _CALLBACKS_BY_ABI[abi]
        _lib = loaded
        return _lib


def has(name: str) -> bool:
    """Whether the loaded library exports `name` (for functions newer than some libraries)."""
    return hasattr(lib(), name)
