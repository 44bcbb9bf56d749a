"""``slfaas invoke``: Invoke, or InvokeWithResponseStream printing the text as it is generated."""
from __future__ import annotations

import codecs
import json
import sys
from typing import Any

import click

from slfaas.client import CliError
from slfaas.cli.core import boto_call, complete_function_name, endpoint_option, endpoint_url, examples


def _payload(payload: str | None, prompt: str | None, max_tokens: int, temperature: float) -> bytes:
    if payload is not None and prompt is not None:
        raise CliError("give either --payload or --prompt, not both")
    if payload is not None:
        raw = sys.stdin.read() if payload == "-" else payload
        try:
            json.loads(raw)
        except ValueError as exc:
            raise CliError(f"--payload is not valid JSON: {exc}")
        return raw.encode()
    if prompt is not None:
        return json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}).encode()
    raise CliError("nothing to send: give --payload JSON or --prompt TEXT")


@click.command("invoke", epilog=examples(
    "slfaas invoke support-bot --prompt 'Hello' --max-tokens 32 --text",
    "slfaas invoke support-bot --prompt 'Hello' --stream",
    "slfaas invoke support-bot --payload '{\"prompt\": \"hi\", \"max_tokens\": 8, \"seed\": 1}'",
    "echo '{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}' | slfaas invoke support-bot --payload -"))
@click.argument("name", shell_complete=complete_function_name)
@click.option("--payload", metavar="JSON", help="the event as JSON ('-': read it from stdin)")
@click.option("--prompt", metavar="TEXT", help="shortcut for a payload with this prompt")
@click.option("--max-tokens", type=int, default=32, show_default=True, help="with --prompt")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="with --prompt; 0 is greedy")
@click.option("--text", is_flag=True, help="print only the generated text")
@click.option("--stream", is_flag=True, help="InvokeWithResponseStream: print the text as it is generated")
@endpoint_option
@click.pass_context
def invoke(ctx: click.Context, name: str, payload: str | None, prompt: str | None, max_tokens: int,
           temperature: float, text: bool, stream: bool, endpoint: str | None) -> None:
    """Invoke a function and print its result.

    The JSON result, its text only (--text), or the text as it is generated (--stream).
    NAME may carry a qualifier (NAME:prod)."""
    body = _payload(payload, prompt, max_tokens, temperature)
    url = endpoint_url(ctx)
    if stream:
        _stream(url, name, body)
        return
    resp = boto_call(url, lambda c: c.invoke(FunctionName=name, Payload=body))
    result = resp["Payload"].read().decode("utf-8", "replace")
    if resp.get("FunctionError"):
        try:
            err = json.loads(result)
        except ValueError:
            raise CliError(f"function error: {result}")
        raise CliError(f"function error ({err.get('errorType')}): {err.get('errorMessage')}")
    try:
        data = json.loads(result) if result else None
    except ValueError:  # a handler's own payload need not be JSON
        click.echo(result)
        return
    if text and isinstance(data, dict):
        click.echo(data.get("text", ""))
    else:
        click.echo("" if data is None else json.dumps(data, indent=2))


def _stream(url: str, name: str, body: bytes) -> None:
    def run(client: Any) -> dict:
        resp = client.invoke_with_response_stream(FunctionName=name, Payload=body)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span chunks
        end: dict = {}
        for event in resp["EventStream"]:
            if "PayloadChunk" in event:
                sys.stdout.write(decoder.decode(event["PayloadChunk"]["Payload"]))
                sys.stdout.flush()
            elif "InvokeComplete" in event:
                end = event["InvokeComplete"]
        sys.stdout.write(decoder.decode(b"", final=True) + "\n")
        sys.stdout.flush()
        return end

    end = boto_call(url, run)
    if end.get("ErrorCode"):
        raise CliError(f"function error ({end['ErrorCode']}): {end.get('ErrorDetails', '')}")
