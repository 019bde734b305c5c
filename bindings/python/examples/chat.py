"""A small chat REPL: python examples/chat.py MODEL.gguf  (empty line or Ctrl-D quits)."""

import sys

import smallmind


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/chat.py MODEL.gguf")
    with smallmind.Engine(sys.argv[1]) as engine, engine.chat(
        system_prompt="You are a helpful assistant. Be brief.", max_tokens=256
    ) as chat:
        while True:
            try:
                line = input("> ").strip()
            except EOFError:
                break
            if not line:
                break
            stream = chat.stream(line)
            try:
                for piece in stream:
                    print(piece, end="", flush=True)
            except KeyboardInterrupt:
                stream.close()
            usage = (stream.response or {}).get("usage", {})
            print(f"\n[{usage.get('prompt_tokens')} prompt, "
                  f"{usage.get('prompt_tokens_details', {}).get('cached_tokens')} cached, "
                  f"{usage.get('time_to_first_token_ms', 0):.0f} ms to first token]", file=sys.stderr)


if __name__ == "__main__":
    main()
