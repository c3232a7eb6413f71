"""An agent's side of the demo: the official MCP client (PyPI `mcp`) over
streamable HTTP to `airlock serve`.

  mcp_agent.py URL TOKEN_FILE call TOOL JSON_ARGS   # call a tool, print its result
  mcp_agent.py URL TOKEN_FILE status INVOCATION     # ask airlock_status

The bearer token is read from TOKEN_FILE, never taken from argv (where other
users could read it in the process list). Prints the tool list and progress
on stderr, the structured result as JSON on stdout.
"""

import json
import sys

import anyio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def main():
    url, token_file, mode = sys.argv[1:4]
    with open(token_file) as f:
        token = f.read().strip()
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                if mode == "call":
                    tool, args = sys.argv[4], json.loads(sys.argv[5])
                    tools = await session.list_tools()
                    print("tools:", ", ".join(sorted(t.name for t in tools.tools)), file=sys.stderr)

                    async def progress(p, total, message):
                        print(f"progress: {message}", file=sys.stderr)

                    result = await session.call_tool(tool, args, progress_callback=progress)
                else:
                    result = await session.call_tool("airlock_status", {"invocation": sys.argv[4]})
                print(json.dumps(result.structured_content))


anyio.run(main)
