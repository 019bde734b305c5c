"""The Python bindings against the real library and the default model (SmolLM2-135M-Instruct).

Token ids and greedy continuations are llama.cpp's (tests/oracle/llamacpp-greedy.json).
The model path comes from SMALLMIND_MODEL, else from scripts/fetch-model.
"""

from __future__ import annotations

import ctypes
import json
import os
import pathlib
import subprocess
import threading

import pytest

import smallmind
from smallmind import _native

REPO = pathlib.Path(__file__).resolve().parents[3]
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _model_path() -> str:
    env = os.environ.get("SMALLMIND_MODEL")
    if env:
        return env
    out = subprocess.run(
        [str(REPO / "scripts" / "fetch-model"), "smollm2"], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def _oracle(case_id: str) -> dict:
    data = json.loads((REPO / "tests" / "oracle" / "llamacpp-greedy.json").read_text())
    return next(c for c in data["cases"] if c["id"] == case_id and c["model"] == MODEL_NAME)


@pytest.fixture(scope="module")
def engine():
    with smallmind.Engine(_model_path(), threads=2, context_length=1024) as e:
        yield e


@pytest.fixture
def chat(engine):
    with engine.chat(system_prompt="You are a helpful assistant.", temperature=0, max_tokens=6) as c:
        yield c


# Library and loading -----------------------------------------------------------------------


def test_version_and_abi_match_the_crate_and_the_bindings():
    cargo = (REPO / "Cargo.toml").read_text()
    crate_version = next(
        line.split('"')[1] for line in cargo.splitlines() if line.startswith("version")
    )
    assert smallmind.version() == crate_version
    assert smallmind.abi_version() in _native.SUPPORTED_ABI
    layout = _native.new_chat_callbacks()
    if smallmind.abi_version() >= 2:
        assert layout.struct_size == ctypes.sizeof(layout)


def test_every_function_has_a_prototype():
    lib = _native.lib()
    for name in _native._PROTOTYPES:
        if name in _native.OPTIONAL and not _native.has(name):
            continue
        assert getattr(lib, name).argtypes is not None or name in (
            "smallmind_version",
            "smallmind_abi_version",
            "smallmind_last_error",
        ), name


# Engine ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case_id", ["a", "d", "e"])
def test_tokenize_gives_llama_cpp_ids(engine, case_id):
    case = _oracle(case_id)
    ids = engine.tokenize(case["prompt_text"], add_special=True, parse_special=case["parse_special"])
    assert ids == case["prompt_token_ids"]


def test_detokenize_round_trips_llama_cpp_ids(engine):
    case = _oracle("d")
    assert engine.detokenize(case["prompt_token_ids"]) == case["prompt_text"]


def test_info_names_the_model(engine):
    info = engine.info()
    assert info["architecture"] == "llama"
    assert info["context_length"] == 1024


def test_greedy_completion_matches_llama_cpp_and_streams_the_same_text(engine):
    case = _oracle("a")
    pieces = []
    response = engine.complete(case["prompt_token_ids"], on_token=pieces.append, max_tokens=4, temperature=0)
    assert response["token_ids"] == case["generated_token_ids"][:4]
    assert "".join(pieces) == response["text"]
    assert response["text"] == engine.detokenize(case["generated_token_ids"][:4])


def test_on_token_returning_false_stops_and_none_goes_on(engine):
    case = _oracle("a")
    seen = []

    def stop_after_two(piece):
        seen.append(piece)
        return False if len(seen) == 2 else None

    response = engine.complete(case["prompt_text"], on_token=stop_after_two, max_tokens=8, temperature=0)
    assert response["finish_reason"] == "cancelled"
    assert len(seen) == 2
    assert response["usage"]["completion_tokens"] == 2


# Errors ------------------------------------------------------------------------------------


def test_missing_model_is_an_io_error_naming_the_file(tmp_path):
    missing = tmp_path / "nothing.gguf"
    with pytest.raises(smallmind.IoError) as info:
        smallmind.Engine(str(missing))
    assert info.value.status == 9
    assert isinstance(info.value, smallmind.Error)
    assert "nothing.gguf" in str(info.value)


def test_a_file_that_is_not_gguf_is_a_model_load_error(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(smallmind.ModelLoadError) as info:
        smallmind.Engine(str(bogus))
    assert info.value.status == 3


def test_unknown_engine_option_is_invalid_json_naming_it():
    with pytest.raises(smallmind.InvalidJsonError) as info:
        smallmind.Engine(_model_path(), thread_count=2)
    assert info.value.status == 2
    assert "thread_count" in str(info.value)


def test_unknown_request_field_is_invalid_json_naming_it(chat):
    with pytest.raises(smallmind.InvalidJsonError) as info:
        chat.send("Hi", max_tokenz=3)
    assert "max_tokenz" in str(info.value)


def test_out_of_range_value_is_invalid_argument(chat):
    with pytest.raises(smallmind.InvalidArgumentError) as info:
        chat.send("Hi", temperature=-1)
    assert info.value.status == 1


def test_closed_handles_raise_instead_of_crashing(engine):
    c = engine.chat()
    c.close()
    c.close()
    with pytest.raises(smallmind.InvalidArgumentError):
        c.send("Hi")


def test_every_status_has_its_own_class():
    assert sorted(smallmind._BY_STATUS) == list(range(1, 11))
    assert len({cls.__name__ for cls in smallmind._BY_STATUS.values()}) == 10
    assert all(issubclass(cls, smallmind.Error) for cls in smallmind._BY_STATUS.values())


# Chat --------------------------------------------------------------------------------------


def test_send_returns_the_response_and_extends_the_history(chat):
    pieces = []
    response = chat.send("What is 2+2?", on_token=pieces.append)
    assert response["message"]["role"] == "assistant"
    assert response["message"]["content"] == "".join(pieces)
    assert response["usage"]["completion_tokens"] >= len(pieces) >= 1
    history = chat.history()["messages"]
    # The system_prompt option is rendered into every prompt, never recorded in the history.
    assert [m["role"] for m in history] == ["user", "assistant"]
    assert history[1]["content"] == response["message"]["content"]
    chat.reset()
    assert chat.history()["messages"] == []


def test_send_takes_a_list_of_messages(chat):
    response = chat.send(
        [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "Hi"}]
    )
    history = chat.history()["messages"]
    assert [m["role"] for m in history] == ["system", "user", "assistant"]
    assert history[0]["content"] == "Answer with one word."  # given, so the default is not added
    assert response["finish_reason"] in ("stop", "length")


def test_stream_yields_the_reply_and_then_holds_the_response(chat):
    stream = chat.stream("Name a colour.")
    pieces = list(stream)
    assert stream.response is not None
    assert "".join(pieces) == stream.response["message"]["content"]
    assert stream.response["finish_reason"] in ("stop", "length")


def test_closing_a_stream_early_cancels_the_reply(chat):
    with chat.stream("Count from one to fifty.", max_tokens=64) as stream:
        first = next(stream)
        assert isinstance(first, str)
    assert stream.response is not None
    assert stream.response["finish_reason"] == "cancelled"
    assert chat.history()["messages"] == []  # a cancelled turn is not kept


def test_cancel_from_another_thread_stops_within_a_token(chat):
    started, cancelled = threading.Event(), threading.Event()
    pieces = []

    def on_token(piece):
        pieces.append(piece)
        if len(pieces) == 1:
            started.set()
            assert cancelled.wait(30)

    def canceller():
        assert started.wait(30)
        chat.cancel()
        cancelled.set()

    thread = threading.Thread(target=canceller)
    thread.start()
    response = chat.send("Count from one to fifty.", on_token=on_token, max_tokens=64)
    thread.join()
    assert response["finish_reason"] == "cancelled"
    assert len(pieces) <= 2
    assert chat.history()["messages"] == []


def test_a_second_concurrent_send_is_busy(chat):
    inside, release = threading.Event(), threading.Event()
    errors = []

    def on_token(_piece):
        inside.set()
        release.wait(30)

    def second():
        inside.wait(30)
        try:
            chat.send("Hello again")
        except smallmind.BusyError as e:
            errors.append(e)
        finally:
            release.set()

    thread = threading.Thread(target=second)
    thread.start()
    chat.send("Hello", on_token=on_token, max_tokens=2)
    thread.join()
    assert len(errors) == 1 and errors[0].status == 7


def test_an_exception_in_a_callback_stops_and_is_raised_on_the_caller(chat):
    calls = []

    def explode(piece):
        calls.append(piece)
        raise ZeroDivisionError("from the callback")

    with pytest.raises(ZeroDivisionError, match="from the callback"):
        chat.send("Hi", on_token=explode, max_tokens=8)
    assert len(calls) == 1
    assert chat.history()["messages"] == []
    # The chat is still usable.
    assert chat.send("Hi")["finish_reason"] in ("stop", "length")


def test_export_then_import_restores_the_conversation(engine, chat):
    chat.send("My name is Ada.")
    text = chat.export()
    envelope = json.loads(text)
    assert envelope["format"] == "smallmind.chat"
    with engine.import_chat(text) as restored:
        assert restored.history() == chat.history()
        # The restored chat gives the model exactly the prompt the original would.
        assert restored.render("What is my name?") == chat.render("What is my name?")


def test_save_and_load_round_trip_or_a_clear_error(engine, chat, tmp_path):
    path = tmp_path / "session.json"
    chat.send("Remember the number 7.")
    if not (_native.has("smallmind_chat_save") and _native.has("smallmind_chat_load")):
        # Libraries without persistence say so instead of failing later.
        with pytest.raises(smallmind.InvalidArgumentError, match="smallmind_chat_save"):
            chat.save(str(path))
        with pytest.raises(smallmind.InvalidArgumentError, match="smallmind_chat_load"):
            engine.load_chat(str(path))
        return
    chat.save(str(path))
    with engine.load_chat(str(path)) as loaded:
        assert loaded.history() == chat.history()


def test_tools_with_execute_tool_run_the_loop_or_are_refused_clearly(chat):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "add",
                "description": "Adds two numbers",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                    "required": ["a", "b"],
                },
            },
        }
    ]
    calls = []

    def execute_tool(name, arguments):
        calls.append((name, arguments))
        return {"sum": 3}

    try:
        response = chat.send(
            "Add 1 and 2.", tools=tools, tool_choice="required", execute_tool=execute_tool, max_tokens=48
        )
    except smallmind.InvalidArgumentError as e:
        # A library without tool calling refuses the field by name.
        assert "tool" in str(e)
        assert calls == []
        return
    assert calls and calls[0][0] == "add"
    assert response["finish_reason"] in ("stop", "length", "tool_calls")


def test_bundled_library_is_found_without_the_environment():
    """Run by scripts/test-bindings after installing the wheel, with SMALLMIND_LIBRARY unset."""
    if os.environ.get("SMALLMIND_LIBRARY"):
        pytest.skip("SMALLMIND_LIBRARY is set: the wheel's bundled copy is not the one used")
    loaded = pathlib.Path(_native.lib()._name).resolve()
    assert loaded.parent == pathlib.Path(smallmind.__file__).resolve().parent
