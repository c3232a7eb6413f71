"""A real third-party MCP client (the `mcp` package from PyPI) against airlock.

Usage:
  mcp_client.py stdio AIRLOCK CONFIG TOKEN_FILE scenario|hostcall|status INVOCATION
  mcp_client.py http URL TOKEN scenario|hostcall|status INVOCATION

`scenario` lists the tools, calls an allowed one, a forbidden one and a
gated one (collecting progress notifications), and prints one JSON object
with everything it saw. `hostcall` calls a tool whose run is held at a
gated host call, collecting progress. `status` asks airlock_status about
an invocation.

Over HTTP the `Authorization` header uses the scheme in
AIRLOCK_TEST_AUTH_SCHEME (default `Bearer`).
"""

import json
import os
import sys

import anyio
from mcp import ClientSession, MCPError


def content_text(result):
    return [c.text for c in result.content if getattr(c, "type", "") == "text"]


LOGS = []


async def on_log(params):
    LOGS.append({"level": str(params.level), "logger": params.logger, "data": params.data})


async def run(session, mode, arg):
    await session.initialize()
    if mode == "status":
        res = await session.call_tool("airlock_status", {"invocation": arg})
        return {"status": {"is_error": bool(res.is_error), "structured": res.structured_content}}
    progress = []

    async def on_progress(p, total, message):
        progress.append({"progress": p, "message": message})

    if mode == "hostcall":
        res = await session.call_tool(
            "gated__write-between", {"path": "gated/plan.txt", "data": "go"}, progress_callback=on_progress
        )
        return {"pending": {"is_error": bool(res.is_error), "structured": res.structured_content}, "progress": progress}
    tools = await session.list_tools()
    out = {"tools": sorted(t.name for t in tools.tools)}
    annotations = {}
    for t in tools.tools:
        a = t.annotations
        annotations[t.name] = None if a is None else {
            "read_only": getattr(a, "read_only_hint", None),
            "destructive": getattr(a, "destructive_hint", None),
        }
    out["annotations"] = annotations
    schema = next(t.input_schema for t in tools.tools if t.name == "echo__echo")
    out["echo_schema"] = schema

    # An action's log lines reach a client that asked for them, at or above
    # its level.
    await session.set_logging_level("warning")
    res = await session.call_tool("report__write-report", {"name": "quiet", "findings": []})
    out["logs_at_warning"] = {"is_error": bool(res.is_error), "logs": list(LOGS)}
    await session.set_logging_level("info")
    res = await session.call_tool("report__write-report", {"name": "loud", "findings": []})
    # Over streamable HTTP they come on the session's GET stream, which is
    # not ordered with the call's answer: wait for them (up to 10 s).
    for _ in range(200):
        if LOGS:
            break
        await anyio.sleep(0.05)
    out["logs_at_info"] = {"is_error": bool(res.is_error), "logs": list(LOGS)}
    # A denied host call is told as a warning.
    LOGS.clear()
    await session.set_logging_level("warning")
    res = await session.call_tool("readonly__write", {"path": "x.txt", "data": "x"})
    for _ in range(200):
        if LOGS:
            break
        await anyio.sleep(0.05)
    out["denial"] = {"is_error": bool(res.is_error), "logs": list(LOGS)}

    # WIT docs and the result schema travel into the tool.
    describe = next(t for t in tools.tools if t.name == "types__describe")
    out["describe_tool"] = {
        "description": describe.description,
        "input": describe.input_schema,
        "output": describe.output_schema,
    }
    res = await session.call_tool("types__describe", {"n": 7, "style": "detailed"})
    out["describe"] = {"is_error": bool(res.is_error), "structured": res.structured_content}
    import jsonschema

    jsonschema.validate(res.structured_content, describe.output_schema)
    out["describe_valid"] = True
    # A result that breaks the schema is caught by the same check.
    try:
        jsonschema.validate(dict(res.structured_content, result=7), describe.output_schema)
        out["describe_bad_caught"] = False
    except jsonschema.ValidationError:
        out["describe_bad_caught"] = True

    res = await session.call_tool("echo__echo", {"value": "hi from python"})
    out["allowed"] = {"is_error": bool(res.is_error), "structured": res.structured_content, "text": content_text(res)}

    res = await session.call_tool("echo__echo", {"value": 7})
    out["bad_args"] = {"is_error": bool(res.is_error), "text": content_text(res)}

    # The server refuses with a JSON-RPC error; anything else (a result, or
    # another exception, which ends this script) is not the refusal.
    try:
        res = await session.call_tool("secret-ops__echo", {"value": "x"})
        out["forbidden"] = {"raised": False, "is_error": bool(res.is_error), "text": content_text(res)}
    except MCPError as e:
        out["forbidden"] = {"raised": True, "code": e.code, "message": e.message}

    # The agent's stated reason and trace ride in the request's _meta; the
    # tool's arguments stay as they are.
    res = await session.call_tool(
        "deploy__echo",
        {"value": "gated"},
        progress_callback=on_progress,
        meta={"reason": "ship release 42", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    )
    out["pending"] = {"is_error": bool(res.is_error), "structured": res.structured_content}
    out["progress"] = progress
    return out


async def main():
    transport = sys.argv[1]
    if transport == "stdio":
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client

        airlock, config, token_file, mode = sys.argv[2:6]
        arg = sys.argv[6] if len(sys.argv) > 6 else None
        params = StdioServerParameters(
            command=airlock,
            args=["mcp", "--config", config, "--token-file", token_file],
        )
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write, logging_callback=on_log) as session:
                result = await run(session, mode, arg)
    else:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        url, token, mode = sys.argv[2:5]
        arg = sys.argv[5] if len(sys.argv) > 5 else None
        scheme = os.environ.get("AIRLOCK_TEST_AUTH_SCHEME", "Bearer")
        headers = {"Authorization": f"{scheme} {token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http:
            async with streamable_http_client(url, http_client=http) as (read, write):
                async with ClientSession(read, write, logging_callback=on_log) as session:
                    result = await run(session, mode, arg)
    print(json.dumps(result))


anyio.run(main)
